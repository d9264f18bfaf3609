"""Tokens in a running daemon (issue 13, docs/protocol.md §20).

An in-process :class:`Daemon` on 127.0.0.1, listening on TCP and on ``ws://``.
Every way a token may not be used is refused and audited: expired, used up,
revoked, acting as another peer, out of its scope, derived from another
session, a replayed HS_INIT, a token session asking for a token, and a guest
reaching past ``ping``/``action``.  A token survives a restart (with its
replay guard) until it expires, and a revocation by another process (another
connection to ``tokens.sqlite``, as ``pstp token revoke``) closes its live
sessions within 1 s.

Where a refusal can happen at two points (the handshake, once the daemon has
taken the key out of its ring, or the admission of the session, before it
has), each point is reached on purpose: a raw client gets HS_RESP (the key
still in the ring) and holds its key confirmation until the token has changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pstp.asyncio.client import connect
from pstp.asyncio.connection import Session
from pstp.client.remote import list_actions, run_action, run_exec
from pstp.client.tokens import IssuedToken, request_token
from pstp.daemon.app import Daemon
from pstp.daemon.audit import AuditRow
from pstp.daemon.tokens import MAX_LIVE_PER_PEER, Token, TokenStore, tokens_path
from pstp.exceptions import ChannelError, ConnectionClosed, ErrorCode, HandshakeFailed
from pstp.protocol.config import Config
from pstp.protocol.connection import Connection, ConnectionState, Role
from pstp.protocol.kinds import FileOpen, ShellOpen
from pstp.protocol.tokens import token_label
from pstp.settings import load, remove_peer
from tests.cli.test_pair import free_port
from tests.helpers import TIMEOUT

PHONE = bytes(range(32))
LAPTOP = bytes(range(1, 33))
#: How soon after the event a revoked or expired token's sessions must be closed (issue 13).
CLOSE_WITHIN = 1.0 * TIMEOUT / 5.0

CONFIG = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}", "ws://127.0.0.1:{wsport}/pstp"]
discovery = false

[actions."gate.open"]
argv = ["echo", "gate open"]

[actions."lights.on"]
argv = ["echo", "lights on"]

[peers.phone]
key = "{phone}"
[peers.phone.policy]
actions = ["gate.*", "lights.*"]

[peers.laptop]
key = "{laptop}"
[peers.laptop.policy]
actions = ["*"]
exec = [["echo", "**"]]
shell = true
"""


@dataclass
class Home:
    """The running device and ways to reach it."""

    daemon: Daemon
    cfg: Path

    @property
    def port(self) -> int:
        return self.daemon.servers[0].port

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.daemon.websocket_servers[0].port}/pstp"

    async def session(self, key: bytes, where: str | None = None, own_id: str = "") -> Session:
        return await connect(
            where or self.tcp, pair_key=key, device_id="home", own_id=own_id, timeout=TIMEOUT
        )

    @contextmanager
    def store(self) -> Iterator[TokenStore]:
        """The token store through another connection, as the `pstp token` commands use it."""
        store = TokenStore(tokens_path(self.daemon.settings))
        try:
            yield store
        finally:
            store.close()

    def head(self) -> int:
        """The audit log's last seq now."""
        assert self.daemon.audit is not None
        return self.daemon.audit.head()[0]

    def rows(self, after: int, kind: str | None = None, peer: str | None = None) -> list[AuditRow]:
        """Audit rows written after seq ``after``."""
        assert self.daemon.audit is not None
        return [r for r in self.daemon.audit.list(kind=kind, peer=peer) if r.seq > after]

    def uses(self, token_id: str) -> int:
        token = self.daemon.tokens.get(token_id)
        assert token is not None
        return token.uses

    def in_ring(self, token_id: str) -> bool:
        return token_id in self.daemon.keyring.tokens()


def write_config(dir: Path) -> Path:
    cfg = dir / "pstp.toml"
    cfg.write_text(
        CONFIG.format(port=free_port(), wsport=free_port(), phone=PHONE.hex(), laptop=LAPTOP.hex())
    )
    cfg.chmod(0o600)
    return cfg


async def started(cfg: Path) -> Daemon:
    daemon = Daemon(load(cfg), control=False)
    await daemon.start()
    return daemon


@pytest.fixture
async def home(tmp_path: Path) -> AsyncIterator[Home]:
    cfg = write_config(tmp_path)
    daemon = await started(cfg)
    try:
        yield Home(daemon, cfg)
    finally:
        await daemon.close()


async def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Wait until ``condition()`` holds (the daemon runs in this loop meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def ask(session: Session, **kw: object) -> IssuedToken:
    kw.setdefault("ttl", 600)
    return await request_token(session, **kw)  # type: ignore[arg-type]


def out_sink() -> tuple[list[bytes], Callable[[bytes], None]]:
    out: list[bytes] = []
    return out, out.append


async def run(session: Session, name: str) -> tuple[int, bytes]:
    out, write = out_sink()
    status = await run_action(session, name, stdout=write, stderr=write)  # type: ignore[arg-type]
    return status, b"".join(out)


async def refused_handshake(home: Home, key: bytes) -> HandshakeFailed:
    """Connect with ``key``: the device must hang up during the handshake."""
    with pytest.raises(HandshakeFailed) as info:
        session = await home.session(key)
        await session.close()
    return info.value


# -- a raw client, for holding the key confirmation and replaying HS_INIT --------------------------


@dataclass
class Hello:
    """A handshake with HS_RESP read and the key confirmation not yet sent."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: Connection
    init: bytes  # the HS_INIT frame it sent

    async def confirm(self) -> None:
        """Send the key confirmation: the device admits (or refuses) the session now."""
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def refusal(self) -> ConnectionClosed:
        """Read until the device hangs up; the CLOSE it sent."""
        while data := await asyncio.wait_for(self.reader.read(65536), TIMEOUT):
            self.conn.receive_data(data, time.monotonic())
        self.close()
        exc = self.conn.close_exc
        assert isinstance(exc, ConnectionClosed), exc
        return exc

    def close(self) -> None:
        self.writer.close()


async def hello(port: int, key: bytes) -> Hello:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = Connection(
        Role.CLIENT, Config(), pair_key=key, responder_id="home", timestamp=time.time_ns()
    )
    conn.start(time.monotonic())
    init = conn.data_to_send()
    writer.write(init)
    while conn.state is not ConnectionState.ESTABLISHED:
        data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
        assert data, f"the device hung up: {conn.close_exc}"
        conn.receive_data(data, time.monotonic())
    return Hello(reader, writer, conn, init)


async def send_init(port: int, init: bytes) -> bytes:
    """Send one HS_INIT on a fresh connection; everything the device answers before hanging up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(init)
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


def only(rows: list[AuditRow], text: str) -> AuditRow:
    """The one row whose detail holds ``text``."""
    found = [r for r in rows if text in (r.detail or "")]
    assert len(found) == 1, [(r.kind, r.decision, r.detail) for r in rows]
    return found[0]


# -- a token works ---------------------------------------------------------------------------------


async def test_a_session_token_opens_sessions_over_tcp_and_websocket(home: Home) -> None:
    """A token asked for on a session: its secret is derived on both sides, and it opens
    sessions on every address the device gave, each use counted and audited."""
    mark = home.head()
    phone = await home.session(PHONE)
    tok = await ask(
        phone, ttl=600, uses=5, kinds=["ping", "action"], actions=["gate.*"], reason="for the gate"
    )
    assert tok.addresses == (home.ws, home.tcp)
    assert (tok.device_id, tok.uses, tok.kinds, tok.actions) == (
        "home",
        5,
        ("ping", "action"),
        ("gate.*",),
    )
    stored = home.daemon.tokens.get(tok.id)
    assert stored is not None
    assert stored.secret == tok.secret  # derived, never sent
    assert (stored.peer, stored.origin, stored.max_uses) == ("phone", "session", 5)
    issued = only(home.rows(mark, kind="token", peer="phone"), f"issued {tok.id}")
    assert (issued.decision, issued.reason) == ("allow", "for the gate")
    for where in tok.addresses:
        async with await home.session(tok.secret, where) as s:
            assert s.peer_id == "home"
            assert await s.request("ping", b"hi") == b"pong hi"
            assert await run(s, "gate.open") == (0, b"gate open\n")
    assert home.uses(tok.id) == 2
    redeemed = [r.detail for r in home.rows(mark, kind="token") if r.decision == "allow"]
    assert redeemed[1:] == [f"redeemed {tok.id} (use 1/5)", f"redeemed {tok.id} (use 2/5)"]
    actions = [(r.peer, r.decision, r.args["name"]) for r in home.rows(mark, kind="action")]  # type: ignore[index]
    assert actions == [("phone", "allow", "gate.open"), ("phone", "ok", "gate.open")] * 2
    await phone.close()


# -- expired ---------------------------------------------------------------------------------------


async def test_an_expired_token_opens_nothing(home: Home) -> None:
    """A token past its expiry never enters the key ring: the handshake fails, audited."""
    with home.store() as store:
        token = store.issue("phone", ttl=60, now=time.time() - 61)
        fresh = store.issue("phone", ttl=60)  # written after it: the daemon has seen both
    assert token.why_not(time.time()) == f"token {token.id} expired"
    await until(lambda: home.in_ring(fresh.id), "the daemon to read the store")
    assert not home.in_ring(token.id)
    mark = home.head()
    await refused_handshake(home, token.secret)
    await until(lambda: bool(home.rows(mark, kind="auth")), "the audit row")
    (row,) = home.rows(mark, kind="auth")
    assert row.decision == "fail" and "unknown key id" in (row.detail or "")
    assert home.uses(token.id) == 0


async def test_expiry_ends_live_sessions_and_refuses_a_pending_one(home: Home) -> None:
    """When a token expires, its live session is closed with REFUSED within 1 s and a
    handshake that got HS_RESP before is refused at admission; each audited."""
    margin = TIMEOUT / 2  # time to connect twice before it expires
    with home.store() as store:
        token = store.issue("phone", ttl=60, now=time.time() - 60 + margin)
    await until(lambda: home.in_ring(token.id), "the token in the ring")
    live = await home.session(token.secret)
    assert await live.request("ping", b"1") == b"pong 1"
    pending = await hello(home.port, token.secret)
    assert time.time() < token.expires, "too slow to test expiry: raise PSTP_TEST_TIMEOUT_SCALE"
    mark = home.head()
    await asyncio.sleep(token.expires - time.time())
    await asyncio.wait_for(live.wait_closed(), TIMEOUT)
    late = time.time() - token.expires
    exc = live.connection.close_exc
    assert isinstance(exc, ConnectionClosed) and exc.code == ErrorCode.REFUSED
    assert "expired" in exc.reason
    assert late < CLOSE_WITHIN, f"closed {late:.2f} s after expiry"
    await pending.confirm()
    refusal = await pending.refusal()
    assert refusal.code == ErrorCode.REFUSED
    assert refusal.reason == f"token {token.id} expired"
    await until(lambda: not home.in_ring(token.id), "the key to leave the ring")
    await refused_handshake(home, token.secret)
    ended = only(home.rows(mark, kind="session", peer="phone"), "ended")
    assert ended.decision == "deny" and ended.detail == f"ended: token {token.id} expired"
    denied = only(home.rows(mark, kind="token", peer="phone"), "expired")
    assert denied.decision == "deny" and denied.args == {"token": token.id}
    assert home.uses(token.id) == 1
    failed = home.rows(mark, kind="auth")[-1]
    assert failed.decision == "fail" and "unknown key id" in (failed.detail or "")


# -- used up ---------------------------------------------------------------------------------------


async def test_a_used_up_token_keeps_its_session_and_opens_no_other(home: Home) -> None:
    """uses=1: of two handshakes racing for the last use one wins; the other is refused at
    admission; later ones at the handshake; each audited.  The winner's session stays."""
    phone = await home.session(PHONE)
    tok = await ask(phone, uses=1)
    await phone.close()
    mark = home.head()
    loser = await hello(home.port, tok.secret)  # got HS_RESP: the key was still in the ring
    winner = await home.session(tok.secret)  # redeems the only use
    await until(lambda: home.uses(tok.id) == 1, "the winner's admission")
    await loser.confirm()
    refusal = await loser.refusal()
    assert refusal.code == ErrorCode.REFUSED
    assert refusal.reason == f"token {tok.id} has no uses left (1 used)"
    await until(lambda: not home.in_ring(tok.id), "the used-up key to leave the ring")
    await refused_handshake(home, tok.secret)
    assert await winner.request("ping", b"still") == b"pong still"
    await winner.close()
    tokens = [(r.decision, r.detail) for r in home.rows(mark, kind="token")]
    assert tokens == [
        ("allow", f"redeemed {tok.id} (use 1/1)"),
        ("deny", f"token {tok.id} has no uses left (1 used)"),
    ]
    failed = home.rows(mark, kind="auth")[-1]
    assert failed.decision == "fail" and "unknown key id" in (failed.detail or "")
    assert home.uses(tok.id) == 1


# -- revoked ---------------------------------------------------------------------------------------


async def test_revocation_by_another_process_closes_live_sessions_within_1_s(
    home: Home, capsys: pytest.CaptureFixture[str]
) -> None:
    """Revoked through another connection to tokens.sqlite (as `pstp token revoke`): its
    sessions over TCP and ws:// close with REFUSED within 1 s; a pending handshake is refused
    at admission, a new one at the handshake; the pair-key session stays; all audited."""
    phone = await home.session(PHONE)
    tok = await ask(phone)
    over_tcp = await home.session(tok.secret, home.tcp)
    over_ws = await home.session(tok.secret, home.ws)
    for s in (over_tcp, over_ws):  # admitted (a session's first answer comes after it)
        assert await s.request("ping", b"") == b"pong "
    pending = await hello(home.port, tok.secret)
    mark = home.head()
    with home.store() as store:
        assert store.revoke(tok.id)
        revoked = time.monotonic()
        assert not store.revoke(tok.id)  # once
    closed: list[float] = []
    for s in (over_tcp, over_ws):
        await asyncio.wait_for(s.wait_closed(), TIMEOUT)
        closed.append(time.monotonic() - revoked)
        exc = s.connection.close_exc
        assert isinstance(exc, ConnectionClosed) and exc.code == ErrorCode.REFUSED
        assert exc.reason == f"token {tok.id} was revoked"
    with capsys.disabled():
        print(f"\nrevocation closed the token sessions after {max(closed):.3f} s")
    assert max(closed) < CLOSE_WITHIN, closed
    await pending.confirm()
    refusal = await pending.refusal()
    assert (refusal.code, refusal.reason) == (ErrorCode.REFUSED, f"token {tok.id} was revoked")
    await until(lambda: not home.in_ring(tok.id), "the revoked key to leave the ring")
    await refused_handshake(home, tok.secret)
    assert await phone.request("ping", b"pair key") == b"pong pair key"
    await phone.close()
    ended = [r.detail for r in home.rows(mark, kind="session", peer="phone")]
    assert ended == [f"ended: token {tok.id} was revoked"] * 2
    (denied,) = home.rows(mark, kind="token", peer="phone")
    assert (denied.decision, denied.detail) == ("deny", f"token {tok.id} was revoked")
    failed = home.rows(mark, kind="auth")[-1]
    assert failed.decision == "fail" and "unknown key id" in (failed.detail or "")


# -- another peer, out of scope --------------------------------------------------------------------


async def test_a_token_acts_as_its_peer_never_another(home: Home) -> None:
    """A token of phone's may do what phone's policy and its scope both allow: exec is
    refused (laptop may exec, phone may not), whatever id the holder states."""
    laptop = await home.session(LAPTOP)
    out, write = out_sink()
    assert await run_exec(laptop, ["echo", "laptop may"], stdout=write, stderr=write) == 0  # type: ignore[arg-type]
    assert b"".join(out) == b"laptop may\n"
    await laptop.close()
    await until(lambda: "laptop" not in home.daemon.sessions, "laptop's session to end")
    phone = await home.session(PHONE)
    as_peer = await ask(phone)  # no scope: as phone
    with_exec = await ask(phone, kinds=["exec", "action"])  # a scope cannot add rights
    await phone.close()
    mark = home.head()
    for tok in (as_peer, with_exec):
        async with await home.session(tok.secret, own_id="laptop") as s:
            assert await run(s, "lights.on") == (0, b"lights on\n")  # phone may
            assert set(home.daemon.sessions) == {"phone"}
            with pytest.raises(ChannelError) as info:
                await run_exec(s, ["echo", "as laptop"], stdout=write, stderr=write)  # type: ignore[arg-type]
            assert info.value.code == 2  # REFUSED
    denied = home.rows(mark, kind="exec")
    assert [(r.peer, r.decision) for r in denied] == [("phone", "deny")] * 2
    assert all(r.args["argv"] == ["echo", "as laptop"] for r in denied)  # type: ignore[index]
    assert b"as laptop" not in b"".join(out)


async def test_out_of_scope_kinds_and_actions_are_refused_and_audited(home: Home) -> None:
    """A laptop token for actions matching gate.*: no ping, no exec (which laptop may), no
    listing, no lights.on; gate.open runs.  Each refusal is audited with the scope's reason."""
    laptop = await home.session(LAPTOP)
    tok = await ask(laptop, kinds=["action"], actions=["gate.*"])
    await laptop.close()
    mark = home.head()
    async with await home.session(tok.secret) as s:
        assert await run(s, "gate.open") == (0, b"gate open\n")
        out, write = out_sink()
        for attempt in (
            lambda: s.request("ping", b"x"),
            lambda: run_exec(s, ["echo", "no"], stdout=write, stderr=write),  # type: ignore[arg-type]
            lambda: list_actions(s),
            lambda: run(s, "lights.on"),
        ):
            with pytest.raises(ChannelError) as info:
                await attempt()
            assert f"token {tok.id} may not" in info.value.reason
        assert out == []
    rows = home.rows(mark, peer="laptop")
    denied = [(r.kind, r.detail) for r in rows if r.decision == "deny"]
    assert denied == [
        ("ping", f"token {tok.id} may not open 'ping' (its scope: action)"),
        ("exec", f"token {tok.id} may not open 'exec' (its scope: action)"),
        ("actions", f"token {tok.id} may not open 'actions' (its scope: action)"),
        ("action", f"token {tok.id} may not run 'lights.on' (its scope: gate.*)"),
    ]
    assert not [r for r in rows if r.kind == "exec" and r.decision != "deny"]


async def test_a_peer_holds_a_bounded_number_of_live_tokens(home: Home) -> None:
    """MAX_LIVE_PER_PEER live tokens per peer: one more is refused and audited; a revoked
    one frees its place."""
    with home.store() as store:
        held = [store.issue("phone", ttl=600) for _ in range(MAX_LIVE_PER_PEER - 1)]
    phone = await home.session(PHONE)
    last = await ask(phone)
    mark = home.head()
    with pytest.raises(ChannelError, match=f"phone holds {MAX_LIVE_PER_PEER} live tokens"):
        await ask(phone)
    (row,) = home.rows(mark, kind="token", peer="phone")
    assert row.decision == "deny" and f"{MAX_LIVE_PER_PEER} live tokens" in (row.detail or "")
    assert home.daemon.tokens.revoke(held[0].id)
    assert (await ask(phone)).id not in {t.id for t in held} | {last.id}
    await phone.close()


# -- another session, replay, tokens from token sessions -------------------------------------------


async def test_a_secret_derived_from_another_session_opens_nothing(home: Home) -> None:
    """The token's secret is bound to the session that asked for it: the same label
    exported from another session is an unknown key, refused and audited."""
    asked_on = await home.session(PHONE)
    other = await home.session(PHONE)
    tok = await ask(asked_on)
    wrong = other.connection.export_secret(token_label(tok.id))
    assert wrong != tok.secret
    assert asked_on.connection.export_secret(token_label(tok.id)) == tok.secret
    mark = home.head()
    await refused_handshake(home, wrong)
    await until(lambda: bool(home.rows(mark, kind="auth")), "the audit row")
    (row,) = home.rows(mark, kind="auth")
    assert row.decision == "fail" and "unknown key id" in (row.detail or "")
    assert home.uses(tok.id) == 0
    async with await home.session(tok.secret) as s:  # the right one works
        assert await s.request("ping", b"ok") == b"pong ok"
    await asyncio.gather(asked_on.close(), other.close())


async def test_a_replayed_hs_init_with_a_token_is_refused_and_audited(home: Home) -> None:
    """The first HS_INIT a token holder sent, sent again: no HS_RESP, no use counted, an
    auth failure in the audit log."""
    phone = await home.session(PHONE)
    tok = await ask(phone)
    await phone.close()
    first = await hello(home.port, tok.secret)
    await first.confirm()
    await until(lambda: home.uses(tok.id) == 1, "the first session's admission")
    mark = home.head()
    assert await send_init(home.port, first.init) == b""
    first.close()
    await until(lambda: bool(home.rows(mark, kind="auth")), "the audit row")
    (row,) = home.rows(mark, kind="auth")
    assert row.decision == "fail" and "replayed or stale HS_INIT" in (row.detail or "")
    assert home.uses(tok.id) == 1
    assert home.rows(mark, kind="token") == []


async def test_a_token_session_may_not_ask_for_a_token(home: Home) -> None:
    """A token cannot mint tokens (no widening, no renewal): refused, audited, none stored."""
    phone = await home.session(PHONE)
    tok = await ask(phone)
    await phone.close()
    mark = home.head()
    async with await home.session(tok.secret) as s:
        with pytest.raises(ChannelError, match="a token session may not ask for tokens"):
            await ask(s, ttl=3600)
    (row,) = home.rows(mark, kind="token", peer="phone")[1:]  # after the redeem row
    assert (row.decision, row.detail) == ("deny", "a token session may not ask for tokens")
    assert [t.id for t in home.daemon.tokens.all()] == [tok.id]


# -- guests ----------------------------------------------------------------------------------------


async def test_a_guest_may_ping_and_run_its_scoped_actions_only(home: Home) -> None:
    """A token for a name that is no configured peer: ping and the scope's actions; never
    another action, exec, shell or file, even when its scope names those kinds."""
    with home.store() as store:
        gate = store.issue("neighbour", ttl=600, actions=["gate.open"])
        wide = store.issue("neighbour", ttl=600, kinds=["exec", "shell", "file", "action"])
    await until(lambda: home.in_ring(gate.id) and home.in_ring(wide.id), "the guest tokens")
    mark = home.head()
    async with await home.session(gate.secret, own_id="neighbour") as s:
        assert await s.request("ping", b"hello") == b"pong hello"
        assert await run(s, "gate.open") == (0, b"gate open\n")
        assert [a.name for a in await list_actions(s)] == ["gate.open"]
        with pytest.raises(ChannelError, match=r"may not run 'lights\.on'"):
            await run(s, "lights.on")
        for kind, params in (
            ("exec", {"argv": ["echo", "guest"]}),
            ("shell", ShellOpen(pty=False).to_params()),
            ("file", FileOpen(op="get", path="/etc/hostname").to_params()),
        ):
            with pytest.raises(ChannelError, match="a guest credential"):
                await s.open_channel(kind, params)
    async with await home.session(wide.secret) as s:
        for kind, params in (
            ("exec", {"argv": ["echo", "guest"]}),
            ("shell", ShellOpen(pty=False).to_params()),
            ("file", FileOpen(op="get", path="/etc/hostname").to_params()),
        ):
            with pytest.raises(ChannelError, match=f"may not open '{kind}'"):
                await s.open_channel(kind, params)
    rows = home.rows(mark, peer="neighbour")
    ran = [(r.kind, r.decision) for r in rows if r.decision in ("allow", "ok")]
    assert ran == [
        ("auth", "ok"),
        ("token", "allow"),
        ("action", "allow"),
        ("action", "ok"),
        ("actions", "ok"),
        ("auth", "ok"),
        ("token", "allow"),
    ]
    denied = [(r.kind, r.detail) for r in rows if r.decision == "deny"]
    assert [k for k, _ in denied] == ["action", "exec", "shell", "file", "exec", "shell", "file"]
    assert all("a guest credential" in d for _, d in denied[1:])  # type: ignore[operator]


async def test_a_guest_session_keeps_its_rights_after_its_last_use(home: Home) -> None:
    """A used-up token keeps the sessions it opened (Daemon.check_tokens): a guest's too."""
    with home.store() as store:
        gate = store.issue("neighbour", ttl=600, max_uses=1, actions=["gate.open"])
    await until(lambda: home.in_ring(gate.id), "the guest token")
    async with await home.session(gate.secret) as s:
        await until(lambda: not home.in_ring(gate.id), "the used-up key to leave the ring")
        assert await run(s, "gate.open") == (0, b"gate open\n")


async def test_the_actions_listing_of_a_token_session_is_narrowed_by_its_scope(
    home: Home,
) -> None:
    """A phone token for gate.*: `pstp run` without an action lists gate.open only (the pair
    key lists lights.on too); the audit row says what was listed."""
    phone = await home.session(PHONE)
    assert [a.name for a in await list_actions(phone)] == ["gate.open", "lights.on"]
    tok = await ask(phone, actions=["gate.*"])
    await phone.close()
    mark = home.head()
    async with await home.session(tok.secret) as s:
        assert [a.name for a in await list_actions(s)] == ["gate.open"]
    (row,) = home.rows(mark, kind="actions", peer="phone")
    assert row.result == {"exit_status": 0, "listed": ["gate.open"]}


async def test_removing_a_peer_ends_its_tokens(home: Home) -> None:
    """`pstp device remove phone` (config rewritten, then reload): phone's tokens open
    nothing more, as its pair key does not."""
    phone = await home.session(PHONE)
    tok = await ask(phone, actions=["gate.*"])
    await phone.close()
    assert remove_peer(home.cfg, "phone")
    await home.daemon.reload()
    await refused_handshake(home, PHONE)
    await refused_handshake(home, tok.secret)


# -- restart ---------------------------------------------------------------------------------------


async def test_a_token_survives_a_restart_with_its_replay_guard_until_it_expires(
    tmp_path: Path,
) -> None:
    """Tokens live in tokens.sqlite: after a restart a token still opens sessions (TCP and
    ws://), an HS_INIT accepted before the restart is refused after it, and a token that
    expired while the device was down opens nothing."""
    cfg = write_config(tmp_path)
    daemon = await started(cfg)
    try:
        home = Home(daemon, cfg)
        phone = await home.session(PHONE)
        tok = await ask(phone, ttl=3600)
        await phone.close()
        first = await hello(home.port, tok.secret)
        await first.confirm()
        await until(lambda: home.uses(tok.id) == 1, "the first session's admission")
        first.close()
        short: Token = daemon.tokens.issue("phone", ttl=60, now=time.time() - 59.5)
    finally:
        await daemon.close()
    await asyncio.sleep(max(0.0, short.expires - time.time()))
    daemon = await started(cfg)
    try:
        home = Home(daemon, cfg)
        assert home.in_ring(tok.id) and not home.in_ring(short.id)
        mark = home.head()
        assert await send_init(home.port, first.init) == b""
        await until(lambda: bool(home.rows(mark, kind="auth")), "the audit row")
        (row,) = home.rows(mark, kind="auth")
        assert row.decision == "fail" and "replayed or stale HS_INIT" in (row.detail or "")
        for where in (home.tcp, home.ws):
            async with await home.session(tok.secret, where) as s:
                assert await s.request("ping", b"again") == b"pong again"
        assert home.uses(tok.id) == 3
        await refused_handshake(home, short.secret)
    finally:
        await daemon.close()
