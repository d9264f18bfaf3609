"""Policy check: judging requests against the peers' policies, with rate buckets.

The order of the checks and the meaning of each rule are described in
:mod:`pstp.daemon.policy`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, assert_never

from pstp.daemon.policy.load import read_policy
from pstp.daemon.policy.model import (
    DEFAULT_DENY,
    MAX_REASON,
    ActionRequest,
    ActionSpec,
    ArgError,
    ArgValue,
    Decision,
    ExecRequest,
    FileRequest,
    FileRoot,
    ForwardRequest,
    ListenRequest,
    PeerPolicy,
    Request,
    SessionRequest,
    ShellRequest,
    norm_host,
    show_value,
    toml_key,
)
from pstp.settings import Settings

__all__ = [
    "Policy",
]

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _allow(rule: str, reason: str, args: dict[str, ArgValue] | None = None) -> Decision:
    return Decision(True, rule, reason, args or {})


def _deny(rule: str, reason: str) -> Decision:
    return Decision(False, rule, reason)


# --------------------------------------------------------------------------- time


def _aware(moment: datetime) -> datetime:
    """``moment`` as an aware datetime; a naive one is local time."""
    return moment if moment.tzinfo is not None else moment.astimezone()


def _local(moment: datetime) -> datetime:
    """``moment`` on this device's wall clock; a naive one already is."""
    return moment if moment.tzinfo is None else moment.astimezone()


def _check_reason(reason: str) -> str | None:
    """What is wrong with a request's reason, if anything (empty is fine here)."""
    if len(reason) > MAX_REASON:
        return f"the reason is too long ({len(reason)} characters; at most {MAX_REASON})"
    if any(ord(c) < 32 or ord(c) == 127 for c in reason):
        return "the reason must be one line without control characters"
    return None


# --------------------------------------------------------------------------- policy


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float


class Policy:
    """The policy of every trusted peer, with rate buckets and session counts.

    Build it with :meth:`from_settings`.

    Args:
        actions: declared actions by name.
        peers: every trusted peer's policy by id (None: the peer has no policy table).
    """

    def __init__(
        self, actions: Mapping[str, ActionSpec], peers: Mapping[str, PeerPolicy | None]
    ) -> None:
        self._actions = dict(actions)
        self._peers = dict(peers)
        self._buckets: dict[str, _Bucket] = {}
        self._sessions: dict[str, int] = {}
        self._guests: dict[str, PeerPolicy] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """Read ``[actions]`` and every ``[peers.NAME.policy]`` from a loaded configuration.

        Args:
            settings: the loaded configuration (its file is re-read for line numbers).

        Returns:
            The policy.

        Raises:
            ConfigError: a policy or action table is invalid; the message names
                the key and, where found, the line.
        """
        try:
            text = settings.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        return cls.from_data(settings.data, path=settings.path, text=text)

    @classmethod
    def from_data(
        cls, data: Mapping[str, Any], *, path: Path | str = "<config>", text: str = ""
    ) -> Policy:
        """Read ``[actions]`` and the peers' policies from a parsed TOML document.

        Args:
            data: the document (``tomllib.loads`` output).
            path: the file, for error messages.
            text: the file's text, for line numbers.

        Returns:
            The policy.

        Raises:
            ConfigError: a policy or action table is invalid.
        """
        return cls(*read_policy(data, path=Path(path), text=text))

    @property
    def actions(self) -> Mapping[str, ActionSpec]:
        """Declared actions by name."""
        return self._actions

    def peer(self, peer_id: str) -> PeerPolicy | None:
        """The policy of ``peer_id``, or None if it is unknown or has no policy table."""
        return self._peers.get(peer_id)

    def time_bound(self, peer_id: str) -> bool:
        """Whether ``peer_id``'s rights change with time (``expires`` or ``when`` set)."""
        policy = self._peers.get(peer_id)
        return policy is not None and (policy.expires is not None or policy.when is not None)

    def sessions(self, peer_id: str) -> int:
        """How many sessions ``peer_id`` has open (as counted by session_opened/closed)."""
        return self._sessions.get(peer_id, 0)

    def check(
        self, peer_id: str, request: Request, *, at: datetime, running: bool = False
    ) -> Decision:
        """Decide whether ``peer_id`` may make ``request`` at ``at``.

        Pure: reads no clock and spends no rate-limit tokens (the session
        count is read, not changed).  It reads the file system for one thing:
        an exec argument matched by a path pattern is resolved
        (:meth:`ExecRule.confine`).

        Args:
            peer_id: the authenticated peer.
            request: what it asks for.
            at: the moment to judge (naive: this device's local time).
            running: judge something already running (a reload, an expiry, the
                end of a time window): a session is then one of those counted,
                so ``max_sessions`` is not applied to it.

        Returns:
            The decision, with the rule that made it and why.
        """
        policy = self._peers.get(peer_id)
        if policy is None:
            if peer_id not in self._peers:
                return _deny(DEFAULT_DENY, f"unknown peer {show_value(peer_id)}")
            peer = f"peers.{toml_key(peer_id)}"
            return _deny(DEFAULT_DENY, f"{peer} has no [{peer}.policy] table")
        key = policy.key
        if policy.expires is not None and _aware(at) >= _aware(policy.expires):
            return _deny(f"{key}.expires", f"the policy expired at {policy.expires.isoformat()}")
        if policy.when is not None:
            local = _local(at)
            if not any(w.contains(local) for w in policy.when):
                stamp = f"{_DAY_NAMES[local.weekday()]} {local:%H:%M}"
                return _deny(f"{key}.when", f"outside the time windows in {key}.when ({stamp})")
        if not isinstance(request, SessionRequest):
            reason = request.reason.strip()
            problem = _check_reason(reason)
            if problem:
                return _deny("reason", problem)
            if policy.require_reason and not reason:
                return _deny(f"{key}.require_reason", 'a reason ("why") is required')
        match request:
            case ActionRequest():
                return self._check_action(policy, request)
            case ExecRequest():
                return self._check_exec(policy, request)
            case ShellRequest():
                return self._check_shell(policy)
            case SessionRequest():
                if running:
                    return _allow(key, "the session is still allowed")
                return self._check_session(policy)
            case FileRequest():
                return self._check_file(policy, request)
            case ForwardRequest():
                return self._check_forward(policy, request)
            case ListenRequest():
                return self._check_listen(policy, request)
            case _:
                assert_never(request)

    def admit(self, peer_id: str, request: Request, *, at: datetime, now: float) -> Decision:
        """Decide as :meth:`check` does, and spend a token from the peer's rate bucket.

        Every request spends a token, allowed or refused, so a peer whose
        requests are all refused is held to its rate as well.  When the bucket
        is empty the request is refused as rate-limited, whatever :meth:`check`
        says.

        Args:
            peer_id: the authenticated peer.
            request: what it asks for.
            at: the wall-clock moment to judge (time windows, expiry).
            now: a monotonic clock reading in seconds, for the rate limit.

        Returns:
            The decision; a rate-limited request is denied with
            ``rate limit N/period exceeded``.
        """
        decision = self.check(peer_id, request, at=at)
        limited = self.spend(peer_id, now=now)
        return decision if limited is None else limited

    def spend(self, peer_id: str, *, now: float) -> Decision | None:
        """Spend a token from ``peer_id``'s rate bucket (``rate``); the denial if it is empty.

        :meth:`admit` spends one for each request it judges; the daemon spends
        one for each ``ping`` too, which the policy does not otherwise govern.

        Returns:
            ``None`` if a token was there (or the peer has no ``rate``), else the
            denial ``rate limit N/period exceeded``.
        """
        policy = self._peers.get(peer_id)
        if policy is None or policy.rate is None:
            return None
        rate = policy.rate
        bucket = self._buckets.get(peer_id)
        if bucket is None:
            bucket = self._buckets[peer_id] = _Bucket(float(rate.count), now)
        elapsed = max(0.0, now - bucket.last)  # a clock that steps back refills nothing
        bucket.tokens = min(float(rate.count), bucket.tokens + elapsed * rate.count / rate.period)
        bucket.last = max(bucket.last, now)
        if bucket.tokens < 1.0:
            return _deny(
                f"{policy.key}.rate {show_value(rate.text)}", f"rate limit {rate.text} exceeded"
            )
        bucket.tokens -= 1.0
        return None

    def session_opened(self, peer_id: str) -> Decision:
        """Count a session opening for ``peer_id`` if ``max_sessions`` allows it.

        Call :meth:`admit` with a :class:`SessionRequest` first for expiry,
        time windows and the rate limit; this only counts.

        Args:
            peer_id: the authenticated peer.

        Returns:
            The decision; when allowed the session is counted until
            :meth:`session_closed`.
        """
        policy = self._peers.get(peer_id)
        if policy is None:
            if peer_id not in self._peers:
                return _deny(DEFAULT_DENY, f"unknown peer {show_value(peer_id)}")
            peer = f"peers.{toml_key(peer_id)}"
            return _deny(DEFAULT_DENY, f"{peer} has no [{peer}.policy] table")
        decision = self._check_session(policy)
        if decision.allowed:
            self._sessions[peer_id] = self.sessions(peer_id) + 1
        return decision

    def set_guests(self, guests: Mapping[str, PeerPolicy]) -> None:
        """Replace the policies of guests: token holders that are no configured peer (§20).

        A guest's policy is made from its tokens' scopes
        (:func:`pstp.daemon.tokens.guest_policies`); configured peers are never
        touched, and a guest's rate bucket and session count survive the change.

        Args:
            guests: each guest's policy by name (names of configured peers are ignored).
        """
        for name in set(self._guests) - set(guests):
            self._peers.pop(name, None)
        self._guests = {
            n: p for n, p in guests.items() if n not in self._peers or n in self._guests
        }
        self._peers.update(self._guests)

    def carry_sessions(self, counts: Mapping[str, int]) -> None:
        """Take over the open-session counts of the policy this one replaces (a reload).

        The counts are set as they are, even above a lowered ``max_sessions``:
        the sessions already open stay counted, so no new one opens until
        enough have ended.

        Args:
            counts: open sessions per peer id.
        """
        for peer_id, count in counts.items():
            if count > 0 and peer_id in self._peers:
                self._sessions[peer_id] = count

    def session_closed(self, peer_id: str) -> None:
        """Forget one of ``peer_id``'s sessions (never going below zero).

        Args:
            peer_id: the peer whose session ended.
        """
        count = self.sessions(peer_id) - 1
        if count > 0:
            self._sessions[peer_id] = count
        else:
            self._sessions.pop(peer_id, None)

    # ---- kinds

    def _check_action(self, policy: PeerPolicy, request: ActionRequest) -> Decision:
        name = request.name
        key = policy.key
        index = next(
            (i for i, g in enumerate(policy.actions) if fnmatch.fnmatchcase(name, g)), None
        )
        if index is None:
            if not policy.actions:
                return _deny(DEFAULT_DENY, f"{key}.actions allows no actions")
            globs = ", ".join(show_value(g) for g in policy.actions)
            return _deny(
                DEFAULT_DENY, f"action {show_value(name)} matches none of {key}.actions: {globs}"
            )
        spec = self._actions.get(name)
        if spec is None:
            return _deny(DEFAULT_DENY, f"no action {show_value(name)} is declared in [actions]")
        try:
            args = spec.bind(request.args)
        except ArgError as exc:
            where = f"{spec.key}.args" + (f".{toml_key(exc.arg)}" if exc.arg else "")
            return _deny(where, str(exc))
        glob = policy.actions[index]
        return _allow(
            f"{key}.actions[{index}] {show_value(glob)}",
            f"action {show_value(name)} matches {show_value(glob)}",
            args,
        )

    def _check_exec(self, policy: PeerPolicy, request: ExecRequest) -> Decision:
        argv = request.argv
        key = f"{policy.key}.exec"
        if not argv:
            return _deny(DEFAULT_DENY, "the argv is empty")
        if not all(isinstance(a, str) for a in argv):
            return _deny(DEFAULT_DENY, "argv elements must be strings")
        if any("\x00" in a for a in argv):
            return _deny(DEFAULT_DENY, "the argv contains a NUL character")
        misses: list[str] = []
        escaped: Decision | None = None  # the first entry that matched until resolved
        for rule in policy.exec:
            why = rule.mismatch(argv)
            if why is None:
                try:
                    resolved = rule.confine(argv)
                except ValueError as exc:
                    why = str(exc)
                    if escaped is None:
                        escaped = _deny(f"{rule.rule} {show_value(list(rule.pattern))}", why)
                else:
                    return Decision(
                        True,
                        f"{rule.rule} {show_value(list(rule.pattern))}",
                        f"argv matches {show_value(list(rule.pattern), 200)}",
                        argv=resolved,
                    )
            if argv[0] == rule.command:
                misses.append(f"{rule.rule.rpartition('.')[2]}: {why}")
        if escaped is not None:
            return escaped  # the most telling reason, before the 200-character cut
        shown = show_value(argv, 120)
        if not policy.exec:
            return _deny(DEFAULT_DENY, f"{key} allows no commands")
        if not misses:
            return _deny(DEFAULT_DENY, f"the command {show_value(argv[0])} is not in {key}")
        return _deny(DEFAULT_DENY, f"argv {shown} is not allowed by {key} ({'; '.join(misses)})")

    def _check_shell(self, policy: PeerPolicy) -> Decision:
        if policy.shell:
            return _allow(f"{policy.key}.shell", "shell = true")
        if policy.shell is False:
            return _deny(f"{policy.key}.shell", "shell = false")
        return _deny(DEFAULT_DENY, f"{policy.key} does not set shell = true")

    def _check_session(self, policy: PeerPolicy) -> Decision:
        limit, count = policy.max_sessions, self.sessions(policy.peer_id)
        if limit is None:
            return _allow(policy.key, f"no max_sessions limit ({count} open)")
        rule = f"{policy.key}.max_sessions {limit}"
        if count >= limit:
            return _deny(rule, f"{count} of {limit} sessions already open")
        return _allow(rule, f"session {count + 1} of at most {limit}")

    def _check_file(self, policy: PeerPolicy, request: FileRequest) -> Decision:
        key = f"{policy.key}.files"
        if "\x00" in request.path:
            return _deny(DEFAULT_DENY, "the path contains a NUL character")
        path = PurePath(request.path)
        if not path.is_absolute():
            return _deny(DEFAULT_DENY, f"the path {show_value(request.path)} is not absolute")
        if ".." in path.parts:
            return _deny(DEFAULT_DENY, f'the path {show_value(request.path)} has a ".." component')
        best: tuple[int, FileRoot] | None = None
        for i, root in enumerate(policy.files):
            if path.is_relative_to(root.root) and (
                best is None or len(root.root.parts) > len(best[1].root.parts)
            ):
                best = (i, root)
        if best is None:
            if not policy.files:
                return _deny(DEFAULT_DENY, f"{key} gives no file roots")
            return _deny(DEFAULT_DENY, f"{show_value(str(path))} is outside the roots in {key}")
        i, root = best
        rule = f"{key}[{i}] {show_value(str(root.root))}"
        if request.write and not root.write:
            return _deny(rule, f"{show_value(str(path))} is under a read-only root")
        mode = "write" if request.write else "read"
        return _allow(rule, f"{mode} {show_value(str(path))} under {show_value(str(root.root))}")

    def _check_forward(self, policy: PeerPolicy, request: ForwardRequest) -> Decision:
        key = f"{policy.key}.forward"
        port = request.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            return _deny(DEFAULT_DENY, f"port {show_value(port)} is out of range (1-65535)")
        host = norm_host(request.host)
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for i, target in enumerate(policy.forward):
            if target.matches(host, port):
                return _allow(
                    f"{key}[{i}] {show_value(target.text)}",
                    f"forwarding to {show_value(shown)}",
                )
        if not policy.forward:
            return _deny(DEFAULT_DENY, f"{key} allows no targets")
        return _deny(DEFAULT_DENY, f"{show_value(shown)} is not in {key}")

    def _check_listen(self, policy: PeerPolicy, request: ListenRequest) -> Decision:
        key = f"{policy.key}.forward_listen"
        port = request.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            return _deny(DEFAULT_DENY, f"port {show_value(port)} is out of range (0-65535)")
        host = norm_host(request.host)
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for i, target in enumerate(policy.forward_listen):
            if target.matches(host, port):
                return _allow(
                    f"{key}[{i}] {show_value(target.text)}", f"listening on {show_value(shown)}"
                )
        if not policy.forward_listen:
            return _deny(DEFAULT_DENY, f"{key} allows no listening")
        return _deny(DEFAULT_DENY, f"{show_value(shown)} is not in {key}")
