"""Policy model: the requests a peer makes, the Decision, and the validated rule specs.

The configuration these types come from is described in :mod:`pstp.daemon.policy`;
loading lives in :mod:`pstp.daemon.policy.load`, judging in :mod:`pstp.daemon.policy.check`.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePath
from typing import Literal, TypeAlias

__all__ = [
    "DEFAULT_DENY",
    "DEFAULT_MAX_LEN",
    "MAX_REASON",
    "ActionRequest",
    "ActionSpec",
    "ArgError",
    "ArgSpec",
    "ArgType",
    "ArgValue",
    "Decision",
    "ExecRequest",
    "ExecRule",
    "FileRequest",
    "FileRoot",
    "ForwardRequest",
    "ForwardTarget",
    "ListenRequest",
    "PeerPolicy",
    "RateLimit",
    "Request",
    "SessionRequest",
    "ShellRequest",
    "TimeWindow",
    "has_glob",
    "norm_host",
    "parse_pattern",
    "parse_target",
    "path_pattern_dir",
    "show_value",
    "toml_key",
]


#: Longest reason a request may carry (it is written to the audit log).
MAX_REASON = 200
#: Length cap of a ``str`` argument whose schema gives no ``max_len``: bounded by default.
DEFAULT_MAX_LEN = 1024
#: The rule of every decision no configured rule made.
DEFAULT_DENY = "default deny"

ArgValue: TypeAlias = int | float | bool | str
ArgType: TypeAlias = Literal["int", "float", "bool", "str"]

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_INT_RE = re.compile(r"[+-]?[0-9]{1,100}")
_GLOB_CHARS = frozenset("*?[")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

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


@dataclass(frozen=True, slots=True)
class ListenRequest:
    """Listen on ``host:port`` on the device for the peer (``pstp forward -R``).

    Attributes:
        host: the IP address to listen on.
        port: the TCP port (0: any free port).
        reason: why ("" for none).
    """

    host: str
    port: int
    reason: str = ""


Request: TypeAlias = (
    ActionRequest
    | ExecRequest
    | ShellRequest
    | SessionRequest
    | FileRequest
    | ForwardRequest
    | ListenRequest
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
        argv: for an allowed exec, the argv to run: the request's, with each
            argument a path pattern matched replaced by its resolved path (so
            what was checked is what runs); ``None`` otherwise.
    """

    allowed: bool
    rule: str
    reason: str
    args: dict[str, ArgValue] = field(default_factory=dict)
    argv: tuple[str, ...] | None = None

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


# --------------------------------------------------------------------------- rules


def show_value(value: object, limit: int = 60) -> str:
    """A value for a message: JSON-quoted (control characters escaped), cut to ``limit``."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[: limit - 4] + '..."'


def toml_key(name: str) -> str:
    """``name`` as a TOML key segment: bare when it can be, quoted otherwise."""
    return name if _BARE_KEY_RE.fullmatch(name) else json.dumps(name)


class ArgError(ValueError):
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
        allow_dash: whether a peer's string may start with ``-`` where it begins
            an argv element (strings only; otherwise it is refused, as it would
            be read as an option).
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
    allow_dash: bool = False

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
                raise ValueError(f"expected a string, got {show_value(value)}")
            return self._check_str(value)
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError(f"expected true or false, got {show_value(value)}")
        if isinstance(value, bool):
            raise ValueError(
                f"expected {'an integer' if self.type == 'int' else 'a number'}, "
                f"got {show_value(value)}"
            )
        if self.type == "int":
            if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
                result = int(value.strip())
            elif isinstance(value, int):
                result = value
            else:
                raise ValueError(f"expected an integer, got {show_value(value)}")
        else:
            try:
                if not isinstance(value, int | float | str):
                    raise TypeError
                result = float(value)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"expected a number, got {show_value(value)}") from None
            if not math.isfinite(result):
                raise ValueError(f"expected a finite number, got {show_value(value)}")
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
            allowed = ", ".join(show_value(c) for c in self.choices)
            raise ValueError(f"{show_value(value)} is not one of {allowed}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise ValueError(
                f"{show_value(value)} does not match the pattern {show_value(self.pattern.pattern)}"
            )
        return value


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """A declared action, as far as policy needs it: its name and argument schemas.

    Attributes:
        name: the action's name.
        args: argument schemas by name.
        leading: for each ``argv`` element that starts with a placeholder, the
            names of the placeholders that may begin it: the first one, and
            each next one its predecessor is directly followed by (an empty
            string leaves the next value at the start).
    """

    name: str
    args: Mapping[str, ArgSpec] = field(default_factory=dict)
    leading: tuple[tuple[str, ...], ...] = ()

    @property
    def key(self) -> str:
        """The action's config key, e.g. ``actions."kettle.on"``."""
        return f"actions.{toml_key(self.name)}"

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
            raise ArgError(
                None, f"unknown argument {show_value(unknown[0])} ({self.name} takes: {takes})"
            )
        bound: dict[str, ArgValue] = {}
        for name, spec in self.args.items():
            if name in values:
                try:
                    bound[name] = spec.coerce(values[name])
                except ValueError as exc:
                    raise ArgError(name, f"{name}: {exc}") from None
            elif spec.required:
                raise ArgError(name, f"missing required argument {show_value(name)}")
            else:
                assert spec.default is not None
                bound[name] = spec.default
        self._check_options(values, bound)
        return bound

    def _check_options(self, given: Mapping[str, object], bound: Mapping[str, ArgValue]) -> None:
        """Refuse a peer's string that would begin an argv element with ``-``.

        Such a value would be read as an option by the program (``sort -o FILE``).
        A default is the owner's own choice and is not judged.

        Raises:
            ArgError: the first such argument whose schema lacks ``allow_dash``.
        """
        for run in self.leading:
            for name in run:
                value = bound.get(name)
                if not isinstance(value, str):
                    break  # a number or boolean is never empty: it begins the element
                if value == "":
                    continue  # the next placeholder's value begins the element
                if value.startswith("-") and name in given and not self.args[name].allow_dash:
                    raise ArgError(
                        name,
                        f'argument {show_value(name)} starts with "-" and would be read as '
                        f"an option (its schema does not set allow_dash = true)",
                    )
                break


def has_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def path_pattern_dir(pattern: str) -> str | None:
    """The fixed directory of a path pattern, or None if ``pattern`` is not one.

    A path pattern is an absolute path holding a glob character
    (``"/srv/share/*"``, ``"/var/log/*.log"``); its fixed directory is the
    part before the first glob character, up to its last ``/`` (``/srv/share``,
    ``/var/log``; ``/`` for ``"/*"``).
    """
    if not pattern.startswith("/") or not has_glob(pattern):
        return None
    first = min(pattern.index(c) for c in _GLOB_CHARS if c in pattern)
    return pattern[:first].rpartition("/")[0] or "/"


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
    _dirs: tuple[str | None, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        if not self.pattern or not self.pattern[0] or has_glob(self.pattern[0]):
            raise ValueError("the command (element 0) must be a literal, non-empty string")
        if "**" in self.pattern[:-1]:
            raise ValueError('"**" may only be the last element')
        regexes = tuple(
            re.compile(fnmatch.translate(p)) if has_glob(p) else None for p in self.fixed
        )
        object.__setattr__(self, "_regexes", regexes)
        object.__setattr__(self, "_dirs", tuple(path_pattern_dir(p) for p in self.fixed))

    @property
    def path_patterns(self) -> tuple[tuple[int, str, str], ...]:
        """``(index, pattern, fixed directory)`` of each path pattern, resolved when matched."""
        return tuple(
            (i, self.fixed[i], d) for i, d in enumerate(self._dirs) if i > 0 and d is not None
        )

    def confine(self, argv: Sequence[str]) -> tuple[str, ...]:
        """Resolve the arguments this entry's path patterns matched, on this device.

        Call it once :meth:`mismatch` is None.  Each argument matched by a path
        pattern is resolved with :func:`os.path.realpath` (symbolic links
        followed, ``.`` and ``..`` removed); it must lie under the real path of
        the pattern's fixed directory, and the pattern must still match it when
        spelled under that directory.

        Args:
            argv: the requested command line, matched by :meth:`mismatch`.

        Returns:
            The argv to run: resolved paths in place of those arguments.

        Raises:
            ValueError: an argument leaves its pattern once resolved (the
                message does not show where it leads).
        """
        out = list(argv)
        for i, pat, base in self.path_patterns:
            if i >= len(argv):
                break
            arg, regex = argv[i], self._regexes[i]
            assert regex is not None
            try:
                real, real_base = os.path.realpath(arg), os.path.realpath(base)
            except (OSError, ValueError):
                raise ValueError(f"argument {i} {show_value(arg)} cannot be resolved") from None
            inside = real == real_base or real.startswith(real_base.rstrip("/") + "/")
            rel = os.path.relpath(real, real_base) if inside else ""
            spelled = base if rel == "." else os.path.join(base, rel)
            if not inside or not regex.match(spelled):
                verb = "leaves" if not inside else "no longer matches"
                raise ValueError(
                    f"argument {i} {verb} {show_value(pat)} once symbolic links are "
                    f"resolved: {show_value(arg)}"
                )
            out[i] = real
        return tuple(out)

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
            return f"the command is not {show_value(self.command)}"
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
                        return f"argument {i} {show_value(arg)} is not {show_value(pat)}"
                    continue
                if not regex.match(arg):
                    return f"argument {i} {show_value(arg)} does not match {show_value(pat)}"
            else:
                pat = "**"
            if arg.startswith("-") and not pat.startswith("-"):
                return (
                    f"argument {i} {show_value(arg)} looks like an option, and the wildcard "
                    f"{show_value(pat)} matches no options"
                )
            if ".." in arg.split("/"):
                return (
                    f'argument {i} {show_value(arg)} has a ".." component, which the wildcard '
                    f"{show_value(pat)} never matches"
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
    """A ``HOST:PORT`` pattern the peer may forward to (or, for ``forward_listen``,
    an ``ADDR:PORT`` it may ask the device to listen on).

    HOST is a name, an fnmatch glob over names (``*.lan``), an IP address or a
    CIDR range (``192.168.1.0/24``, ``[2001:db8::/32]``: it matches targets given
    as IP addresses); PORT is a port, a range ``N-M`` or ``*``.

    Attributes:
        host: the host or pattern, normalised (lower case, IPs canonical).
        port: the lowest port allowed.
        text: the configured text.
        last: the highest port allowed (``port`` for a single port).
        net: the CIDR range, if HOST is one.
    """

    host: str
    port: int
    text: str
    last: int = 0
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    def matches(self, host: str, port: int) -> bool:
        """Whether ``host`` (normalised) and ``port`` fall under this pattern."""
        if not self.port <= port <= max(self.port, self.last):
            return False
        if self.net is not None:
            try:
                return ipaddress.ip_address(host) in self.net
            except ValueError:
                return False  # a name is not in a range: name it in a rule of its own
        if has_glob(self.host):
            return fnmatch.fnmatchcase(host, self.host)
        return host == self.host


def parse_pattern(text: str, *, listen: bool = False) -> ForwardTarget:
    """Read a ``forward`` pattern (or, with ``listen``, a ``forward_listen`` one).

    ``forward``: ``HOST:PORT`` (see :class:`ForwardTarget`).  ``forward_listen``:
    ``[ADDR:]PORT`` with ADDR an IP address (default ``127.0.0.1``, this device
    only) and PORT a port, a range or ``*``.

    Raises:
        ValueError: not a valid pattern, with what to write.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, ports = text[1:].partition("]:")
    elif listen and ":" not in text:
        host, sep, ports = "127.0.0.1", ":", text
    else:
        host, sep, ports = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"{show_value(text)}: write IPv6 addresses as [ADDR]:PORT")
    if not sep or not host or not ports:
        raise ValueError(f"{show_value(text)} is not HOST:PORT")
    first, dash, last = ports.partition("-")
    if ports == "*":
        low, high = 1 if not listen else 0, 65535
    elif all(p.isascii() and p.isdigit() and len(p) <= 5 for p in (first, *([last] * bool(dash)))):
        low, high = int(first), int(last) if dash else int(first)
        if not (0 if listen else 1) <= low <= high <= 65535:
            lowest = 0 if listen else 1
            raise ValueError(f"{show_value(text)}: ports are {lowest}-65535, low to high")
    else:
        raise ValueError(f"{show_value(text)}: PORT is a port, a range N-M or *")
    net = None
    if "/" in host:
        try:
            net = ipaddress.ip_network(host, strict=False)
        except ValueError:
            bad = f"{show_value(text)}: {show_value(host)} is not a CIDR range"
            raise ValueError(bad) from None
        host = str(net)
    else:
        host = norm_host(host)
    if listen and net is None:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{show_value(text)}: listen on an IP address") from None
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{show_value(text)} has an invalid host")
    return ForwardTarget(host, low, text, high, net)


def norm_host(host: str) -> str:
    """A forward host as the policy judges it and the device connects to it.

    Lower case, without brackets or a final dot; an IP address in canonical
    form, an IPv4-mapped IPv6 address as the IPv4 address it stands for (so a
    rule for IPv6 ranges never reaches IPv4 hosts through it).
    """
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.rstrip(".")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


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
        raise ValueError(
            f"{show_value(text)} is not HOST:PORT (write IPv6 addresses as [ADDR]:PORT)"
        )
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"{show_value(text)} is not HOST:PORT")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is out of range (1-65535)")
    norm = norm_host(host)
    if not norm or has_glob(norm) or any(c.isspace() or c == "/" for c in norm):
        raise ValueError(f"{show_value(text)} has an invalid host")
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
        forward_listen: where the peer may ask the device to listen (``-R``).
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
    forward_listen: tuple[ForwardTarget, ...] = ()

    @property
    def key(self) -> str:
        """The table's config key, e.g. ``peers.phone.policy``."""
        return f"peers.{toml_key(self.peer_id)}.policy"
