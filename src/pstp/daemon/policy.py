"""Policy: what each trusted peer may do.  Deny by default, and explain every decision.

A peer may do nothing unless its ``[peers.NAME.policy]`` table says so.  Every
answer is a :class:`Decision` naming the rule that decided (a dotted config
key, or ``default deny``) and a reason a person can read.

Configuration (in ``pstp.toml``; validated when loaded, every error names the
key and, where it can be found, the line; unknown keys are errors)::

    [actions."kettle.on"]        # quote dotted names: [actions.kettle.on] is a nested table
    argv = ["/usr/local/bin/kettle", "on", "{temp}"]   # run by the action runner
    args = { temp = { type = "int", min = 40, max = 100, default = 100 } }

    [peers.phone.policy]
    actions = ["kettle.*", "lights.on"]
    exec = [["uptime"], ["systemctl", "status", "*"], ["ls", "-l", "/srv/**"]]
    shell = false
    when = [ { days = ["mon", "tue", "wed", "thu", "fri"], from = "07:00", to = "22:30" },
             { days = ["sat", "sun"], from = "09:00", to = "23:59" } ]
    expires = 2027-01-01T00:00:00Z
    require_reason = true
    rate = "30/min"
    max_sessions = 2
    files = [ { root = "/srv/share", write = false } ]
    forward = ["127.0.0.1:554", "camera.local:80"]

``[actions.NAME]`` (NAME: 1-64 letters, digits, ``.``, ``_``, ``-``):
    ``args`` is a table of argument schemas.  ``type`` is required: ``"int"``
    and ``"float"`` take ``min`` and ``max``; ``"bool"`` takes nothing else;
    ``"str"`` takes ``max_len`` (default 1024), ``pattern`` (a regular
    expression the whole value must match) and ``choices`` (a list of
    strings).  An argument with a ``default`` is optional, every other one is
    required, and arguments that are not declared are refused.  Values may
    arrive as strings (as the CLI passes them) and are coerced: integers in
    decimal, floats as Python reads them (finite only), booleans as
    true/false/yes/no/on/off/1/0.  ``argv`` is checked only so far as that
    its ``{placeholders}`` name declared arguments; the action runner owns it
    and every other key of the table.
``actions``
    fnmatch globs (case-sensitive) over declared action names.  A name
    without a glob character must name a declared action (typos fail at load).
``exec``
    The argv allow-list.  An entry matches an argv of the same length element
    by element with fnmatch; ``"**"`` as the last element matches any number
    (zero included) of remaining arguments.  The command (element 0) is
    compared literally and may not hold glob characters (``uptime`` and
    ``/usr/bin/uptime`` are different commands; resolving them is exec's job).  Two guards close
    the usual holes of globbing argv: an argument matched only by a wildcard
    (``*``, ``?``, ``[...]`` or ``**``) may not start with ``-`` unless the
    pattern does (no smuggled options such as ``find -exec``), and may not
    hold a ``..`` path component (``/srv/*`` never reaches ``/srv/../etc``).
    There is no shell: metacharacters are plain data, matched literally.
``shell``
    ``true`` allows an interactive shell (default ``false``).
``when``
    Time windows, any of which must hold; omit ``when`` for "any time" (an
    empty list is an error rather than "never").
    ``days`` (``mon`` ... ``sun``, default all) lists the days a window
    *starts* on; ``from`` and ``to`` are ``"HH:MM"`` (or TOML local times)
    with minute resolution, both inclusive: ``to = "22:30"`` still allows
    22:30:59.  Defaults are ``"00:00"`` and ``"23:59"``.  ``to`` before
    ``from`` means overnight: ``{ days = ["fri"], from = "22:00", to =
    "06:00" }`` holds from Friday 22:00 to Saturday 06:00.  Times are the
    device's local time (``TZ``): an aware ``at`` is converted to it, a naive
    one is taken as local.
``expires``
    A TOML datetime (offset-aware, or local if naive), a date (local
    midnight), or an ISO 8601 string; from that instant on, everything is
    denied.
``require_reason``
    ``true``: every request except opening a session must carry a
    non-empty reason ("why").  Reasons are at most 200 characters on one
    line whether required or not.
``rate``
    ``"N/sec"``, ``"N/min"`` or ``"N/hour"`` (also ``s``, ``second``, ``m``,
    ``minute``, ``h``): a token bucket holding N, refilled at N per period,
    spent by each request :meth:`Policy.admit` would otherwise allow.
    Default: no limit.
``max_sessions``
    Concurrent sessions for the peer (0 or more; default no limit).
``files``
    ``{ root = "/abs/path", write = false }`` tables.  A path is judged by
    the most specific root that holds it.  Only lexical checks happen here
    (absolute, no ``..``); symlinks are the file transfer's job.
``forward``
    ``"host:port"`` targets (``"[v6]:port"`` for IPv6), compared literally
    (host names case-insensitively, IP addresses by value).

Checks run in this order, the first that fails deciding: unknown peer; no
policy table; expired; outside the time windows; reason missing or malformed;
the request kind's own rules; rate limit (only in :meth:`Policy.admit`).

A :class:`Policy` keeps rate buckets and session counts; it is meant for one
event loop and is not thread-safe.  Reloading the configuration means
building a new one (which starts with full buckets and no sessions).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import ipaddress
import json
import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path, PurePath
from typing import Any, Literal, TypeAlias, assert_never

from pstp.settings import ConfigError, Settings, line_of

__all__ = [
    "DEFAULT_MAX_LEN",
    "MAX_REASON",
    "ActionRequest",
    "ActionSpec",
    "ArgSpec",
    "ArgValue",
    "Decision",
    "ExecRequest",
    "ExecRule",
    "FileRequest",
    "FileRoot",
    "ForwardRequest",
    "ForwardTarget",
    "PeerPolicy",
    "Policy",
    "RateLimit",
    "Request",
    "SessionRequest",
    "ShellRequest",
    "TimeWindow",
    "parse_target",
]

#: Longest reason a request may carry (it is written to the audit log).
MAX_REASON = 200
#: Length cap of a ``str`` argument whose schema gives no ``max_len``: bounded by default.
DEFAULT_MAX_LEN = 1024
#: The rule of every decision no configured rule made.
DEFAULT_DENY = "default deny"

ArgValue: TypeAlias = int | float | bool | str
ArgType: TypeAlias = Literal["int", "float", "bool", "str"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ARG_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_INT_RE = re.compile(r"[+-]?[0-9]{1,100}")
_HHMM_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_RATE_RE = re.compile(r"\s*([0-9]{1,9})\s*/\s*([a-z]+)\s*")
_GLOB_CHARS = frozenset("*?[")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_POLICY_KEYS = (
    "actions",
    "exec",
    "shell",
    "when",
    "expires",
    "require_reason",
    "rate",
    "max_sessions",
    "files",
    "forward",
)
_ARG_KEYS: dict[str, tuple[str, ...]] = {
    "int": ("type", "default", "min", "max"),
    "float": ("type", "default", "min", "max"),
    "bool": ("type", "default"),
    "str": ("type", "default", "max_len", "pattern", "choices"),
}


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class ActionRequest:
    """Run the declared action ``name`` with ``args`` (raw values; strings are coerced).

    Attributes:
        name: the action's declared name.
        args: argument values by name.
        reason: why ("" for none).
    """

    name: str
    args: dict[str, object] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """Run ``argv`` without a shell.

    Attributes:
        argv: the command and its arguments.
        reason: why ("" for none).
    """

    argv: list[str]
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ShellRequest:
    """Open an interactive shell.

    Attributes:
        reason: why ("" for none).
    """

    reason: str = ""


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """Open a session (``require_reason`` does not apply: reasons belong to requests)."""


@dataclass(frozen=True, slots=True)
class FileRequest:
    """Read (or write) the file at ``path``.

    Attributes:
        path: an absolute path on this device.
        write: True to write, False to read.
        reason: why ("" for none).
    """

    path: str
    write: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    """Open a TCP connection to ``host:port`` on the peer's behalf.

    Attributes:
        host: a host name or IP address.
        port: the TCP port.
        reason: why ("" for none).
    """

    host: str
    port: int
    reason: str = ""


Request: TypeAlias = (
    ActionRequest | ExecRequest | ShellRequest | SessionRequest | FileRequest | ForwardRequest
)


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to a request, with what decided it.

    Attributes:
        allowed: whether the request may proceed.
        rule: the rule that decided: a config key such as
            ``peers.phone.policy.actions[0] "kettle.*"``, or ``default deny``.
        reason: a human explanation.
        args: for an allowed action, the validated and coerced arguments
            (defaults filled in); empty otherwise.
    """

    allowed: bool
    rule: str
    reason: str
    args: dict[str, ArgValue] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{'allow' if self.allowed else 'deny'}: {self.reason} [{self.rule}]"

    @property
    def refusal(self) -> str | None:
        """``None`` if allowed, else the reason sent with REJECT REFUSED.

        This makes a Decision the verdict of the session core's authorizer
        (:class:`pstp.protocol.session.Verdict`): it travels with the channel,
        so the policy is checked once per channel (docs/protocol.md §17.1).
        """
        return None if self.allowed else self.reason


def _allow(rule: str, reason: str, args: dict[str, ArgValue] | None = None) -> Decision:
    return Decision(True, rule, reason, args or {})


def _deny(rule: str, reason: str) -> Decision:
    return Decision(False, rule, reason)


# --------------------------------------------------------------------------- rules


def _show(value: object, limit: int = 60) -> str:
    """A value for a message: JSON-quoted (control characters escaped), cut to ``limit``."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[: limit - 4] + '..."'


def _key(name: str) -> str:
    """``name`` as a TOML key segment: bare when it can be, quoted otherwise."""
    return name if _BARE_KEY_RE.fullmatch(name) else json.dumps(name)


class _ArgError(ValueError):
    """An argument value was refused; ``arg`` names it (None: the set of names)."""

    def __init__(self, arg: str | None, message: str) -> None:
        super().__init__(message)
        self.arg = arg


@dataclass(frozen=True, slots=True)
class ArgSpec:
    """The schema of one action argument.

    Attributes:
        name: the argument's name.
        type: ``"int"``, ``"float"``, ``"bool"`` or ``"str"``.
        min: the least number allowed (numbers only).
        max: the greatest number allowed (numbers only).
        max_len: the longest string allowed (strings only).
        pattern: a regular expression a string must match entirely.
        choices: the strings allowed, if limited.
        default: the value when omitted (then not required).
        required: whether the argument must be given.
    """

    name: str
    type: ArgType
    min: int | float | None = None
    max: int | float | None = None
    max_len: int = DEFAULT_MAX_LEN
    pattern: re.Pattern[str] | None = None
    choices: tuple[str, ...] | None = None
    default: ArgValue | None = None
    required: bool = True

    def coerce(self, value: object) -> ArgValue:
        """Validate ``value`` (native, or a string as the CLI passes it) and convert it.

        Args:
            value: the raw value.

        Returns:
            The value as this argument's type.

        Raises:
            ValueError: the value is of the wrong type or out of bounds; the
                message says which and why.
        """
        result: ArgValue
        if self.type == "str":
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {_show(value)}")
            return self._check_str(value)
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError(f"expected true or false, got {_show(value)}")
        if isinstance(value, bool):
            raise ValueError(
                f"expected {'an integer' if self.type == 'int' else 'a number'}, got {_show(value)}"
            )
        if self.type == "int":
            if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
                result = int(value.strip())
            elif isinstance(value, int):
                result = value
            else:
                raise ValueError(f"expected an integer, got {_show(value)}")
        else:
            try:
                if not isinstance(value, int | float | str):
                    raise TypeError
                result = float(value)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"expected a number, got {_show(value)}") from None
            if not math.isfinite(result):
                raise ValueError(f"expected a finite number, got {_show(value)}")
        if self.min is not None and result < self.min:
            raise ValueError(f"{result} is below the minimum {self.min}")
        if self.max is not None and result > self.max:
            raise ValueError(f"{result} is above the maximum {self.max}")
        return result

    def _check_str(self, value: str) -> str:
        if "\x00" in value:
            raise ValueError("contains a NUL character")
        if len(value) > self.max_len:
            raise ValueError(f"is {len(value)} characters long; at most {self.max_len}")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(_show(c) for c in self.choices)
            raise ValueError(f"{_show(value)} is not one of {allowed}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise ValueError(
                f"{_show(value)} does not match the pattern {_show(self.pattern.pattern)}"
            )
        return value


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """A declared action, as far as policy needs it: its name and argument schemas.

    Attributes:
        name: the action's name.
        args: argument schemas by name.
    """

    name: str
    args: Mapping[str, ArgSpec] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The action's config key, e.g. ``actions."kettle.on"``."""
        return f"actions.{_key(self.name)}"

    def bind(self, values: Mapping[str, object]) -> dict[str, ArgValue]:
        """Validate and coerce ``values``, filling in defaults.

        Args:
            values: raw values by argument name.

        Returns:
            Every argument's value, by name.

        Raises:
            ValueError: an unknown, missing or invalid argument (the message
                names it).
        """
        unknown = sorted(set(values) - set(self.args))
        if unknown:
            takes = ", ".join(self.args) or "no arguments"
            raise _ArgError(
                None, f"unknown argument {_show(unknown[0])} ({self.name} takes: {takes})"
            )
        bound: dict[str, ArgValue] = {}
        for name, spec in self.args.items():
            if name in values:
                try:
                    bound[name] = spec.coerce(values[name])
                except ValueError as exc:
                    raise _ArgError(name, f"{name}: {exc}") from None
            elif spec.required:
                raise _ArgError(name, f"missing required argument {_show(name)}")
            else:
                assert spec.default is not None
                bound[name] = spec.default
        return bound


def _has_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


@dataclass(frozen=True, slots=True)
class ExecRule:
    """One entry of the exec allow-list.

    Attributes:
        pattern: the entry as configured: a literal command, then fnmatch
            patterns, optionally ending in ``"**"``.
        rule: the config key naming it, for decisions.
    """

    pattern: tuple[str, ...]
    rule: str = "exec"
    _regexes: tuple[re.Pattern[str] | None, ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        if not self.pattern or not self.pattern[0] or _has_glob(self.pattern[0]):
            raise ValueError("the command (element 0) must be a literal, non-empty string")
        if "**" in self.pattern[:-1]:
            raise ValueError('"**" may only be the last element')
        regexes = tuple(
            re.compile(fnmatch.translate(p)) if _has_glob(p) else None for p in self.fixed
        )
        object.__setattr__(self, "_regexes", regexes)

    @property
    def command(self) -> str:
        """The command, matched literally."""
        return self.pattern[0]

    @property
    def tail(self) -> bool:
        """Whether the entry ends in ``"**"`` (any number of further arguments)."""
        return self.pattern[-1] == "**"

    @property
    def fixed(self) -> tuple[str, ...]:
        """The elements matched one to one (all but a final ``"**"``)."""
        return self.pattern[:-1] if self.tail else self.pattern

    def mismatch(self, argv: Sequence[str]) -> str | None:
        """Why ``argv`` does not match this entry.

        Args:
            argv: the requested command line (never interpreted by a shell).

        Returns:
            None if it matches, else a short explanation.
        """
        if not argv or argv[0] != self.command:
            return f"the command is not {_show(self.command)}"
        fixed = self.fixed
        if len(argv) != len(fixed) and not (self.tail and len(argv) > len(fixed)):
            want = f"at least {len(fixed) - 1}" if self.tail else str(len(fixed) - 1)
            return f"{len(argv) - 1} arguments where {want} are allowed"
        for i in range(1, len(argv)):
            arg = argv[i]
            if i < len(fixed):
                pat, regex = fixed[i], self._regexes[i]
                if regex is None:
                    if arg != pat:
                        return f"argument {i} {_show(arg)} is not {_show(pat)}"
                    continue
                if not regex.match(arg):
                    return f"argument {i} {_show(arg)} does not match {_show(pat)}"
            else:
                pat = "**"
            if arg.startswith("-") and not pat.startswith("-"):
                return (
                    f"argument {i} {_show(arg)} looks like an option, and the wildcard "
                    f"{_show(pat)} matches no options"
                )
            if ".." in arg.split("/"):
                return (
                    f'argument {i} {_show(arg)} has a ".." component, which the wildcard '
                    f"{_show(pat)} never matches"
                )
        return None


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A weekly window of local time, with minute resolution and both ends inclusive.

    Attributes:
        days: the weekdays the window starts on (0 is Monday).
        start: its first minute, in minutes after midnight.
        end: its last minute; before ``start`` for an overnight window.
    """

    days: frozenset[int]
    start: int
    end: int

    def contains(self, local: datetime) -> bool:
        """Whether the local wall-clock time ``local`` falls in the window.

        Args:
            local: a time on this device's clock (its tzinfo is ignored).

        Returns:
            True if inside.
        """
        minute, day = local.hour * 60 + local.minute, local.weekday()
        if self.start <= self.end:
            return day in self.days and self.start <= minute <= self.end
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute <= self.end
        )


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``count`` requests, refilled at ``count`` per ``period`` seconds.

    Attributes:
        count: the bucket's size.
        period: seconds in which it refills completely.
        text: the configured text, e.g. ``30/min``.
    """

    count: int
    period: float
    text: str


@dataclass(frozen=True, slots=True)
class FileRoot:
    """A directory the peer may reach.

    Attributes:
        root: the absolute, lexically normal directory.
        write: whether files under it may be written.
    """

    root: PurePath
    write: bool = False


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    """A ``host:port`` the peer may forward to.

    Attributes:
        host: the host, normalised (lower case, IP addresses in canonical form).
        port: the TCP port.
        text: the configured text.
    """

    host: str
    port: int
    text: str


def _norm_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.rstrip(".")


def parse_target(text: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; the port is required.

    Args:
        text: the target.

    Returns:
        The normalised host and the port.

    Raises:
        ValueError: not a valid target.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    elif text.count(":") == 1:
        host, sep, port = text.partition(":")
    else:
        raise ValueError(f"{_show(text)} is not HOST:PORT (write IPv6 addresses as [ADDR]:PORT)")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"{_show(text)} is not HOST:PORT")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is out of range (1-65535)")
    norm = _norm_host(host)
    if not norm or _has_glob(norm) or any(c.isspace() or c == "/" for c in norm):
        raise ValueError(f"{_show(text)} has an invalid host")
    return norm, int(port)


@dataclass(frozen=True, slots=True)
class PeerPolicy:
    """One peer's ``[peers.NAME.policy]`` table, validated.

    Attributes:
        peer_id: the peer.
        actions: globs over declared action names.
        exec: the argv allow-list.
        shell: the configured ``shell`` (None when not set: denied).
        when: time windows (None: any time).
        expires: when the policy stops allowing anything (None: never).
        require_reason: whether requests must carry a reason.
        rate: the request rate limit (None: unlimited).
        max_sessions: concurrent session limit (None: unlimited).
        files: file roots.
        forward: forwarding targets.
    """

    peer_id: str
    actions: tuple[str, ...] = ()
    exec: tuple[ExecRule, ...] = ()
    shell: bool | None = None
    when: tuple[TimeWindow, ...] | None = None
    expires: datetime | None = None
    require_reason: bool = False
    rate: RateLimit | None = None
    max_sessions: int | None = None
    files: tuple[FileRoot, ...] = ()
    forward: tuple[ForwardTarget, ...] = ()

    @property
    def key(self) -> str:
        """The table's config key, e.g. ``peers.phone.policy``."""
        return f"peers.{_key(self.peer_id)}.policy"


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
        return _Loader(Path(path), text).load(data)

    @property
    def actions(self) -> Mapping[str, ActionSpec]:
        """Declared actions by name."""
        return self._actions

    def peer(self, peer_id: str) -> PeerPolicy | None:
        """The policy of ``peer_id``, or None if it is unknown or has no policy table."""
        return self._peers.get(peer_id)

    def sessions(self, peer_id: str) -> int:
        """How many sessions ``peer_id`` has open (as counted by session_opened/closed)."""
        return self._sessions.get(peer_id, 0)

    def check(self, peer_id: str, request: Request, *, at: datetime) -> Decision:
        """Decide whether ``peer_id`` may make ``request`` at ``at``.

        Pure: reads no clock and spends no rate-limit tokens (the session
        count is read, not changed).

        Args:
            peer_id: the authenticated peer.
            request: what it asks for.
            at: the moment to judge (naive: this device's local time).

        Returns:
            The decision, with the rule that made it and why.
        """
        policy = self._peers.get(peer_id)
        if policy is None:
            if peer_id not in self._peers:
                return _deny(DEFAULT_DENY, f"unknown peer {_show(peer_id)}")
            peer = f"peers.{_key(peer_id)}"
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
                return self._check_session(policy)
            case FileRequest():
                return self._check_file(policy, request)
            case ForwardRequest():
                return self._check_forward(policy, request)
            case _:
                assert_never(request)

    def admit(self, peer_id: str, request: Request, *, at: datetime, now: float) -> Decision:
        """Decide as :meth:`check` does, then spend a token from the peer's rate bucket.

        Only requests :meth:`check` allows spend a token.

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
        policy = self._peers.get(peer_id)
        if not decision.allowed or policy is None or policy.rate is None:
            return decision
        rate = policy.rate
        bucket = self._buckets.get(peer_id)
        if bucket is None:
            bucket = self._buckets[peer_id] = _Bucket(float(rate.count), now)
        elapsed = max(0.0, now - bucket.last)  # a clock that steps back refills nothing
        bucket.tokens = min(float(rate.count), bucket.tokens + elapsed * rate.count / rate.period)
        bucket.last = max(bucket.last, now)
        if bucket.tokens < 1.0:
            return _deny(
                f"{policy.key}.rate {_show(rate.text)}", f"rate limit {rate.text} exceeded"
            )
        bucket.tokens -= 1.0
        return decision

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
                return _deny(DEFAULT_DENY, f"unknown peer {_show(peer_id)}")
            peer = f"peers.{_key(peer_id)}"
            return _deny(DEFAULT_DENY, f"{peer} has no [{peer}.policy] table")
        decision = self._check_session(policy)
        if decision.allowed:
            self._sessions[peer_id] = self.sessions(peer_id) + 1
        return decision

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
            globs = ", ".join(_show(g) for g in policy.actions)
            return _deny(
                DEFAULT_DENY, f"action {_show(name)} matches none of {key}.actions: {globs}"
            )
        spec = self._actions.get(name)
        if spec is None:
            return _deny(DEFAULT_DENY, f"no action {_show(name)} is declared in [actions]")
        try:
            args = spec.bind(request.args)
        except _ArgError as exc:
            where = f"{spec.key}.args" + (f".{_key(exc.arg)}" if exc.arg else "")
            return _deny(where, str(exc))
        glob = policy.actions[index]
        return _allow(
            f"{key}.actions[{index}] {_show(glob)}",
            f"action {_show(name)} matches {_show(glob)}",
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
        for rule in policy.exec:
            why = rule.mismatch(argv)
            if why is None:
                return _allow(
                    f"{rule.rule} {_show(list(rule.pattern))}",
                    f"argv matches {_show(list(rule.pattern), 200)}",
                )
            if argv[0] == rule.command:
                misses.append(f"{rule.rule.rpartition('.')[2]}: {why}")
        shown = _show(argv, 120)
        if not policy.exec:
            return _deny(DEFAULT_DENY, f"{key} allows no commands")
        if not misses:
            return _deny(DEFAULT_DENY, f"the command {_show(argv[0])} is not in {key}")
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
            return _deny(DEFAULT_DENY, f"the path {_show(request.path)} is not absolute")
        if ".." in path.parts:
            return _deny(DEFAULT_DENY, f'the path {_show(request.path)} has a ".." component')
        best: tuple[int, FileRoot] | None = None
        for i, root in enumerate(policy.files):
            if path.is_relative_to(root.root) and (
                best is None or len(root.root.parts) > len(best[1].root.parts)
            ):
                best = (i, root)
        if best is None:
            if not policy.files:
                return _deny(DEFAULT_DENY, f"{key} gives no file roots")
            return _deny(DEFAULT_DENY, f"{_show(str(path))} is outside the roots in {key}")
        i, root = best
        rule = f"{key}[{i}] {_show(str(root.root))}"
        if request.write and not root.write:
            return _deny(rule, f"{_show(str(path))} is under a read-only root")
        mode = "write" if request.write else "read"
        return _allow(rule, f"{mode} {_show(str(path))} under {_show(str(root.root))}")

    def _check_forward(self, policy: PeerPolicy, request: ForwardRequest) -> Decision:
        key = f"{policy.key}.forward"
        port = request.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            return _deny(DEFAULT_DENY, f"port {_show(port)} is out of range (1-65535)")
        host = _norm_host(request.host)
        for i, target in enumerate(policy.forward):
            if target.host == host and target.port == port:
                return _allow(
                    f"{key}[{i}] {_show(target.text)}", f"forwarding to {_show(target.text)}"
                )
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not policy.forward:
            return _deny(DEFAULT_DENY, f"{key} allows no targets")
        return _deny(DEFAULT_DENY, f"{_show(shown)} is not in {key}")


# --------------------------------------------------------------------------- loading


class _Loader:
    """Validates the configuration's policy parts, raising ConfigError with key and line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, message, key=key, line=self.line(key))

    def line(self, key: str) -> int | None:
        """The line of ``key`` or, failing that, of its nearest parent."""
        if not self.text:
            return None
        parts = re.sub(r"\[\d+\]", "", key).split(".")
        while parts:
            line = line_of(self.text, ".".join(parts))
            if line is not None:
                return line
            parts.pop()
        return None

    def keys(self, key: str, table: Mapping[str, Any], allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for name in table:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f'; did you mean "{close[0]}"?' if close else ""
                raise self.error(
                    f"{key}.{_key(name)}",
                    f"unknown key{hint} (allowed: {', '.join(allowed)})",
                )

    def boolean(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def strings(self, key: str, value: object, what: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
            raise self.error(key, f"must be a list of {what}")
        return value

    def load(self, data: Mapping[str, Any]) -> Policy:
        actions = self.actions(data.get("actions", {}))
        peers_raw = data.get("peers", {})
        if not isinstance(peers_raw, Mapping):
            raise self.error("peers", "must be a table of [peers.NAME] tables")
        peers: dict[str, PeerPolicy | None] = {}
        for peer_id, table in peers_raw.items():
            raw = table.get("policy") if isinstance(table, Mapping) else None
            peers[peer_id] = None if raw is None else self.peer(peer_id, raw, actions)
        return Policy(actions, peers)

    # ---- [actions]

    def actions(self, raw: object) -> dict[str, ActionSpec]:
        if not isinstance(raw, Mapping):
            raise self.error("actions", 'must be a table of [actions."NAME"] tables')
        actions = {}
        for name, table in raw.items():
            key = f"actions.{_key(name)}"
            if not _NAME_RE.fullmatch(name):
                raise self.error(
                    key,
                    "an action name is 1-64 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit",
                )
            if not isinstance(table, Mapping):
                raise self.error(key, "must be a table")
            if (
                table
                and "argv" not in table
                and "args" not in table
                and all(isinstance(v, Mapping) for v in table.values())
            ):
                first = f"{name}.{next(iter(table))}"
                raise self.error(
                    f"{key}.{_key(next(iter(table)))}",
                    f'holds only tables: quote dotted action names, e.g. [actions."{first}"]',
                )
            args = self.arg_specs(key, table.get("args", {}))
            if "argv" in table:
                self.action_argv(f"{key}.argv", table["argv"], args)
            actions[name] = ActionSpec(name, args)
        return actions

    def action_argv(self, key: str, value: object, args: Mapping[str, ArgSpec]) -> None:
        argv = self.strings(key, value, "non-empty strings")
        if not argv:
            raise self.error(key, "must not be empty")
        for element in argv:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(element) if f is not None]
            except ValueError as exc:
                raise self.error(key, f"{_show(element)}: {exc} (write {{{{ for a brace)") from None
            for name in fields:
                if name not in args:
                    raise self.error(
                        key, f"the placeholder {{{name}}} names no argument declared in args"
                    )

    def arg_specs(self, key: str, raw: object) -> dict[str, ArgSpec]:
        key = f"{key}.args"
        if not isinstance(raw, Mapping):
            raise self.error(key, "must be a table of argument schemas")
        specs = {}
        for name, schema in raw.items():
            arg_key = f"{key}.{_key(name)}"
            if not _ARG_NAME_RE.fullmatch(name):
                raise self.error(arg_key, "an argument name is a Python-style identifier")
            if not isinstance(schema, Mapping):
                raise self.error(arg_key, 'must be a table such as { type = "int", max = 9 }')
            specs[name] = self.arg_spec(arg_key, name, schema)
        return specs

    def arg_spec(self, key: str, name: str, schema: Mapping[str, Any]) -> ArgSpec:
        kind = schema.get("type")
        if kind not in _ARG_KEYS:
            raise self.error(f"{key}.type", 'must be "int", "float", "bool" or "str"')
        self.keys(key, schema, _ARG_KEYS[kind])
        spec = ArgSpec(name, kind)
        if kind in ("int", "float"):
            bounds: dict[str, int | float] = {}
            for bound in ("min", "max"):
                value = schema.get(bound)
                if value is None:
                    continue
                bounds[bound] = self.number(f"{key}.{bound}", kind, value)
            low, high = bounds.get("min"), bounds.get("max")
            if low is not None and high is not None and low > high:
                raise self.error(f"{key}.max", f"is below min ({low})")
            spec = dataclasses.replace(spec, min=low, max=high)
        elif kind == "str":
            spec = self.str_spec(key, spec, schema)
        if "default" in schema:
            default = schema["default"]
            native = {"int": int, "float": int | float, "bool": bool, "str": str}[kind]
            if not isinstance(default, native) or (kind != "bool" and isinstance(default, bool)):
                raise self.error(f"{key}.default", f"must be of type {kind}")
            try:
                default = spec.coerce(default)
            except ValueError as exc:
                raise self.error(f"{key}.default", str(exc)) from None
            spec = dataclasses.replace(spec, default=default, required=False)
        return spec

    def number(self, key: str, kind: str, value: object) -> int | float:
        """``value`` as an ``int`` bound, or a finite ``float`` one."""
        if isinstance(value, int) and not isinstance(value, bool):
            if kind == "int":
                return value
            value = float(value) if abs(value) < 2**1023 else math.inf
        if kind == "float" and isinstance(value, float) and math.isfinite(value):
            return value
        raise self.error(key, f"must be {'an integer' if kind == 'int' else 'a finite number'}")

    def str_spec(self, key: str, spec: ArgSpec, schema: Mapping[str, Any]) -> ArgSpec:
        max_len = schema.get("max_len", DEFAULT_MAX_LEN)
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise self.error(f"{key}.max_len", "must be a positive integer")
        pattern = None
        if "pattern" in schema:
            if not isinstance(schema["pattern"], str):
                raise self.error(f"{key}.pattern", "must be a regular expression string")
            try:
                pattern = re.compile(schema["pattern"])
            except re.error as exc:
                raise self.error(f"{key}.pattern", f"invalid regular expression: {exc}") from None
        choices = None
        if "choices" in schema:
            raw = schema["choices"]
            if not isinstance(raw, list) or not raw or not all(isinstance(c, str) for c in raw):
                raise self.error(f"{key}.choices", "must be a non-empty list of strings")
            choices = tuple(raw)
        return dataclasses.replace(spec, max_len=max_len, pattern=pattern, choices=choices)

    # ---- [peers.NAME.policy]

    def peer(self, peer_id: str, raw: object, actions: Mapping[str, ActionSpec]) -> PeerPolicy:
        key = f"peers.{_key(peer_id)}.policy"
        if not isinstance(raw, Mapping):
            raise self.error(key, f"must be a table: [{key}]")
        self.keys(key, raw, _POLICY_KEYS)
        policy = PeerPolicy(peer_id)
        changes: dict[str, Any] = {}
        if "actions" in raw:
            changes["actions"] = self.action_globs(f"{key}.actions", raw["actions"], actions)
        if "exec" in raw:
            changes["exec"] = self.exec_rules(f"{key}.exec", raw["exec"])
        for flag in ("shell", "require_reason"):
            if flag in raw:
                changes[flag] = self.boolean(f"{key}.{flag}", raw[flag])
        if "when" in raw:
            changes["when"] = self.windows(f"{key}.when", raw["when"])
        if "expires" in raw:
            changes["expires"] = self.expires(f"{key}.expires", raw["expires"])
        if "rate" in raw:
            changes["rate"] = self.rate(f"{key}.rate", raw["rate"])
        if "max_sessions" in raw:
            value = raw["max_sessions"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.error(f"{key}.max_sessions", "must be an integer, 0 or more")
            changes["max_sessions"] = value
        if "files" in raw:
            changes["files"] = self.files(f"{key}.files", raw["files"])
        if "forward" in raw:
            changes["forward"] = self.forward(f"{key}.forward", raw["forward"])
        return dataclasses.replace(policy, **changes)

    def action_globs(
        self, key: str, value: object, actions: Mapping[str, ActionSpec]
    ) -> tuple[str, ...]:
        globs = self.strings(key, value, "action names or globs")
        for i, glob in enumerate(globs):
            if not _has_glob(glob) and glob not in actions:
                declared = ", ".join(actions) or "none"
                raise self.error(
                    f"{key}[{i}]", f"{_show(glob)} names no declared action (declared: {declared})"
                )
        return tuple(globs)

    def exec_rules(self, key: str, value: object) -> tuple[ExecRule, ...]:
        if not isinstance(value, list):
            raise self.error(key, 'must be a list of argv lists, e.g. [["uptime"]]')
        rules = []
        for i, entry in enumerate(value):
            if (
                not isinstance(entry, list)
                or not entry
                or not all(isinstance(a, str) for a in entry)
            ):
                raise self.error(f"{key}[{i}]", "must be a non-empty list of strings")
            if any("\x00" in a for a in entry):
                raise self.error(f"{key}[{i}]", "contains a NUL character")
            try:
                rules.append(ExecRule(tuple(entry), f"{key}[{i}]"))
            except ValueError as exc:
                raise self.error(f"{key}[{i}]", str(exc)) from None
        return tuple(rules)

    def windows(self, key: str, value: object) -> tuple[TimeWindow, ...]:
        if not isinstance(value, list) or not value:
            raise self.error(
                key, "must be a non-empty list of { days, from, to } tables (omit it for any time)"
            )
        windows = []
        for i, item in enumerate(value):
            item_key = f"{key}[{i}]"
            if not isinstance(item, Mapping):
                raise self.error(item_key, 'must be a table like { from = "07:00", to = "22:00" }')
            self.keys(item_key, item, ("days", "from", "to"))
            days = frozenset(range(7))
            if "days" in item:
                names = item["days"]
                if (
                    not isinstance(names, list)
                    or not names
                    or not all(isinstance(d, str) and d.lower() in _DAYS for d in names)
                ):
                    raise self.error(
                        f"{item_key}.days", f"must be a non-empty list of {', '.join(_DAYS)}"
                    )
                days = frozenset(_DAYS.index(d.lower()) for d in names)
            start = self.minute(f"{item_key}.from", item.get("from", "00:00"))
            end = self.minute(f"{item_key}.to", item.get("to", "23:59"))
            if start == end:
                raise self.error(
                    f"{item_key}.to", "equals from; omit from and to for the whole day"
                )
            windows.append(TimeWindow(days, start, end))
        return tuple(windows)

    def minute(self, key: str, value: object) -> int:
        if isinstance(value, time) and not (value.second or value.microsecond or value.tzinfo):
            return value.hour * 60 + value.minute
        if isinstance(value, str) and (m := _HHMM_RE.fullmatch(value.strip())):
            return int(m[1]) * 60 + int(m[2])
        hint = ' (use "23:59" for the end of the day)' if value == "24:00" else ""
        raise self.error(key, f'must be a time "HH:MM" from "00:00" to "23:59"{hint}')

    def expires(self, key: str, value: object) -> datetime:
        if isinstance(value, datetime):
            return value
        if isinstance(value, date):
            return datetime.combine(value, time())
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.strip())
            except ValueError:
                pass
        raise self.error(key, "must be a TOML datetime such as 2027-01-01T00:00:00Z")

    def rate(self, key: str, value: object) -> RateLimit:
        m = _RATE_RE.fullmatch(value.lower()) if isinstance(value, str) else None
        if m is None or m[2] not in _PERIODS or int(m[1]) < 1:
            raise self.error(key, 'must be "N/sec", "N/min" or "N/hour" with N at least 1')
        assert isinstance(value, str)
        return RateLimit(int(m[1]), _PERIODS[m[2]], value.strip())

    def files(self, key: str, value: object) -> tuple[FileRoot, ...]:
        if not isinstance(value, list):
            raise self.error(key, 'must be a list of { root = "/path", write = false } tables')
        roots: list[FileRoot] = []
        for i, item in enumerate(value):
            item_key = f"{key}[{i}]"
            if not isinstance(item, Mapping):
                raise self.error(item_key, 'must be a table like { root = "/srv/share" }')
            self.keys(item_key, item, ("root", "write"))
            root = item.get("root")
            if not isinstance(root, str) or "\x00" in root or not PurePath(root).is_absolute():
                raise self.error(f"{item_key}.root", "must be an absolute path")
            if ".." in PurePath(root).parts:
                raise self.error(f"{item_key}.root", 'must not have ".." components')
            path = PurePath(root)
            if any(r.root == path for r in roots):
                raise self.error(f"{item_key}.root", f"{_show(root)} is listed twice")
            write = self.boolean(f"{item_key}.write", item.get("write", False))
            roots.append(FileRoot(path, write))
        return tuple(roots)

    def forward(self, key: str, value: object) -> tuple[ForwardTarget, ...]:
        targets = []
        for i, text in enumerate(self.strings(key, value, '"host:port" strings')):
            try:
                host, port = parse_target(text)
            except ValueError as exc:
                raise self.error(f"{key}[{i}]", str(exc)) from None
            targets.append(ForwardTarget(host, port, text))
        return tuple(targets)
