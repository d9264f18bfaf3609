"""The node's configuration file: who this device is, where it listens, whom it trusts.

TOML (``pstp.toml`` in the platform config directory; ``--config`` or
``PSTP_CONFIG`` override it; ``MainConf.conf`` is accepted as a name for the
same format).  The file holds pair keys, so it must not be readable by group
or others (as ssh insists for private keys).  Reading uses the stdlib's
tomllib; writing goes through tomlkit so a person's comments and layout
survive ``pstp device add`` and ``pstp pair``.

Example::

    [device]
    id = "home"
    listen = ["0.0.0.0:9000"]

    [peers.phone]
    key = "9f2c...64 hex digits..."      # the 32-byte pair key
    address = "192.168.1.20:9000"        # last address that worked (optional)
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from pstp import address as channel
from pstp.address import DEFAULT_PORT, Address, check_host
from pstp.exceptions import PstpError

if TYPE_CHECKING:
    from pstp.asyncio.mqtt import BrokerOptions

__all__ = [
    "ALT_CONFIG_NAME",
    "CONFIG_NAME",
    "CONTROL_NAME",
    "DEFAULT_PORT",
    "SCHEMA",
    "ConfigError",
    "Key",
    "PeerSettings",
    "Settings",
    "Table",
    "add_peer",
    "check_address",
    "check_channel",
    "check_host",
    "check_keys",
    "config_path",
    "control_path",
    "create",
    "format_address",
    "line_of",
    "load",
    "parse_address",
    "peer_uid",
    "reject_unknown_keys",
    "remove_peer",
    "schema_table",
    "set_peer_address",
    "split_key",
    "suggest",
    "toml_key",
    "write_private",
]

CONFIG_NAME = "pstp.toml"
#: The seed project's name for the same file; accepted when given or found in the cwd.
ALT_CONFIG_NAME = "MainConf.conf"
#: The PSTP/2 service port, TCP and UDP (docs/protocol.md §8).
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(PstpError):
    """The configuration file is missing, unsafe or invalid.

    Args:
        path: the file.
        message: what is wrong.
        key: the dotted key concerned, if any.
        line: the 1-based line, if known.
    """

    def __init__(
        self, path: Path | str, message: str, *, key: str | None = None, line: int | None = None
    ) -> None:
        self.path = Path(path)
        self.key = key
        self.line = line
        where = str(path) + (f":{line}" if line else "") + (f": {key}" if key else "")
        super().__init__(f"{where}: {message}")


class PeerSettings(msgspec.Struct, frozen=True):
    """A trusted peer.

    Attributes:
        id: its device id.
        key: the 32-byte pair key (never printed).
        address: the channel address that last worked (``host:port``, ``ws://``,
            ``wss://``), tried first.
        table: the peer's whole TOML table, for sections added later (policy).
        ca_file: the CA certificates (PEM) that a ``wss://`` address of this
            peer is verified against instead of the system's trust store.
        device: the device id the peer proves, when it differs from the name
            it has here (a token imported under a name of one's choosing).
        token: the id of the token ``key`` holds (§20), or None for a pair key.
        via: further channel addresses of the peer (a proxy's ``wss://``, a
            broker's ``mqtt://``), tried by the reach ladder.
        reach: the order of the ladder's steps (:data:`REACH_STEPS`).
    """

    id: str
    key: bytes
    address: str | None = None
    table: dict[str, Any] = msgspec.field(default_factory=dict)
    ca_file: str | None = None
    device: str | None = None
    token: str | None = None
    via: tuple[str, ...] = ()
    reach: tuple[str, ...] = ("direct", "lan", "websocket", "mqtt")

    def __repr__(self) -> str:  # never the key
        return f"PeerSettings(id={self.id!r}, address={self.address!r})"

    @property
    def device_id(self) -> str:
        """The device id to expect in the handshake: ``device``, else the name."""
        return self.device or self.id


class BrokerSettings(msgspec.Struct, frozen=True):
    """How to log in to one MQTT broker (``[brokers."HOST"]``).

    Attributes:
        host: the broker's host, as its ``mqtt://`` addresses write it.
        username: the MQTT user name, if any.
        password_file: a file holding the password alone (readable by its owner only).
        ca_file: CA certificates (PEM) an ``mqtts://`` broker is verified against.
        cert_file: a client certificate (PEM) to present, with ``key_file``.
        key_file: its private key (PEM).
    """

    host: str
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class Settings(msgspec.Struct, frozen=True):
    """A loaded configuration.

    Attributes:
        path: the file it came from.
        device_id: this node's device id.
        listen: ``(host, port)`` pairs to serve on (TCP, and UDP for discovery).
        discovery: answer discovery PINGs.
        stealth: answer only PINGs proving a pair key.
        peers: trusted peers by id.
        data: the whole parsed document, for sections added later.
        websocket: ``ws://`` addresses to serve WebSocket on (docs/protocol.md §19.2).
        advertise: the addresses peers are told to reach this device at (a reverse
            proxy's public ``wss://`` among them).
        mqtt: ``mqtt://`` and ``mqtts://`` brokers to serve through (§19.3).
        brokers: log-in settings by broker host.
    """

    path: Path
    device_id: str
    listen: tuple[tuple[str, int], ...]
    discovery: bool
    stealth: bool
    peers: dict[str, PeerSettings]
    data: dict[str, Any]
    websocket: tuple[Address, ...] = ()
    advertise: tuple[Address, ...] = ()
    mqtt: tuple[Address, ...] = ()
    brokers: dict[str, BrokerSettings] = msgspec.field(default_factory=dict)

    def __repr__(self) -> str:  # the peers' keys stay out of logs
        return (
            f"Settings(path={str(self.path)!r}, device_id={self.device_id!r}, "
            f"listen={self.listen!r}, peers={sorted(self.peers)!r})"
        )


#: The control socket's name beside the configuration (pstp.daemon.control).
CONTROL_NAME = "pstp.sock"
# Unix socket paths are limited to 108 bytes (sun_path) on Linux.
_MAX_SOCKET_PATH = 100


def control_path(settings: Settings) -> Path:
    """Where ``pstp serve`` for this configuration listens for local commands.

    ``pstp.sock`` beside the configuration; if that path is too long for a
    Unix socket, a name derived from the configuration's path in the
    temporary directory (both ends check the other's user id, so a file
    planted there by another user gains nothing).
    """
    path = settings.path.parent / CONTROL_NAME
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return path
    import hashlib
    import tempfile

    tag = hashlib.sha256(os.fsencode(settings.path.resolve())).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"pstp-{os.getuid()}-{tag}.sock"


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (``SO_PEERCRED``).

    Both ends of the control socket check it: the daemon serves only its own
    user and root, and a client talks only to a daemon run by itself or root.
    """
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the configuration lives: ``explicit``, else $PSTP_CONFIG, else the default.

    The default is ``pstp.toml`` in the platform's user config directory, unless
    only a ``MainConf.conf`` exists in the current directory.
    """
    if explicit:
        return Path(explicit)
    env = os.environ.get("PSTP_CONFIG")
    if env:
        return Path(env)
    from platformdirs import user_config_path

    default = user_config_path("pstp") / CONFIG_NAME
    alt = Path.cwd() / ALT_CONFIG_NAME
    if not default.exists() and alt.exists():
        return alt
    return default


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """The host and port of a channel address (``host[:port]``, ``[v6]:port``, a URL).

    Raises:
        ValueError: not a valid address.
    """
    found = channel.parse(text.strip(), default_port=default_port)
    return found.host, found.port


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets so :func:`parse_address` reads it back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_QUOTED_KEY_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')
_INDEX_RE = re.compile(r"\[\d+\]")


def toml_key(name: str) -> str:
    """``name`` as one TOML key segment: bare when it can be, quoted otherwise."""
    return name if _BARE_KEY_RE.fullmatch(name) else json.dumps(name)


def _read_key(text: str, start: int = 0) -> tuple[list[str], int] | None:
    """The dotted TOML key at ``text[start:]`` (after blanks) and the index after it."""
    parts: list[str] = []
    i = start
    while True:
        while i < len(text) and text[i] in " \t":
            i += 1
        m = _QUOTED_KEY_RE.match(text, i) or _BARE_KEY_RE.match(text, i)
        if m is None:
            return None
        token = m[0]
        if token[0] == '"':
            try:
                token = json.loads(token)
            except ValueError:
                return None
        elif token[0] == "'":
            token = token[1:-1]
        parts.append(token)
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == ".":
            i += 1
            continue
        return parts, i


def split_key(key: str) -> list[str]:
    """A dotted key as written in messages (``actions."a.b".args``) split into its names.

    Array indexes (``when[0]``) are dropped: a line is found for the array.
    """
    found = _read_key(_INDEX_RE.sub("", key))
    return found[0] if found else key.split(".")


def _exact_line_of(lines: list[str], parts: list[str]) -> int | None:
    table: list[str] = []
    in_string = False
    for n, line in enumerate(lines, 1):
        inside = in_string  # this line continues a multi-line string
        if line.count('"""') % 2 or line.count("'''") % 2:
            in_string = not in_string
        if inside:
            continue
        stripped = line.lstrip()
        if stripped.startswith("["):
            found = _read_key(stripped, 2 if stripped.startswith("[[") else 1)
            if found is None:
                continue
            table = found[0]
            if table[: len(parts)] == parts:  # its own header, or the first below it
                return n
            continue
        found = _read_key(line)
        if found is None or not line[found[1] :].startswith("="):
            continue
        full = table + found[0]
        if full[: len(parts)] == parts:  # its assignment, or a dotted key below it
            return n
    return None


def line_of(text: str, key: str) -> int | None:
    """Best-effort 1-based line of a dotted key, else of its nearest enclosing key.

    The key's own table header (``[peers.phone]``, or the first header of a table
    under it such as ``[action."lights.on"]`` for ``action``) or its assignment
    (also as a dotted key, ``policy.shell = true``).  A key inside an inline
    table or an array (``peers.phone.policy.when[0].days``) gives the line of
    the nearest key that has one of its own (``when = ...``).  None: not found.
    """
    lines = text.splitlines()
    parts = split_key(key)
    while parts:
        line = _exact_line_of(lines, parts)
        if line is not None:
            return line
        parts.pop()
    return None


# --------------------------------------------------------------------------- schema


class Key(msgspec.Struct, frozen=True):
    """One configuration key, as the checks allow it and docs/configuration.md shows it.

    Attributes:
        name: the key.
        type: its TOML type, in words.
        default: the default cell of the documentation: a TOML value in
            backticks (what the code uses when the key is absent), or words
            (``required``, ``none`` ...).
        help: what it means.
        holds: the schema table its value follows, if it is a table, or a
            table of tables, or an array of tables (see ``shape``).
        shape: ``"table"``: the value is one such table; ``"map"``: a table
            whose every value is one (``[peers.NAME]``); ``"array"``: an
            array of them.
    """

    name: str
    type: str
    default: str
    help: str
    holds: str | None = None
    shape: str = "table"


class Table(msgspec.Struct, frozen=True):
    """A table of the configuration and the keys it may hold.

    Attributes:
        name: its pattern (``peers.NAME.policy``; ``""`` is the top level).
        heading: how docs/configuration.md titles it.
        keys: the keys it may hold, in documentation order.
    """

    name: str
    heading: str
    keys: tuple[Key, ...]

    def names(self) -> tuple[str, ...]:
        """The names of its keys."""
        return tuple(k.name for k in self.keys)


def _default_listen() -> str:
    return f'`["0.0.0.0:{DEFAULT_PORT}"]`'


#: Every table of the configuration and every key it may hold: the single source
#: for the unknown-key check (:func:`check_keys`), the policy loader's key lists and
#: docs/configuration.md (tests/test_configuration_doc.py compares them both ways).
SCHEMA: tuple[Table, ...] = (
    Table(
        "",
        "Top level",
        (
            Key("device", "table", "required", "This device: see `[device]`.", "device"),
            Key(
                "peers",
                "table of tables",
                "none",
                "The devices this one trusts, one `[peers.NAME]` table each.",
                "peers.NAME",
                "map",
            ),
            Key(
                "actions",
                "table of tables",
                "none",
                'The actions this device offers, one `[actions."NAME"]` table each.',
                'actions."NAME"',
                "map",
            ),
            Key("audit", "table", "none", "Where the audit log lives: see `[audit]`.", "audit"),
            Key(
                "brokers",
                "table of tables",
                "none",
                'How to log in to MQTT brokers, one `[brokers."HOST"]` table each.',
                'brokers."HOST"',
                "map",
            ),
        ),
    ),
    Table(
        "device",
        "`[device]`",
        (
            Key(
                "id",
                "string",
                "required",
                "This device's id: 1-64 letters, digits, `.`, `_` or `-`, starting with a "
                "letter or digit. Peers know it by this name.",
            ),
            Key(
                "listen",
                "array of strings",
                _default_listen(),
                'Channel addresses to serve on. `"HOST:PORT"` (or `"tcp://HOST:PORT"`): TCP '
                "for sessions, UDP on the same port for discovery; HOST is an IP address "
                '(`0.0.0.0` every IPv4 interface, `"[::]:9000"` every IPv6 one) or a host '
                f"name, PORT defaults to {DEFAULT_PORT}, a bare port is refused. "
                '`"ws://HOST:PORT/PATH"`: WebSocket on that HTTP path, for a TLS reverse '
                'proxy in front (docs/howto/outside.md). `"mqtt://BROKER[:PORT][/PREFIX]"` '
                '(or `"mqtts://"`): connect out to that broker and serve through it, for a '
                'device behind NAT (log-in settings in `[brokers."HOST"]`). At least one '
                "TCP address.",
            ),
            Key(
                "advertise",
                "array of strings",
                "`[]`",
                "Channel addresses peers are told to reach this device at, as seen from "
                'outside: a reverse proxy\'s `"wss://home.example.org/pstp"`, a '
                'forwarded `"HOST:PORT"`.',
            ),
            Key("discovery", "boolean", "`true`", "Answer discovery PINGs on the LAN."),
            Key(
                "stealth",
                "boolean",
                "`false`",
                "Answer only discovery PINGs that prove a pair key: the device stays silent "
                "to everyone else.",
            ),
        ),
    ),
    Table(
        "peers.NAME",
        "`[peers.NAME]`",
        (
            Key(
                "key",
                "string",
                "required",
                "The 32-byte pair key as 64 hex digits (written by `pstp pair` or "
                "`pstp device add`; never printed).",
            ),
            Key(
                "address",
                "string",
                "none",
                'The channel address that last worked for this peer, tried first: `"HOST:PORT"` '
                f'(TCP, PORT defaults to {DEFAULT_PORT}), `"ws://HOST:PORT/PATH"` or '
                '`"wss://HOST/PATH"` (written by the client; may be set by hand).',
            ),
            Key(
                "device",
                "string",
                "none (the peer's name)",
                "The device id this peer proves in the handshake, when it differs from "
                "the name it has here (written by `pstp token import`).",
            ),
            Key(
                "token",
                "string",
                "none (`key` is a pair key)",
                "The id of the token whose secret `key` holds (written by "
                "`pstp token import`; the device lists and revokes it by this id).",
            ),
            Key(
                "via",
                "array of strings",
                "`[]`",
                'More channel addresses of this peer, for when `address` fails: `"wss://'
                'home.example.org/pstp"`, `"mqtt://broker.example.net"` (written by '
                "`pstp token import`; may be set by hand).",
            ),
            Key(
                "reach",
                "array of strings",
                '`["direct", "lan", "websocket", "mqtt"]`',
                "The order in which the client tries its ways to this peer: `direct` (the "
                "remembered `address` and TCP addresses in `via`), `lan` (discovery), "
                "`websocket` and `mqtt` (those addresses in `via`). Leave one out to skip it.",
            ),
            Key(
                "ca_file",
                "string",
                "none (the system's trust store)",
                "A PEM file of CA certificates that this peer's `wss://` address is verified "
                "against, for a proxy whose certificate comes from your own CA.",
            ),
            Key(
                "policy",
                "table",
                "none (the peer may do nothing, not even open a session)",
                "What the peer may do on this device: see `[peers.NAME.policy]`. "
                "Pairing writes an empty one (sessions and `ping` only).",
                "peers.NAME.policy",
            ),
        ),
    ),
    Table(
        "peers.NAME.policy",
        "`[peers.NAME.policy]`",
        (
            Key(
                "actions",
                "array of strings",
                "`[]`",
                'Action names or fnmatch globs (`"lights.*"`) the peer may run; a name '
                "without a glob must name a declared action.",
            ),
            Key(
                "exec",
                "array of arrays of strings",
                "`[]`",
                'The argv allow-list for `pstp exec`: `[["uptime"], ["systemctl", "status", '
                '"*"]]`, matched word by word (`"**"` last matches any rest).',
            ),
            Key("shell", "boolean", "`false`", "Allow an interactive shell (`pstp shell`)."),
            Key(
                "when",
                "array of tables",
                "none (any time)",
                "Time windows, any of which must hold: see `[[peers.NAME.policy.when]]`. "
                "An empty list is an error.",
                "peers.NAME.policy.when",
                "array",
            ),
            Key(
                "expires",
                "datetime",
                "none (never)",
                "From this instant on everything is denied: a TOML datetime, a date (local "
                "midnight) or an ISO 8601 string.",
            ),
            Key(
                "require_reason",
                "boolean",
                "`false`",
                "Every request but opening a session must carry a reason (`--reason`).",
            ),
            Key(
                "rate",
                "string",
                "none (no limit)",
                '`"N/sec"`, `"N/min"` or `"N/hour"`: a token bucket every request spends '
                "from, allowed or refused.",
            ),
            Key(
                "max_sessions",
                "integer",
                "none (no limit)",
                "Concurrent sessions of this peer (0 or more).",
            ),
            Key(
                "files",
                "array of tables",
                "`[]`",
                "The directories `pstp put` and `pstp get` may reach: see "
                "`[[peers.NAME.policy.files]]`.",
                "peers.NAME.policy.files",
                "array",
            ),
            Key(
                "forward",
                "array of strings",
                "`[]`",
                '`"HOST:PORT"` targets the peer may forward to (`pstp forward`): HOST a '
                'name, a glob (`"*.lan:80"`), an IP address or a CIDR range '
                '(`"192.168.1.0/24:554"`, `"[2001:db8::/32]:*"`; it matches targets given as '
                'addresses), PORT a port, a range `"8000-8099"` or `"*"`.',
            ),
            Key(
                "forward_listen",
                "array of strings",
                "`[]`",
                "Where the peer may ask this device to listen for it (`pstp forward -R`): "
                '`"[ADDR:]PORT"`, ADDR an IP address (default `127.0.0.1`, this device '
                'only), PORT a port, a range or `"*"` (0, any free port, only if allowed).',
            ),
        ),
    ),
    Table(
        "peers.NAME.policy.when",
        "`[[peers.NAME.policy.when]]`",
        (
            Key(
                "days",
                "array of strings",
                "all seven",
                "The days a window starts on: `mon` ... `sun`.",
            ),
            Key("from", "string or local time", '`"00:00"`', 'Start, `"HH:MM"`, inclusive.'),
            Key(
                "to",
                "string or local time",
                '`"23:59"`',
                'End, `"HH:MM"`, inclusive to the end of that minute; before `from` means '
                "overnight.",
            ),
        ),
    ),
    Table(
        "peers.NAME.policy.files",
        "`[[peers.NAME.policy.files]]`",
        (
            Key("root", "string", "required", "An absolute directory, without `..`."),
            Key("write", "boolean", "`false`", "The peer may also write under it."),
        ),
    ),
    Table(
        'actions."NAME"',
        '`[actions."NAME"]`',
        (
            Key(
                "argv",
                "array of strings",
                "none (one of `argv` and `call` is required)",
                "The command, run without a shell; `{name}` placeholders take declared arguments.",
            ),
            Key(
                "call",
                "string",
                "none",
                '`"package.module:function"` to call in the daemon instead of a command.',
            ),
            Key(
                "timeout",
                "number",
                "`30`",
                "Seconds the action may run; then it is killed (exit status 124).",
            ),
            Key(
                "max_output",
                "integer",
                "`1048576`",
                "Bytes of output sent at most; the rest is cut and noted.",
            ),
            Key(
                "args",
                "table of tables",
                "`{}`",
                'The arguments the action takes: see `[actions."NAME".args.ARG]`. '
                "Undeclared arguments are refused.",
                'actions."NAME".args.ARG',
                "map",
            ),
            Key("description", "string", '`""`', "Free text for people."),
        ),
    ),
    Table(
        'actions."NAME".args.ARG',
        '`[actions."NAME".args.ARG]`',
        (
            Key("type", "string", "required", '`"int"`, `"float"`, `"bool"` or `"str"`.'),
            Key(
                "default",
                "that type",
                "none (the argument is required)",
                "The value when the request gives none; with it the argument is optional.",
            ),
            Key("min", "number", "none", "Lowest value (`int` and `float` only)."),
            Key("max", "number", "none", "Highest value (`int` and `float` only)."),
            Key("max_len", "integer", "`1024`", "Longest value in characters (`str` only)."),
            Key(
                "pattern",
                "string",
                "none",
                "A regular expression the whole value must match (`str` only).",
            ),
            Key("choices", "array of strings", "none", "The values allowed (`str` only)."),
            Key(
                "allow_dash",
                "boolean",
                "`false`",
                "Let a value that begins an argv element start with `-` (`str` only); "
                "otherwise it is refused, as a program would read it as an option.",
            ),
        ),
    ),
    Table(
        'brokers."HOST"',
        '`[brokers."HOST"]`',
        (
            Key(
                "username",
                "string",
                "none",
                "The MQTT user name for the broker at HOST (as the `mqtt://` address writes it).",
            ),
            Key(
                "password_file",
                "string",
                "none",
                "A file holding the password alone, readable by its owner only (a password "
                "never sits in the configuration or on a command line).",
            ),
            Key(
                "ca_file",
                "string",
                "none (the system's trust store)",
                "A PEM file of CA certificates that an `mqtts://` broker is verified against.",
            ),
            Key("cert_file", "string", "none", "A client certificate (PEM) for the broker."),
            Key("key_file", "string", "none", "The client certificate's private key (PEM)."),
        ),
    ),
    Table(
        "audit",
        "`[audit]`",
        (
            Key(
                "path",
                "string",
                "`audit.sqlite` beside the configuration",
                "The audit log's file (`~` expanded; relative to the configuration's directory).",
            ),
            Key(
                "reserve_mib",
                "integer",
                "`64`",
                "MiB of free space kept for the audit log: a put that would leave less is "
                "refused (0 turns it off).",
            ),
        ),
    ),
)

_TABLES = {t.name: t for t in SCHEMA}


def schema_table(name: str) -> Table:
    """The schema of one table, by its pattern (``"peers.NAME.policy"``).

    Raises:
        KeyError: no such table.
    """
    return _TABLES[name]


def suggest(name: str, allowed: Sequence[str], table: str = "") -> str | None:
    """The allowed key a misspelled ``name`` most likely meant, if any.

    ``difflib`` closeness, ignoring case; failing that, ``name`` without the
    table's own name in front (``DeviceID`` or ``device_id`` in ``[device]``
    means ``id``).
    """
    lowered = {a.lower(): a for a in allowed}
    candidates = [name.lower()]
    if table:
        own = table.lower()
        rest = name.lower().removeprefix(own).lstrip("_-.")
        if rest and rest != name.lower():
            candidates.append(rest)
    for candidate in candidates:
        close = difflib.get_close_matches(candidate, list(lowered), n=1)
        if close:
            return lowered[close[0]]
    return None


def reject_unknown_keys(
    path: Path, text: str, key: str, table: Mapping[str, Any], allowed: Sequence[str]
) -> None:
    """Raise a ConfigError for the first key of ``table`` not in ``allowed``.

    Args:
        path: the file, for the message.
        text: its text, for the line.
        key: the dotted key of ``table`` (``""`` for the document).
        table: the parsed table.
        allowed: the keys it may hold.

    Raises:
        ConfigError: naming the file, the line, the key, a did-you-mean and
            the allowed keys.
    """
    for name in table:
        if name in allowed:
            continue
        own = split_key(key)[-1] if key else ""
        close = suggest(name, allowed, own)
        hint = f'; did you mean "{close}"?' if close else ""
        full = f"{key}.{toml_key(name)}" if key else toml_key(name)
        raise ConfigError(
            path,
            f"unknown key{hint} (allowed: {', '.join(allowed)})",
            key=full,
            line=line_of(text, full) if text else None,
        )


def check_keys(data: Mapping[str, Any], path: Path, text: str = "") -> None:
    """Refuse every key of the document that :data:`SCHEMA` does not know.

    Only names are checked here; values are checked by :func:`load`, the policy
    loader, the action runner and the audit log.  A value of the wrong type is
    left to them.

    Raises:
        ConfigError: an unknown key, with file, line and did-you-mean.
    """
    _check_table(data, "", "", path, text)


def _check_table(table: Mapping[str, Any], schema: str, key: str, path: Path, text: str) -> None:
    spec = _TABLES[schema]
    allowed = spec.names()
    if (
        schema in _NAMED
        and table
        and not set(table) & set(allowed)
        and all(isinstance(v, Mapping) for v in table.values())
    ):
        # [actions.kettle.on] is the table "on" inside the action "kettle".
        *parents, own = split_key(key)
        first = next(iter(table))
        quoted = ".".join(toml_key(p) for p in parents) + "." + json.dumps(f"{own}.{first}")
        raise ConfigError(
            path,
            f"holds only tables: quote dotted names, e.g. [{quoted}]",
            key=f"{key}.{toml_key(first)}",
            line=line_of(text, f"{key}.{toml_key(first)}") if text else None,
        )
    reject_unknown_keys(path, text, key, table, allowed)
    for k in spec.keys:
        value = table.get(k.name)
        if k.holds is None or value is None:
            continue
        sub = f"{key}.{toml_key(k.name)}" if key else toml_key(k.name)
        if k.shape == "table" and isinstance(value, Mapping):
            _check_table(value, k.holds, sub, path, text)
        elif k.shape == "map" and isinstance(value, Mapping):
            for name, item in value.items():
                if isinstance(item, Mapping):
                    _check_table(item, k.holds, f"{sub}.{toml_key(name)}", path, text)
        elif k.shape == "array" and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    _check_table(item, k.holds, f"{sub}[{i}]", path, text)


# Tables that are one of many named ones: a dotted name written unquoted lands here.
_NAMED = frozenset(
    k.holds for t in SCHEMA for k in t.keys if k.shape == "map" and k.holds is not None
)


# --------------------------------------------------------------------------- addresses


def check_channel(text: str, *, listen: bool = False) -> Address:
    """A channel address checked as one to serve on (``listen``) or to reach.

    ``HOST[:PORT]`` (TCP; HOST an IP address, ``[v6]`` in brackets, or a host
    name; PORT 1-65535, default :data:`DEFAULT_PORT`), ``tcp://``, ``ws://`` or
    ``wss://`` (docs/protocol.md §19.1).  A bare port (``9000``, ``:9000``) is
    refused with the address to write instead.

    Raises:
        ValueError: the reason, fit for a message.
    """
    bare = re.fullmatch(r"\s*:?\s*(\d+)\s*", text)
    if bare:
        port = bare[1]
        if listen:
            raise ValueError(
                f'{text!r} is a port without a host: use "0.0.0.0:{port}" for every '
                f'interface, or "127.0.0.1:{port}" for this machine only'
            )
        raise ValueError(f'{text!r} is a port without a host: write "HOST:{port}"')
    if "://" not in text and text.count(":") > 1 and not text.strip().startswith("["):
        raise ValueError(f'{text!r}: an IPv6 address goes in brackets, "[{text}]:{DEFAULT_PORT}"')
    return channel.parse(text.strip(), listen=listen)


def check_address(text: str, *, listen: bool = False) -> tuple[str, int]:
    """A TCP address (``HOST[:PORT]`` or ``tcp://``) checked as :func:`check_channel` does.

    Raises:
        ValueError: the reason, fit for a message; a WebSocket address too.
    """
    found = check_channel(text, listen=listen)
    if found.scheme != "tcp":
        raise ValueError(f'{text!r} is not a TCP address ("HOST:PORT")')
    return found.host, found.port


def _check_private(path: Path) -> None:
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            path,
            f"holds pair keys but is accessible by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}",
        )


def _home() -> Path | None:
    try:
        import pwd

        return Path(pwd.getpwuid(os.geteuid()).pw_dir).resolve()
    except (ImportError, KeyError, OSError):
        return None


def _check_owner(path: Path) -> None:
    """Refuse a file that someone other than this uid (or root) can change.

    As OpenSSH's StrictModes (``safe_path``): the file must be owned by the
    running uid or root and not writable by group or others; so must each
    directory from it up to ``/`` (or up to and including the user's home),
    except that a root-owned sticky directory such as ``/tmp`` may be
    world-writable (its sticky bit keeps others from replacing the file).
    """
    if not hasattr(os, "geteuid"):
        return  # not a POSIX system: no uid to compare
    uid = os.geteuid()
    st = path.stat()
    if st.st_uid not in (0, uid):
        raise ConfigError(
            path,
            f"is owned by uid {st.st_uid}, not by this user (uid {uid}) or root, who could "
            f"rewrite its peers and policy; run: chown {uid} {path}",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            path,
            f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod go-w {path}",
        )
    home = _home()
    # Both the directories the name goes through and those of the file it resolves to.
    for start in dict.fromkeys((path.absolute().parent, path.resolve().parent)):
        _check_directories(path, start, uid, home)


def _check_directories(path: Path, directory: Path, uid: int, home: Path | None) -> None:
    while True:
        st = directory.stat()
        sticky_root = st.st_uid == 0 and st.st_mode & stat.S_ISVTX
        if st.st_uid not in (0, uid):
            raise ConfigError(
                path,
                f"is in {directory}, owned by uid {st.st_uid}, not by this user (uid {uid}) "
                f"or root, who could replace the file; run: chown {uid} {directory} "
                "(or move the configuration)",
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_root:
            raise ConfigError(
                path,
                f"is in {directory}, writable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), who could replace the file; "
                f"run: chmod go-w {directory}",
            )
        if directory == home or directory.parent == directory:
            return
        directory = directory.parent


def _device_id(value: object, path: Path, key: str, text: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ConfigError(
            path,
            "must be 1-64 characters: letters, digits, '.', '_' or '-', not starting with "
            "a punctuation mark",
            key=key,
            line=line_of(text, key),
        )
    return value


#: The steps of the reach ladder, in their default order (``[peers.NAME] reach``).
REACH_STEPS = ("direct", "lan", "websocket", "mqtt")


def _addresses(raw: object, key: str, err: Callable[[str, str], ConfigError]) -> list[Address]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise err(key, "must be a list of channel address strings")
    found: list[Address] = []
    for item in raw:
        try:
            found.append(check_channel(item))
        except ValueError as exc:
            raise err(key, str(exc)) from exc
    return found


def load(path: Path | str) -> Settings:
    """Read and validate the configuration.

    Raises:
        ConfigError: missing, readable by others, not TOML, or invalid; the
            message names the file, the line where known, and the key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "not found; create one with `pstp init`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot be read: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(path, f"not valid TOML: {exc}", line=int(m[1]) if m else None) from exc

    _check_owner(path)

    def err(key: str, message: str) -> ConfigError:
        return ConfigError(path, message, key=key, line=line_of(text, key))

    check_keys(data, path, text)
    device = data.get("device")
    if not isinstance(device, dict):
        raise err("device", "missing [device] table (with at least id = ...)")
    if "id" not in device:
        raise err("device", 'has no id: add id = "NAME" (1-64 letters, digits, ".", "_", "-")')
    device_id = _device_id(device.get("id"), path, "device.id", text)
    listen_raw = device.get("listen", [f"0.0.0.0:{DEFAULT_PORT}"])
    if not isinstance(listen_raw, list) or not all(isinstance(x, str) for x in listen_raw):
        raise err("device.listen", 'must be a list of "host:port" strings')
    if not listen_raw:
        raise err(
            "device.listen", f'is empty: list at least one address, e.g. ["0.0.0.0:{DEFAULT_PORT}"]'
        )
    listen: list[tuple[str, int]] = []
    websocket: list[Address] = []
    mqtt: list[Address] = []
    for item in listen_raw:
        try:
            found = check_channel(item, listen=True)
        except ValueError as exc:
            raise err("device.listen", str(exc)) from exc
        if found.websocket:
            websocket.append(found)
        elif found.mqtt:
            mqtt.append(found)
        else:
            listen.append((found.host, found.port))
    if not listen:
        raise err(
            "device.listen",
            f'has no TCP address: add one (e.g. "0.0.0.0:{DEFAULT_PORT}"); pairing and '
            "discovery use it",
        )
    advertise = _addresses(device.get("advertise", []), "device.advertise", err)
    flags = {}
    for name, default in (("discovery", True), ("stealth", False)):
        value = device.get(name, default)
        if not isinstance(value, bool):
            raise err(f"device.{name}", "must be true or false")
        flags[name] = value
    peers_raw = data.get("peers", {})
    if not isinstance(peers_raw, dict):
        raise err("peers", "must be a table of [peers.NAME] tables")
    peers: dict[str, PeerSettings] = {}
    if peers_raw:
        _check_private(path)
    for name, table in peers_raw.items():
        key = f"peers.{name}"
        _device_id(name, path, key, text)
        if not isinstance(table, dict):
            raise err(key, "must be a table")
        raw_key = table.get("key")
        try:
            pair_key = bytes.fromhex(raw_key) if isinstance(raw_key, str) else b""
        except ValueError:
            pair_key = b""
        if len(pair_key) != 32:
            raise err(f"{key}.key", "must be the 32-byte pair key as 64 hex digits")
        address = table.get("address")
        if address is not None:
            if not isinstance(address, str):
                raise err(f"{key}.address", 'must be a "host:port" string or a URL')
            try:
                check_channel(address)
            except ValueError as exc:
                raise err(f"{key}.address", str(exc)) from exc
        ca_file = table.get("ca_file")
        if ca_file is not None and (not isinstance(ca_file, str) or not ca_file):
            raise err(f"{key}.ca_file", "must be the path of a PEM file")
        device = table.get("device")
        if device is not None:
            device = _device_id(device, path, f"{key}.device", text)
        token = table.get("token")
        if token is not None and (not isinstance(token, str) or not token.startswith("tok_")):
            raise err(f"{key}.token", 'must be a token id ("tok_...")')
        via = _addresses(table.get("via", []), f"{key}.via", err)
        reach_raw = table.get("reach", list(REACH_STEPS))
        if (
            not isinstance(reach_raw, list)
            or not all(isinstance(x, str) and x in REACH_STEPS for x in reach_raw)
            or len(set(reach_raw)) != len(reach_raw)
        ):
            raise err(
                f"{key}.reach",
                f"must list some of {', '.join(REACH_STEPS)}, each once, in the order to try",
            )
        peers[name] = PeerSettings(
            name,
            pair_key,
            address,
            dict(table),
            ca_file,
            device,
            token,
            tuple(str(a) for a in via),
            tuple(reach_raw),
        )
    brokers_raw = data.get("brokers", {})
    if not isinstance(brokers_raw, dict):
        raise err("brokers", 'must be a table of [brokers."HOST"] tables')
    brokers: dict[str, BrokerSettings] = {}
    for host, table in brokers_raw.items():
        key = f"brokers.{host}"
        if not isinstance(table, dict):
            raise err(key, "must be a table")
        try:
            channel.check_host(host)
        except ValueError as exc:
            raise err(key, str(exc)) from exc
        values: dict[str, str] = {}
        for name in ("username", "password_file", "ca_file", "cert_file", "key_file"):
            value = table.get(name)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise err(f"{key}.{name}", "must be a non-empty string")
            values[name] = value
        if ("cert_file" in values) != ("key_file" in values):
            raise err(key, "cert_file and key_file go together")
        brokers[host] = BrokerSettings(host, **values)
    return Settings(
        path,
        device_id,
        tuple(listen),
        flags["discovery"],
        flags["stealth"],
        peers,
        data,
        tuple(websocket),
        tuple(advertise),
        tuple(mqtt),
        brokers,
    )


def broker_options(settings: Settings, address: Address) -> BrokerOptions:
    """The log-in of an ``mqtt://`` or ``mqtts://`` address: ``[brokers."HOST"]``, read now.

    A relative file name is taken from the configuration's directory.

    Raises:
        ConfigError: the password file is missing, empty, or readable by others,
            or a certificate file cannot be loaded.
    """
    import ssl

    from pstp.asyncio.mqtt import BrokerOptions

    found = settings.brokers.get(address.host)
    if found is None:
        return BrokerOptions()
    key = f"brokers.{address.host}"
    base = settings.path.parent

    def where(name: str) -> Path:
        return base / Path(name).expanduser()

    password = None
    if found.password_file is not None:
        secret = where(found.password_file)
        try:
            st = secret.stat()
            text = secret.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(settings.path, f"password_file: {exc}", key=key) from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                settings.path,
                f"password_file {secret} is readable by group or others; run: chmod 600 {secret}",
                key=key,
            )
        password = text.rstrip("\r\n")
        if not password:
            raise ConfigError(settings.path, f"password_file {secret} is empty", key=key)
    context = None
    if address.scheme == "mqtts" and (found.ca_file or found.cert_file):
        try:
            context = ssl.create_default_context(
                cafile=str(where(found.ca_file)) if found.ca_file else None
            )
            if found.cert_file and found.key_file:
                context.load_cert_chain(where(found.cert_file), where(found.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(settings.path, f"TLS files: {exc}", key=key) from None
    return BrokerOptions(username=found.username, password=password, ssl=context)


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600: temporary file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def create(path: Path | str, device_id: str, *, listen: str = f"0.0.0.0:{DEFAULT_PORT}") -> Path:
    """Write a fresh configuration for this node (mode 0600).

    Raises:
        ConfigError: the file exists, or the device id or listen address is invalid.
    """
    path = Path(path)
    if path.exists():
        raise ConfigError(path, "already exists; not overwriting it")
    _device_id(device_id, path, "device.id", "")
    try:
        check_address(listen, listen=True)
    except ValueError as exc:
        raise ConfigError(path, str(exc), key="device.listen") from None
    text = (
        "# PSTP configuration (see `pstp --help`). Keep this file private:\n"
        "# it holds the pair keys of the devices you trust.\n\n"
        "[device]\n"
        f'id = "{device_id}"\n'
        f'listen = ["{listen}"]   # TCP for sessions, UDP on the same port for discovery\n'
        "discovery = true        # answer broadcast PINGs on the LAN\n"
        "stealth = false         # true: answer only PINGs from devices holding a pair key\n\n"
        "# Trusted peers are added by `pstp pair` or `pstp device add NAME`.\n"
    )
    write_private(path, text)
    return path


def _edit(path: Path, change: Any) -> None:
    import tomlkit

    _check_owner(path)
    _check_private(path)
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    change(doc, tomlkit)
    write_private(path, tomlkit.dumps(doc))


def add_peer(
    path: Path | str,
    peer_id: str,
    key: bytes,
    *,
    address: str | None = None,
    default_policy: bool = False,
    extra: Mapping[str, str | list[str]] | None = None,
) -> None:
    """Add a peer (or replace its key), keeping the file's comments and layout.

    ``extra`` holds more keys of the peer's table (``device``, ``token``, ``via``).

    With ``default_policy`` a new peer gets an empty ``[peers.NAME.policy]``
    table: it may open sessions (and ping), and nothing else until the owner
    allows more (the policy engine denies by default).

    Raises:
        ConfigError: invalid id or key, or the file is unsafe.
    """
    path = Path(path)
    _device_id(peer_id, path, f"peers.{peer_id}", "")
    if len(key) != 32:
        raise ConfigError(path, "a pair key is 32 bytes", key=f"peers.{peer_id}.key")

    def change(doc: Any, tomlkit: Any) -> None:
        peers = doc.setdefault("peers", tomlkit.table(is_super_table=True))
        table = tomlkit.table()
        table.add("key", key.hex())
        if address:
            table.add("address", address)
        for k, v in (extra or {}).items():
            table.add(k, v)
        old = peers.get(peer_id)
        if old is not None:
            for k, v in old.items():
                if k not in ("key", "address", *(extra or {})):
                    table.add(k, v)
        if default_policy and "policy" not in table:
            table.add("policy", tomlkit.table())
        peers[peer_id] = table

    _edit(path, change)


def set_peer_address(path: Path | str, peer_id: str, address: str) -> None:
    """Remember the last address that worked for a peer."""

    def change(doc: Any, tomlkit: Any) -> None:
        doc["peers"][peer_id]["address"] = address

    _edit(Path(path), change)


def remove_peer(path: Path | str, peer_id: str) -> bool:
    """Remove a peer; returns False if it was not there."""
    removed = []

    def change(doc: Any, tomlkit: Any) -> None:
        peers = doc.get("peers")
        if peers is not None and peer_id in peers:
            del peers[peer_id]
            removed.append(peer_id)

    _edit(Path(path), change)
    return bool(removed)
