"""The serving device: sessions for trusted peers, what each may do, and the audit log.

Every authentication attempt, session admission, action, exec and shell is
decided by the policy (deny by default, :mod:`pstp.daemon.policy`) before the
channel is accepted, and lands in the hash-chained audit log
(:mod:`pstp.daemon.audit`) with its decision and, once it ran, its result.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from pstp.asyncio.connection import Channel, ChannelHandler, Session
from pstp.asyncio.server import Server, serve
from pstp.daemon.actions import ACTIONS_CHANNEL, action_handler, actions_list_handler, load_actions
from pstp.daemon.audit import AuditLog, audit_path, audit_reserve
from pstp.daemon.control import ControlServer
from pstp.daemon.exec import exec_handler, shell_handler
from pstp.daemon.files import file_handler
from pstp.daemon.forward import FORWARD_CHANNEL, LISTEN_CHANNEL, forward_handler, listen_handler
from pstp.daemon.mdns import Advertisement, advertise_device
from pstp.daemon.pairing import PairingWindow
from pstp.daemon.policy import (
    ActionRequest,
    Decision,
    ExecRequest,
    FileRequest,
    ForwardRequest,
    ListenRequest,
    Policy,
    Request,
    SessionRequest,
    ShellRequest,
)
from pstp.daemon.replay import guard_path, load_guard, save_guard, snapshot
from pstp.daemon.tokens import (
    Token,
    TokenError,
    TokenStore,
    guest_policies,
    new_token_id,
    token_label,
    tokens_path,
)
from pstp.exceptions import ChannelFailure, ErrorCode, PeerFlood, PermissionDenied
from pstp.protocol.config import Config
from pstp.protocol.connection import Connection
from pstp.protocol.handshake import KeyRing, PeerKey
from pstp.protocol.kinds import TokenGrant, TokenOpen, action_args
from pstp.protocol.pake import PAIR_CHANNEL
from pstp.settings import ConfigError, Settings, broker_options, format_address, load
from pstp.sync.discovery import ResponderThread, start_responder
from pstp.wire.messages import ChannelCode

__all__ = ["Daemon", "ping_handler"]

_log = logging.getLogger("pstp.daemon")

#: Failed authentication attempts written to the audit log per second, at most:
#: a flood of garbage connections must not fill the disk (the rest are counted).
_AUTH_FAIL_ROWS_PER_S = 10.0
#: Denial rows one peer may write per second (and as a burst): a peer whose every
#: request is refused must not fill the disk; the rest are counted in the next row.
_DENY_ROWS_PER_S = 5.0
_DENY_ROWS_BURST = 20.0
#: Seconds a flooding peer's key is not accepted (Daemon._suspend).
SUSPEND_SECONDS = 10.0
#: Refusals for the rate in one session after which that session is closed.
_RATE_REFUSALS = 10
#: The same for all peers together: many peers refused at once write no more.
_DENY_ROWS_ALL_PER_S = 50.0
_DENY_ROWS_ALL_BURST = 100.0
#: What a peer is told when its request cannot be audited (docs/security.md).
AUDIT_DOWN = "the device cannot write its audit log, so it runs nothing now"
#: Seconds between looks at expiry and time windows while a time-bound peer is connected.
_ENFORCE_INTERVAL = 1.0
#: Seconds between saves of the replay guard while it changes.
_GUARD_SAVE_INTERVAL = 5.0
#: Seconds between two looks at the token store: a revocation by `pstp token revoke`
#: closes the sessions of that token within this (docs/protocol.md §20.4).
_TOKEN_POLL_INTERVAL = 0.25
#: The channel kind a session asks for a token on (§17.13).
TOKEN_CHANNEL = TokenOpen.KIND


#: The most a ``ping`` carries (docs/protocol.md §17.7): more closes it with RESOURCE_LIMIT.
PING_MAX = 65536


async def ping_handler(ch: Channel) -> int:
    """The built-in ``ping`` channel: answer with ``pong`` and what was sent (64 KiB at most)."""
    data = await ch.read_all(limit=PING_MAX)
    await ch.write(b"pong " + data)
    return 0


def _reason(params: Mapping[str, object]) -> str:
    value = params.get("reason")
    return value if isinstance(value, str) else ""


def _request(kind: str, params: Mapping[str, object]) -> Request | None:
    """The policy question a channel open asks (None: not governed by policy)."""
    reason = _reason(params)
    if kind == "action":
        name = params.get("name")
        args = action_args(params)
        return ActionRequest(name if isinstance(name, str) else "", args, reason)
    if kind == "exec":
        argv = params.get("argv")
        words = [a for a in argv if isinstance(a, str)] if isinstance(argv, list) else []
        return ExecRequest(
            words if isinstance(argv, list) and len(words) == len(argv) else [], reason
        )
    if kind == "shell":
        return ShellRequest(reason)
    if kind == "file":
        path, op = params.get("path"), params.get("op")
        if not isinstance(path, str) or op not in ("put", "get"):
            path = ""  # denied: not an absolute path
        return FileRequest(path, op == "put", reason)
    if kind in (FORWARD_CHANNEL, LISTEN_CHANNEL):
        # Only a listen has a default host (ListenOpen); a forward names its target.
        host = params.get("host", "127.0.0.1" if kind == LISTEN_CHANNEL else "")
        port = params.get("port")
        host = host if isinstance(host, str) else ""
        port = port if isinstance(port, int) and not isinstance(port, bool) else -1
        if kind == FORWARD_CHANNEL:
            return ForwardRequest(host, port, reason)
        return ListenRequest(host, port, reason)
    return None


def _audit_args(kind: str, params: Mapping[str, object]) -> dict[str, Any]:
    """What the audit row keeps of a request: everything but the reason (kept apart)."""
    return {k: v for k, v in params.items() if k != "reason"} | {"kind": kind}


@dataclass(eq=False)
class _Live:
    """A governed channel's handler while it runs, for re-judging (:meth:`Daemon.enforce`)."""

    peer: str
    conn: Connection
    request: Request
    task: asyncio.Future[int | None]
    #: Why the policy ended it, once it did.
    revoked: str | None = None


@dataclass
class Daemon:
    """A running device.

    Attributes:
        settings: the loaded configuration.
        config: protocol limits.
        pairing: an open pairing window, if any.
        audit: the audit log (default: next to the configuration).
        control: listen on the control socket (``pstp pair --allow`` reaches a
            running daemon through it).
    """

    settings: Settings
    config: Config = field(default_factory=Config)
    pairing: PairingWindow | None = None
    audit: AuditLog | None = None
    keyring: KeyRing = field(default_factory=KeyRing)
    servers: list[Server] = field(default_factory=list)
    #: The WebSocket servers, one per ``ws://`` listen address (no pairing there).
    websocket_servers: list[Server] = field(default_factory=list)
    #: One per ``mqtt://`` listen address: the device's presence on that broker.
    mqtt_servers: list[Server] = field(default_factory=list)
    responders: list[ResponderThread] = field(default_factory=list)
    sessions: dict[str, set[Session]] = field(default_factory=dict)
    suppressed_auth_failures: int = 0
    mdns: list[Advertisement] = field(default_factory=list)
    _admitted: dict[int, str] = field(default_factory=dict)
    _deny_budget: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    _live: set[_Live] = field(default_factory=set)
    _throttled: dict[int, int] = field(default_factory=dict)
    _suspended: dict[str, PeerKey] = field(default_factory=dict)
    _guard_saved: dict[str, int] = field(default_factory=dict)
    _tasks: asyncio.TaskGroup | None = None
    _running: set[asyncio.Task[None]] = field(default_factory=set)
    #: The token each token session authenticated with, by id(connection).
    _token_of: dict[int, Token] = field(default_factory=dict)
    _token_version: int = -1
    control: bool = True
    _control: ControlServer | None = None

    def __post_init__(self) -> None:
        self._guard_saved = load_guard(guard_path(self.settings))
        for peer in self.settings.peers.values():
            self.keyring.add(peer.id, peer.key, self._guard_saved.get(peer.id, 0))
        if self.pairing is not None:
            self.pairing.on_paired = self._paired
        self.policy = Policy.from_settings(self.settings)
        self.actions = load_actions(self.settings)
        if self.audit is None:
            self.audit = AuditLog(audit_path(self.settings))
        self.tokens = TokenStore(tokens_path(self.settings))
        self._refresh_tokens()
        self._auth_tokens = _AUTH_FAIL_ROWS_PER_S
        self._auth_stamp = time.monotonic()
        self._deny_tokens = _DENY_ROWS_ALL_BURST
        self._deny_stamp = self._auth_stamp

    # -- audit -------------------------------------------------------------------

    def _record(self, kind: str, peer: str, decision: str, **kw: Any) -> bool:
        """Write one audit row; false (and logged) if it could not be written.

        Requests fail closed on a false return: what cannot be audited does not run.
        """
        assert self.audit is not None
        try:
            self.audit.record(kind, peer, decision, **kw)
        except Exception as exc:
            _log.error("could not write the audit log, refusing requests until it can: %s", exc)
            return False
        return True

    def _deny_row(self, kind: str, peer: str, **kw: Any) -> None:
        """A denial row, within the peer's budget and the device's; the rest are counted
        in the peer's next row."""
        now = time.monotonic()
        tokens, stamp, suppressed = self._deny_budget.get(peer, (_DENY_ROWS_BURST, now, 0))
        tokens = min(_DENY_ROWS_BURST, tokens + (now - stamp) * _DENY_ROWS_PER_S)
        self._deny_tokens = min(
            _DENY_ROWS_ALL_BURST,
            self._deny_tokens + (now - self._deny_stamp) * _DENY_ROWS_ALL_PER_S,
        )
        self._deny_stamp = now
        if tokens < 1 or self._deny_tokens < 1:
            self._deny_budget[peer] = (tokens, now, suppressed + 1)
            return
        if suppressed:
            kw["result"] = {"suppressed_before": suppressed}
        self._deny_budget[peer] = (tokens - 1, now, 0)
        self._deny_tokens -= 1
        self._record(kind, peer, "deny", **kw)

    def _auth_failed(self, conn: Connection, peer_address: str) -> None:
        window = self.pairing
        # A PAKE attempt names its prover in PAIR_REQ; a PSTP-HS peer that failed has
        # no id yet, so it is never mistaken for the wrong code counted meanwhile.
        left = None
        if window is not None and conn.peer_id is not None:
            left = window.note_failure(peer_address)
        if left is not None:
            # A wrong pairing code: at most MAX_FAILURES per window, so never throttled,
            # and said as such (not "wrong key or id?", which is about pair keys).
            self._record(
                "pairing",
                conn.peer_id or "?",
                "fail",
                detail=f"{peer_address}: wrong code ({left} tries left in this window)",
            )
            return
        now = time.monotonic()
        self._auth_tokens = min(
            _AUTH_FAIL_ROWS_PER_S,
            self._auth_tokens + (now - self._auth_stamp) * _AUTH_FAIL_ROWS_PER_S,
        )
        self._auth_stamp = now
        if self._auth_tokens < 1:
            self.suppressed_auth_failures += 1
            return
        self._auth_tokens -= 1
        detail = str(conn.close_exc or "connection closed during the handshake")
        self._record(
            "auth",
            conn.peer_id or "?",
            "fail",
            detail=f"{peer_address}: {detail}",
            result={"suppressed_before": self.suppressed_auth_failures},
        )
        self.suppressed_auth_failures = 0

    # -- sessions ----------------------------------------------------------------

    def _paired(self, peer_id: str, key: bytes) -> None:
        # The new peer can open a PSTP-HS session at once, without a restart,
        # and the policy the window wrote for it applies after the reload.
        self.keyring.add(peer_id, key)
        self._follow_keys()
        self._record("pairing", peer_id, "ok", detail="pair key installed")
        self.spawn(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # the running configuration stays; say why
            _log.error("reloading after pairing failed: %s", exc)

    # -- tasks ---------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task of the daemon's task group (between start and close).

        :meth:`close` cancels it if it is still running and waits for it.  An
        exception it raises is logged: one failed task (a reload, say) does not
        stop the daemon.

        Raises:
            RuntimeError: the daemon is not running.
        """
        if self._tasks is None:
            work.close()
            raise RuntimeError("the daemon is not running")
        task = self._tasks.create_task(_logged(work))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _admit(self, conn: Connection) -> str | None:
        """Decide a session as its handshake completes (before any of its channels)."""
        peer = conn.peer_id or "?"
        method = "pake" if conn.via_pake else "psk"
        result = {"method": method, "session": conn.session_id}
        if not self._record("auth", peer, "ok", result=result):
            return AUDIT_DOWN
        if conn.via_pake:
            return None  # a pairing session: only the pair channel is open to it
        if conn.peer_token is not None:
            refused = self._redeem(conn, peer, conn.peer_token)
            if refused is not None:
                return refused
        decision = self.policy.admit(
            peer, SessionRequest(), at=datetime.now().astimezone(), now=time.monotonic()
        )
        if decision.allowed:
            decision = self.policy.session_opened(peer)
        if not decision.allowed:
            self._deny_row("session", peer, detail=f"{decision.rule}: {decision.reason}")
            if decision.reason.startswith("rate limit"):
                self._suspend(peer, "sessions opened faster than its rate")
            return decision.reason
        self._admitted[id(conn)] = peer
        return None

    def _redeem(self, conn: Connection, peer: str, token_id: str) -> str | None:
        """Count a token's use as its session is admitted; the refusal if it may not be used."""
        key = self.keyring.get("token:" + token_id)
        stamp = key.last_timestamp if key is not None else 0
        try:
            token = self.tokens.redeem(token_id, stamp)
        except TokenError as exc:
            self.keyring.remove("token:" + token_id)
            self._deny_row("token", peer, detail=str(exc), args={"token": token_id})
            return str(exc)
        uses = f"{token.uses}/{token.max_uses}" if token.max_uses is not None else str(token.uses)
        if not self._record("token", peer, "allow", detail=f"redeemed {token.id} (use {uses})"):
            return AUDIT_DOWN
        self._token_of[id(conn)] = token
        return None

    def _on_session(self, session: Session) -> Callable[[], None] | None:
        conn = session.connection
        if id(conn) not in self._admitted:
            return None  # refused by _admit, or a pairing session
        peer = session.peer_id
        self.sessions.setdefault(peer, set()).add(session)
        _log.info("session with %s established", peer)

        def done() -> None:
            self._admitted.pop(id(conn), None)
            self._throttled.pop(id(conn), None)
            self._token_of.pop(id(conn), None)
            if isinstance(conn.close_exc, PeerFlood):  # a heartbeat flood
                self._suspend(peer, str(conn.close_exc))
            self.policy.session_closed(peer)
            live = self.sessions.get(peer)
            if live is not None:
                live.discard(session)
                if not live:
                    del self.sessions[peer]
            _log.info("session with %s ended", peer)

        return done

    # -- channels ------------------------------------------------------------------

    def authorize(
        self, conn: Connection, kind: str, params: Mapping[str, object]
    ) -> Decision | str | None:
        """Decide a channel open before it is accepted; denials are audited.

        Returns:
            ``None`` (allowed, no policy involved), a refusal reason, or the
            policy's :class:`~pstp.daemon.policy.Decision`, which the session
            core keeps on the channel as its ``verdict`` (so an action's
            validated arguments are not decided a second time).
        """
        peer = conn.peer_id or "?"
        if kind == PAIR_CHANNEL:
            return None if conn.via_pake else "pairing happens only in a pairing session"
        if conn.via_pake:
            return "a pairing session may only pair"
        if id(conn) not in self._admitted:
            return "the session was not admitted"  # defence in depth: _admit runs first
        token = self._token_of.get(id(conn))
        if token is not None:
            name = params.get("name") if kind == "action" else None
            refused = (
                "a token session may not ask for tokens"
                if kind == TOKEN_CHANNEL
                else token.refuses(
                    kind,
                    name if isinstance(name, str) else None,
                    guest=peer not in self.settings.peers,
                )
            )
            if refused is not None:
                self._deny_row(kind, peer, detail=refused, args=_audit_args(kind, params))
                return refused
        request = _request(kind, params)
        if request is None:
            # ping and the listing of actions (which judges each action itself) are
            # not governed, but held to the peer's rate like the rest.
            if kind in ("ping", ACTIONS_CHANNEL, TOKEN_CHANNEL):
                limited = self.policy.spend(peer, now=time.monotonic())
                if limited is None:
                    return None
                self._rate_refused(conn, peer)
                return limited.reason
            return None  # kinds nobody serves (rejected as unknown)
        decision = self.policy.admit(
            peer, request, at=datetime.now().astimezone(), now=time.monotonic()
        )
        row = {"reason": _reason(params) or None, "args": _audit_args(kind, params)}
        if not decision.allowed and decision.reason.startswith("rate limit"):
            self._rate_refused(conn, peer)
        if not decision.allowed:
            self._deny_row(kind, peer, detail=f"{decision.rule}: {decision.reason}", **row)
        elif not self._record(kind, peer, "allow", detail=decision.rule, **row):
            # Fail closed: what cannot be audited does not run (docs/security.md).
            return AUDIT_DOWN
        return decision  # the core cuts a refusal to the spec's length (§14.4)

    def _rate_refused(self, conn: Connection, peer: str) -> None:
        """Count a refusal for the rate; a session that keeps asking past it is closed.

        A peer held to its rate could otherwise keep the device busy refusing
        it, as fast as it can ask: after :data:`_RATE_REFUSALS` such refusals
        in one session, the session ends with REFUSED and the peer is suspended.
        """
        count = self._throttled.get(id(conn), 0) + 1
        self._throttled[id(conn)] = count
        if count != _RATE_REFUSALS:
            return
        for session in self.sessions.get(peer, ()):
            if session.connection is conn:
                self.spawn(session.close(ErrorCode.REFUSED, "rate limit exceeded again and again"))
        self._suspend(peer, f"{count} requests refused for its rate in one session")

    def _suspend(self, peer: str, why: str) -> None:
        """Stop accepting ``peer``'s key for :data:`SUSPEND_SECONDS` (a flooding key holder).

        Its HS_INITs then match no key: each costs the device a key-id trial,
        not a key exchange, an audit row and a refusal, so reconnecting as fast
        as it can gains the peer nothing.  Logged and audited once.
        """
        if peer in self._suspended:
            return
        key = self.keyring.take(peer)
        if key is None:
            return
        self._suspended[peer] = key
        _log.warning("peer %s suspended for %g s: %s", peer, SUSPEND_SECONDS, why)
        self._record("session", peer, "deny", detail=f"suspended for {SUSPEND_SECONDS:g} s: {why}")
        asyncio.get_running_loop().call_later(SUSPEND_SECONDS, self._unsuspend, peer)

    def _unsuspend(self, peer: str) -> None:
        key = self._suspended.pop(peer, None)
        if key is not None and peer in self.settings.peers:  # not removed meanwhile
            self.keyring.put(key)

    def _action_args(self, ch: Channel) -> dict[str, object]:
        if isinstance(ch.verdict, Decision) and ch.verdict.allowed:
            return dict(ch.verdict.args)  # decided once, in authorize
        request = _request("action", ch.params)
        assert isinstance(request, ActionRequest)
        decision = self.policy.check(
            ch.connection.peer_id or "?", request, at=datetime.now().astimezone()
        )
        if not decision.allowed:  # e.g. the policy was reloaded in between
            raise PermissionDenied(decision.reason)
        return dict(decision.args)

    def _audited(
        self, kind: str, handler: ChannelHandler, *, request_kind: str | None = None
    ) -> ChannelHandler:
        asked = request_kind or kind

        async def run(ch: Channel) -> int | None:
            started = time.monotonic()
            status: int | None = None
            failed = True
            peer = ch.connection.peer_id or "?"
            request = _request(asked, ch.params)
            assert request is not None  # every audited kind is governed
            live = _Live(peer, ch.connection, request, asyncio.ensure_future(handler(ch)))
            self._live.add(live)
            try:
                status = await live.task
                failed = status != 0  # None: it never ran (refused params, bad frames...)
                return status
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if live.revoked is None or (task is not None and task.cancelling()):
                    raise  # the session or the daemon is ending
                raise ChannelFailure(ChannelCode.REFUSED, live.revoked) from None
            finally:
                self._live.discard(live)
                result: dict[str, Any] = {
                    "exit_status": status,
                    "seconds": round(time.monotonic() - started, 3),
                }
                if live.revoked is not None:
                    result["revoked"] = live.revoked
                result.update(ch.audit)
                self._record(
                    kind,
                    peer,
                    "fail" if failed else "ok",
                    reason=_reason(ch.params) or None,
                    args=_audit_args(asked, ch.params),
                    result=result,
                )

        return run

    async def enforce(self) -> None:
        """Re-judge what is running against the policy now; end what it no longer allows.

        Runs after every reload and, while a peer with ``expires`` or ``when``
        has something open, every second: a session past its peer's expiry or
        outside its time windows is closed with REFUSED, and a channel whose
        request the policy now refuses (a right removed on reload) is ended
        with REFUSED; its process is killed.  Each is audited.
        """
        at = datetime.now().astimezone()
        for peer, live_sessions in list(self.sessions.items()):
            decision = self.policy.check(peer, SessionRequest(), at=at, running=True)
            if decision.allowed:
                continue
            reason = f"no longer allowed: {decision.reason}"
            for session in list(live_sessions):
                await self._end_session(session, peer, reason, f"{decision.rule}: {reason}")
        for live in list(self._live):
            if live.revoked is not None or live.task.done():
                continue
            decision = self.policy.check(live.peer, live.request, at=at, running=True)
            if not decision.allowed:
                live.revoked = f"no longer allowed: {decision.reason}"
                live.task.cancel()

    async def _end_session(self, session: Session, peer: str, reason: str, detail: str) -> None:
        """Close ``session`` with REFUSED: audited, and its running requests ended with it."""
        self._record("session", peer, "deny", detail=detail)
        for live in self._live:  # their audit rows say why they ended
            if live.conn is session.connection and live.revoked is None:
                live.revoked = reason
                live.task.cancel()
        await session.close(ErrorCode.REFUSED, reason)

    async def _keep_enforcing(self) -> None:
        while True:
            await asyncio.sleep(_ENFORCE_INTERVAL)
            peers = set(self.sessions) | {live.peer for live in self._live}
            if any(self.policy.time_bound(peer) for peer in peers):
                await self.enforce()

    def _reserve(self) -> tuple[Path, int] | None:
        """Free space puts must leave for the audit log (``[audit] reserve_mib``)."""
        margin = audit_reserve(self.settings)
        return (audit_path(self.settings), margin) if margin else None

    def handlers(self) -> dict[str, ChannelHandler]:
        """The channel kinds this device serves."""
        handlers: dict[str, ChannelHandler] = {
            "ping": ping_handler,
            "action": self._audited("action", action_handler(self.actions, self._action_args)),
            ACTIONS_CHANNEL: actions_list_handler(
                lambda: self.policy, self.actions, self._record, self._token_allows
            ),
            "exec": self._audited("exec", exec_handler),
            "shell": self._audited("shell", shell_handler),
            "file": self._audited(
                "file", file_handler(lambda: self.policy, self._record, reserve=self._reserve())
            ),
            FORWARD_CHANNEL: self._audited("forward", forward_handler()),
            # Audited as forwarding, judged (and re-judged on reload) as a listen.
            LISTEN_CHANNEL: self._audited(
                "forward", listen_handler(self._record), request_kind=LISTEN_CHANNEL
            ),
        }
        handlers[PAIR_CHANNEL] = self._pair_channel
        handlers[TOKEN_CHANNEL] = self._token_channel
        return handlers

    async def _token_channel(self, ch: Channel) -> int:
        """Issue a token derived from this session (§17.13, §20.2) and answer its grant."""
        conn = ch.connection
        peer = conn.peer_id or "?"
        ask = TokenOpen.from_params(ch.params)
        token_id = new_token_id()
        try:
            token = self.tokens.issue(
                peer,
                ttl=ask.ttl,
                max_uses=ask.uses,
                kinds=ask.kinds,
                actions=ask.actions,
                origin="session",
                secret=conn.export_secret(token_label(token_id)),
                token_id=token_id,
            )
        except TokenError as exc:
            self._deny_row(
                TOKEN_CHANNEL, peer, detail=str(exc), args=_audit_args("token", ch.params)
            )
            raise PermissionDenied(str(exc)) from None
        self._refresh_tokens()
        row = {"reason": ask.reason, "args": _audit_args(TOKEN_CHANNEL, ch.params)}
        if not self._record(TOKEN_CHANNEL, peer, "allow", detail=f"issued {token.id}", **row):
            self.tokens.revoke(token.id)
            raise PermissionDenied(AUDIT_DOWN)
        grant = TokenGrant(
            id=token.id,
            expires=token.expires,
            uses=token.max_uses,
            kinds=list(token.kinds),
            actions=list(token.actions),
            addresses=self.addresses(),
        )
        await ch.write(msgspec.msgpack.encode(grant))
        return 0

    def _token_allows(self, conn: Connection, action: str) -> bool:
        """Whether the token of ``conn``, if any, lets it run ``action`` (the listing)."""
        token = self._token_of.get(id(conn))
        guest = token is not None and token.peer not in self.settings.peers
        return token is None or token.refuses("action", action, guest=guest) is None

    def addresses(self) -> list[str]:
        """The channel addresses peers are told (§19.1): advertised ones, then listen ones.

        A wildcard listen address names no host a peer could use, so it is left out.
        """
        out = [str(a) for a in self.settings.advertise]
        for where in self.settings.websocket:
            if where.host not in ("0.0.0.0", "::"):  # noqa: S104
                out.append(str(where))
        out.extend(str(where) for where in self.settings.mqtt)
        for host, port in self.settings.listen:
            if host not in ("0.0.0.0", "::"):  # noqa: S104
                out.append(format_address(host, port))
        return list(dict.fromkeys(out))

    # -- tokens --------------------------------------------------------------------

    def _follow_keys(self) -> None:
        """The key ring changed: the brokers' subscriptions follow it now (§19.3)."""
        for server in self.mqtt_servers:
            if server.mqtt is not None:
                server.mqtt.refresh()

    def _refresh_tokens(self) -> None:
        """Bring the key ring and the guests' policies in line with the token store."""
        self._token_version = self.tokens.version
        live = {t.id: t for t in self.tokens.live()}
        for token_id in self.keyring.tokens() - set(live):
            self.keyring.remove("token:" + token_id)
        for token in live.values():
            if self.keyring.get("token:" + token.id) is None:
                self.keyring.add_token(token.id, token.peer, token.secret, token.last_timestamp)
        self._follow_keys()
        # A used-up token keeps the sessions it opened (check_tokens): so do its guest's rights.
        now = time.time()
        granting = [t for t in self.tokens.all() if t.revoked is None and now < t.expires]
        try:
            self.policy.set_guests(guest_policies(self.settings, granting))
        except ConfigError as exc:
            _log.error("a guest token's scope is invalid, its guests may do nothing: %s", exc)
            self.policy.set_guests({})

    async def check_tokens(self) -> None:
        """Close the sessions whose token was revoked or expired (and refresh the ring)."""
        now = time.time()
        usable = {t.id for t in self.tokens.live(now)}
        if self.tokens.version != self._token_version or not self.keyring.tokens() <= usable:
            self._refresh_tokens()  # another process wrote, or a token ended here
        for conn_id, token in list(self._token_of.items()):
            current = self.tokens.get(token.id)
            # A used-up token keeps the sessions it opened; a revoked or expired one does not.
            if current is None:
                why = f"token {token.id} was deleted"
            elif current.revoked is not None:
                why = f"token {token.id} was revoked"
            elif now >= current.expires:
                why = f"token {token.id} expired"
            else:
                continue
            self._token_of.pop(conn_id, None)
            for session in list(self.sessions.get(token.peer, ())):
                if id(session.connection) == conn_id:
                    await self._end_session(session, token.peer, why, detail=f"ended: {why}")

    async def _keep_tokens(self) -> None:
        while True:
            await asyncio.sleep(_TOKEN_POLL_INTERVAL)
            await self.check_tokens()

    async def _pair_channel(self, ch: Channel) -> int:
        window = self.pairing
        if window is None or window.verifier is not ch.connection.pake_verifier:
            raise PermissionDenied("no pairing window is open")
        return await window.handle(ch)

    # -- pairing windows -------------------------------------------------------------

    def open_pairing(self, window: PairingWindow) -> None:
        """Offer ``window``'s code to new connections on every address (§16).

        Raises:
            PermissionDenied: another window is open.
        """
        if self.pairing is not None and self.pairing.is_open(time.monotonic()):
            raise PermissionDenied("a pairing window is already open")
        window.on_paired = self._paired
        self.pairing = window
        for server in self.servers:
            server.pake = window.verifier
        self._record("pairing", "?", "allow", detail=f"window opened on port {window.port}")

    @property
    def pairing_port(self) -> int:
        """The port a pairing window announces: the first listener's (0 if none)."""
        return self.servers[0].port if self.servers else 0

    def close_pairing(self) -> None:
        """Close the open pairing window, if any: no new attempt is accepted."""
        window, self.pairing = self.pairing, None
        if window is None:
            return
        window.verifier.closed = True
        for server in self.servers:
            if server.pake is window.verifier:
                server.pake = None

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on every configured address (TCP) and answer discovery (UDP).

        Raises:
            OSError: an address could not be bound.
            PstpError: another daemon serves this configuration.
        """
        if self.control:  # first: a second daemon on this configuration stops here
            await self._start_control()
        try:
            for host, port in self.settings.listen:
                lookup = None
                # Broadcast PING/PONG is IPv4 (docs/protocol.md §8.1): an IPv6 wildcard
                # answers on every IPv4 address too, a specific IPv6 address has no
                # broadcast and is found by address or mDNS (§8.6) instead.
                udp_host = "0.0.0.0" if host == "::" else host  # noqa: S104
                if self.settings.discovery and ":" in udp_host:
                    _log.info("no broadcast discovery on %s: IPv4 only (§8.1)", host)
                elif self.settings.discovery:
                    keys = (
                        (lambda: [p.kid_key for p in self.keyring])
                        if self.settings.stealth
                        else None
                    )
                    responder = start_responder(
                        self.settings.device_id, port, host=udp_host, stealth_keys=keys
                    )
                    self.responders.append(responder)
                    lookup = responder.lookup
                server = await self._serve(
                    host,
                    port,
                    discovery_lookup=lookup,
                    pake=self.pairing.verifier if self.pairing is not None else None,
                )
                self.servers.append(server)
                _log.info("serving %s on %s:%d", self.settings.device_id, host, server.port)
            for where in self.settings.websocket:
                # WebSocket behind a TLS proxy (§19.2): no discovery, no pairing window.
                server = await self._serve(where.host, where.port, websocket=where.path)
                self.websocket_servers.append(server)
                _log.info("serving %s on %s", self.settings.device_id, where)
            for where in self.settings.mqtt:
                # Out to a broker (§19.3): reached behind NAT; connects in the background.
                server = await self._serve(
                    "", 0, mqtt=where, broker=broker_options(self.settings, where)
                )
                self.mqtt_servers.append(server)
                _log.info("serving %s through %s", self.settings.device_id, where)
            # DNS-SD beside broadcast (§8.6); nothing is advertised in stealth mode.
            bound = [
                (h, srv.port)
                for (h, _), srv in zip(self.settings.listen, self.servers, strict=True)
            ]
            self.mdns = advertise_device(self.settings, bound)
        except BaseException:
            if self._control is not None:  # do not leave the socket behind
                await self._control.close()
                self._control = None
            raise
        # The group is left in close(); its tasks never raise (see spawn), so it
        # never cancels the task that started the daemon.
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self.spawn(self._keep_guard())
        self.spawn(self._keep_enforcing())
        self.spawn(self._keep_tokens())

    async def _serve(self, host: str, port: int, **transport: Any) -> Server:
        """One listener (or broker presence) with the daemon's session handling.

        ``transport`` adds what differs by listen address: discovery and the
        pairing window on TCP, ``websocket=PATH``, ``mqtt=`` and ``broker=``.
        """
        return await serve(
            None,
            host,
            port,
            keyring=self.keyring,
            own_id=self.settings.device_id,
            config=self.config,
            handlers=self.handlers(),
            authorize=self.authorize,
            on_session=self._on_session,
            on_handshake_failed=self._auth_failed,
            admit=self._admit,
            session_data=False,  # the daemon serves channels only
            **transport,
        )

    async def _start_control(self) -> None:
        control = ControlServer(self)
        try:
            await control.start()
        except OSError as exc:  # serving goes on; only local commands are unavailable
            _log.warning("no control socket (%s): pstp pair --allow cannot reach this daemon", exc)
            return
        self._control = control

    def save_replay_guard(self) -> None:
        """Save each peer's newest accepted HS_INIT timestamp if it changed (§5.1)."""
        newest = snapshot(self.keyring)
        for peer, key in self._suspended.items():  # a suspended key keeps its guard
            if key.last_timestamp:
                newest[peer] = key.last_timestamp
        if newest == self._guard_saved:
            return
        try:
            save_guard(guard_path(self.settings), newest)
        except OSError as exc:
            _log.warning("could not save the replay guard: %s", exc)
            return
        self._guard_saved = newest

    async def _keep_guard(self) -> None:
        # In the loop, not a thread: a small file, and no two writers at once.
        while True:
            await asyncio.sleep(_GUARD_SAVE_INTERVAL)
            self.save_replay_guard()

    async def reload(self) -> None:
        """Re-read the configuration (SIGHUP): keys, policy and actions apply at once;
        the sessions of removed or re-keyed peers are closed; addresses stay as they are.

        Raises:
            ConfigError: the new file is invalid (the running configuration stays).
        """
        new = load(self.settings.path)
        policy = Policy.from_settings(new)
        actions = load_actions(new)
        old_keys = {p.id: p.key for p in self.settings.peers.values()}
        new_keys = {p.id: p.key for p in new.peers.values()}
        for peer_id, key in new_keys.items():
            if old_keys.get(peer_id) != key:
                self.keyring.add(peer_id, key)
        gone = [p for p in old_keys if old_keys[p] != new_keys.get(p)]
        for peer_id in gone:
            if peer_id not in new_keys:
                self.keyring.remove(peer_id)
        self._follow_keys()
        # Carry the open sessions over, counted from admission (a session is
        # counted from its handshake on, before it is in self.sessions), even
        # above a lowered max_sessions.
        policy.carry_sessions(collections.Counter(self._admitted.values()))
        self.settings, self.policy = new, policy
        for token in self.tokens.live():  # a removed or re-keyed peer's tokens end with it
            if token.peer in gone and self.tokens.revoke(token.id):
                why = "removed" if token.peer not in new_keys else "re-keyed"
                self._record("token", token.peer, "deny", detail=f"revoked {token.id}: peer {why}")
        self._refresh_tokens()  # the guests' policies, against the new actions
        self.actions.clear()
        self.actions.update(actions)
        for peer_id in gone:
            for session in list(self.sessions.get(peer_id, ())):
                await session.close(ErrorCode.REFUSED, "peer removed or re-keyed")
        await self.enforce()  # what the new policy no longer allows ends now
        _log.info("configuration reloaded: %d peer(s)", len(new.peers))

    async def close(self) -> None:
        """Stop listening; end every session with GOING_AWAY; save the replay
        guard; close the audit log."""
        if self._control is not None:
            await self._control.close()
            self._control = None
        self.close_pairing()
        for server in self.servers + self.websocket_servers + self.mqtt_servers:
            await server.close()
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            for task in list(self._running):
                task.cancel()
            await tasks.__aexit__(None, None, None)  # every task has ended
        self.save_replay_guard()
        for responder in self.responders:
            responder.stop()
        for ad in self.mdns:
            await asyncio.to_thread(ad.close)
        if self.audit is not None:
            self.audit.close()
        self.tokens.close()

    async def run_pairing(
        self, poll: float = 0.1, *, stop: asyncio.Future[Any] | None = None
    ) -> str | None:
        """Wait until the pairing window closes; returns the new peer's id, if any.

        Args:
            poll: seconds between looks at the window.
            stop: when this future is done, stop waiting (the requester left).
        """
        assert self.pairing is not None
        window = self.pairing
        while window.paired_with is None and window.is_open(time.monotonic()):
            if stop is not None and stop.done():
                return None
            await asyncio.sleep(poll)
        # The window closes the moment the code is proven; the pair channel that
        # follows may take a little longer.  Wait for it (bounded) before giving up.
        deadline = time.monotonic() + self.config.handshake_timeout
        while (
            window.paired_with is None and window.verifier.successes and time.monotonic() < deadline
        ):
            await asyncio.sleep(poll)
        # Give the pair channel's reply a moment to leave before sessions end.
        await asyncio.sleep(poll)
        return window.paired_with


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work``; log what it raises instead of failing the daemon's task group."""
    try:
        await work
    except Exception:
        _log.exception("a daemon task failed")
