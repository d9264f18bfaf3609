"""Channel addresses: where a device is served, written as URLs (docs/protocol.md §19.1).

``host:port`` (TCP, the form written before there were other transports),
``tcp://host:port``, ``ws://host[:port]/path``, ``wss://host[:port]/path``, and
``mqtt://broker[:port][/prefix]`` or ``mqtts://…`` for a broker both ends
connect out to (the path is the topic prefix).  Parsing is pure (no I/O, no
name lookups); the same parser reads ``[device] listen``, ``[device] advertise``,
``[peers.NAME] address`` and ``--address``.
"""

from __future__ import annotations

import ipaddress
import re

import msgspec

from pstp.protocol.mqtt import prefix_of

__all__ = ["DEFAULT_PORT", "SCHEMES", "Address", "check_host", "parse"]

#: The TCP (and discovery UDP) port when an address names none.
DEFAULT_PORT = 9000
#: Schemes this version serves or reaches, with their default ports.
SCHEMES = {"tcp": DEFAULT_PORT, "ws": 80, "wss": 443, "mqtt": 1883, "mqtts": 8883}
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# RFC 3986 path characters (pchar and "/"); no query, no fragment, no spaces.
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")


class Address(msgspec.Struct, frozen=True):
    """One channel address.

    Attributes:
        scheme: ``tcp``, ``ws``, ``wss``, ``mqtt`` or ``mqtts``.
        host: an IP address (IPv6 without brackets) or a host name.
        port: 1-65535 (0 only for a listen address: any free port).
        path: the HTTP path of a WebSocket address (``/`` at least); the topic
            prefix of an MQTT address (``""`` or ``/levels``); ``""`` for TCP.
    """

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def websocket(self) -> bool:
        """A ``ws://`` or ``wss://`` address."""
        return self.scheme in ("ws", "wss")

    @property
    def mqtt(self) -> bool:
        """An ``mqtt://`` or ``mqtts://`` address (a broker, §19.3)."""
        return self.scheme in ("mqtt", "mqtts")

    @property
    def netloc(self) -> str:
        """``host:port``, an IPv6 literal in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        """The URL (TCP as the plain ``host:port`` that configuration files have always held)."""
        if self.scheme == "tcp":
            return self.netloc
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == SCHEMES[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"


def check_host(host: str) -> str:
    """``host`` if it is an IP address or a well-formed host name.

    Raises:
        ValueError: anything else (``300.1.2.3``, ``my_host``, ``a..b``).
    """
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        raise ValueError(f"{host!r} is not an IP address")
    name = host[:-1] if host.endswith(".") else host
    if ":" in host or len(name) > 253 or not all(_HOST_LABEL.fullmatch(p) for p in name.split(".")):
        raise ValueError(f"{host!r} is not an IP address or a host name")
    return host


def _host(text: str, whole: str) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"{whole!r}: an IPv6 address needs its closing bracket")
        inner = text[1:-1]
        try:
            ipaddress.IPv6Address(inner.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{whole!r}: {inner!r} is not an IPv6 address") from None
        return inner
    if ":" in text:
        raise ValueError(f"{whole!r}: an IPv6 address goes in brackets, e.g. [::1]:9000")
    if not text:
        raise ValueError(f"{whole!r}: no host")
    try:
        return check_host(text)
    except ValueError as exc:
        raise ValueError(f"{whole!r}: {exc}") from None


def _split_port(text: str, whole: str, default: int | None) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or (text.startswith("[") and not host.endswith("]")):
        if default is None:
            raise ValueError(f'{whole!r}: no port (write "HOST:PORT")')
        return text, default
    if not port.isdigit() or not 0 < int(port) <= 65535 or len(port) > 5:
        raise ValueError(
            f'{whole!r} is not "HOST:PORT" (PORT 1-65535; an IPv6 address in brackets, '
            f'"[::1]:{DEFAULT_PORT}")'
        )
    return host, int(port)


def parse(text: str, *, default_port: int | None = DEFAULT_PORT, listen: bool = False) -> Address:
    """Read one channel address.

    Args:
        text: ``host[:port]``, ``tcp://host[:port]``, ``ws://host[:port]/path``,
            ``wss://host[:port]/path``, ``mqtt://host[:port][/prefix]`` or
            ``mqtts://host[:port][/prefix]``.
        default_port: the TCP port when ``host`` comes alone (``None``: a port
            is required).
        listen: an address to serve on: ``wss://`` is refused (TLS ends at a
            reverse proxy in front of the device; its public ``wss://`` address
            goes in ``[device] advertise``).

    Raises:
        ValueError: not an address of a supported transport, with what to write.
    """
    if not isinstance(text, str) or not text or text != text.strip() or len(text) > 1024:
        raise ValueError(f"{text!r} is not an address")
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"{text!r}: unknown scheme {scheme!r} (tcp://, ws://, wss://, mqtt:// or mqtts://)"
        )
    if "?" in rest or "#" in rest or "@" in rest:
        raise ValueError(
            f"{text!r}: no query, fragment or user name in an address (nothing secret goes "
            "into a URL)"
        )
    netloc, slash, path = rest.partition("/")
    if scheme == "tcp":
        if slash:
            raise ValueError(f"{text!r}: a TCP address has no path")
        path = ""
    elif scheme in ("mqtt", "mqtts"):
        path = "/" + path.strip("/") if path.strip("/") else ""
        try:
            prefix_of(path)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    else:
        path = "/" + path
        if not _PATH.fullmatch(path):
            raise ValueError(f"{text!r}: {path!r} is not a valid URL path")
    default = default_port if scheme == "tcp" else SCHEMES[scheme]
    host, port = _split_port(netloc, text, default)
    host = _host(host, text)
    if listen and scheme == "wss":
        raise ValueError(
            f"{text!r}: a device serves ws:// and a TLS proxy in front of it serves wss://; "
            'listen on "ws://127.0.0.1:PORT/PATH" and put the public address in '
            "[device] advertise"
        )
    return Address(scheme, host, port, path)
