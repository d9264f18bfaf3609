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

import os
import re
import socket
import stat
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from pstp.exceptions import PstpError

__all__ = [
    "ALT_CONFIG_NAME",
    "CONFIG_NAME",
    "CONTROL_NAME",
    "DEFAULT_PORT",
    "ConfigError",
    "PeerSettings",
    "Settings",
    "add_peer",
    "config_path",
    "control_path",
    "create",
    "format_address",
    "line_of",
    "load",
    "parse_address",
    "peer_uid",
    "remove_peer",
    "set_peer_address",
    "write_private",
]

CONFIG_NAME = "pstp.toml"
#: The seed project's name for the same file; accepted when given or found in the cwd.
ALT_CONFIG_NAME = "MainConf.conf"
#: The PSTP/2 service port, TCP and UDP (docs/protocol.md §8).
DEFAULT_PORT = 9000
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
        address: the last ``host:port`` that worked, tried first.
        table: the peer's whole TOML table, for sections added later (policy).
    """

    id: str
    key: bytes
    address: str | None = None
    table: dict[str, Any] = msgspec.field(default_factory=dict)

    def __repr__(self) -> str:  # never the key
        return f"PeerSettings(id={self.id!r}, address={self.address!r})"


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
    """

    path: Path
    device_id: str
    listen: tuple[tuple[str, int], ...]
    discovery: bool
    stealth: bool
    peers: dict[str, PeerSettings]
    data: dict[str, Any]

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
    """Split ``host[:port]`` (``[v6]:port`` too).

    Raises:
        ValueError: not a valid address.
    """
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad address {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = int(p)
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad address {text!r}")
    return host, port


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets so :func:`parse_address` reads it back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _header(parts: list[str]) -> re.Pattern[str]:
    return re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(re.escape(p) for p in parts) + r"\s*\]")


def line_of(text: str, key: str) -> int | None:
    """Best-effort line of a dotted key: its own table header, or its assignment."""
    parts = key.split(".")
    own, parent = _header(parts), _header(parts[:-1]) if len(parts) > 1 else None
    assign = re.compile(r"^\s*" + re.escape(parts[-1]) + r"\s*=")
    in_parent = parent is None
    for n, line in enumerate(text.splitlines(), 1):
        if own.match(line):
            return n
        if line.lstrip().startswith("["):
            in_parent = parent is not None and bool(parent.match(line))
        elif in_parent and assign.match(line):
            return n
    return None


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

    device = data.get("device")
    if not isinstance(device, dict):
        raise err("device", "missing [device] table (with at least id = ...)")
    device_id = _device_id(device.get("id"), path, "device.id", text)
    listen_raw = device.get("listen", [f"0.0.0.0:{DEFAULT_PORT}"])
    if not isinstance(listen_raw, list) or not all(isinstance(x, str) for x in listen_raw):
        raise err("device.listen", 'must be a list of "host:port" strings')
    listen = []
    for item in listen_raw:
        try:
            listen.append(parse_address(item))
        except ValueError as exc:
            raise err("device.listen", str(exc)) from exc
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
                raise err(f"{key}.address", 'must be a "host:port" string')
            try:
                parse_address(address)
            except ValueError as exc:
                raise err(f"{key}.address", str(exc)) from exc
        peers[name] = PeerSettings(name, pair_key, address, dict(table))
    return Settings(
        path, device_id, tuple(listen), flags["discovery"], flags["stealth"], peers, data
    )


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
        ConfigError: the file exists, or the device id is invalid.
    """
    path = Path(path)
    if path.exists():
        raise ConfigError(path, "already exists; not overwriting it")
    _device_id(device_id, path, "device.id", "")
    parse_address(listen)
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
) -> None:
    """Add a peer (or replace its key), keeping the file's comments and layout.

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
        old = peers.get(peer_id)
        if old is not None:
            for k, v in old.items():
                if k not in ("key", "address"):
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
