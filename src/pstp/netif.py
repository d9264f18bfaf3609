"""This host's interfaces, for discovery drivers, ``pstp doctor`` and pairing (Linux).

Shared by both drivers (:mod:`pstp.asyncio.discovery`, :mod:`pstp.sync.discovery`),
which may not import each other, and by the apps.  docs/protocol.md §8: a PING
goes to every up, broadcast-capable IPv4 interface's broadcast address, then to
the limited broadcast and to loopback.

:func:`reachable` answers the pairing commands' question (docs/protocol.md
§16.2): at which addresses can another device reach a service listening on a
given address?  For a wildcard that is every address of every interface that
is up, which :func:`addresses` lists with ``getifaddrs(3)`` (every IPv4 address
of an interface, not only its primary one, and IPv6).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

__all__ = [
    "FALLBACK_ADDRESSES",
    "Address",
    "Interface",
    "Reachable",
    "addresses",
    "broadcast_addresses",
    "interfaces",
    "limited_broadcast_routable",
    "reachable",
    "route_source",
]

#: Sent to after the interfaces' broadcast addresses (§8): the limited broadcast,
#: and loopback for a device on this host.
FALLBACK_ADDRESSES = ("255.255.255.255", "127.0.0.1")

# Linux <linux/sockios.h> and <net/if.h>.
_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_SIOCGIFBRDADDR = 0x8919
_SIOCGIFNETMASK = 0x891B
_IFF_UP = 0x1
_IFF_BROADCAST = 0x2
_IFF_LOOPBACK = 0x8


@dataclass(frozen=True, slots=True)
class Interface:
    """One network interface as discovery sees it.

    Attributes:
        name: the interface name (``eth0``).
        up: the interface is administratively up.
        loopback: the loopback interface.
        address: its (primary) IPv4 address, or ``None``.
        netmask: its IPv4 netmask, or ``None``.
        broadcast: its IPv4 broadcast address, or ``None`` when the interface
            cannot broadcast or has no IPv4 address.
    """

    name: str
    up: bool
    loopback: bool
    address: str | None = None
    netmask: str | None = None
    broadcast: str | None = None

    @property
    def network(self) -> ipaddress.IPv4Network | None:
        """The IPv4 subnet the interface is on, if it has an address."""
        if self.address is None or self.netmask is None:
            return None
        return ipaddress.IPv4Network(f"{self.address}/{self.netmask}", strict=False)


def _ioctl_addr(sock: socket.socket, request: int, req: bytes) -> str | None:
    try:
        raw = fcntl.ioctl(sock.fileno(), request, req)
    except OSError:
        return None  # e.g. EADDRNOTAVAIL: no IPv4 address on this interface
    return socket.inet_ntoa(raw[20:24])


def interfaces() -> list[Interface]:
    """Every interface of this host (network namespace), in index order."""
    out: list[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            req = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req), 16)[0]
            except OSError:
                continue  # vanished meanwhile
            address = _ioctl_addr(s, _SIOCGIFADDR, req)
            netmask = _ioctl_addr(s, _SIOCGIFNETMASK, req) if address else None
            broadcast = None
            if address and flags & _IFF_BROADCAST:
                broadcast = _ioctl_addr(s, _SIOCGIFBRDADDR, req)
            out.append(
                Interface(
                    name,
                    up=bool(flags & _IFF_UP),
                    loopback=bool(flags & _IFF_LOOPBACK),
                    address=address,
                    netmask=netmask,
                    broadcast=broadcast,
                )
            )
    return out


def broadcast_addresses() -> list[str]:
    """The broadcast address of every IPv4 interface that is up, then the fallbacks."""
    found: list[str] = []
    for iface in interfaces():
        if iface.up and iface.broadcast and iface.broadcast not in found:
            found.append(iface.broadcast)
    return [*found, *FALLBACK_ADDRESSES]


def limited_broadcast_routable(port: int = 9000) -> bool:
    """Whether a datagram to 255.255.255.255 has a route (Linux needs a default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        with contextlib.suppress(OSError):
            s.connect(("255.255.255.255", port))
            return True
    return False


@dataclass(frozen=True, slots=True)
class Address:
    """One address of one interface, as ``getifaddrs(3)`` lists it.

    Attributes:
        interface: the interface name (``eth0``).
        address: the address, without a zone (``192.168.1.20``, ``fd00::20``).
        family: ``socket.AF_INET`` or ``socket.AF_INET6``.
        up: the interface is administratively up.
        loopback: the loopback interface.
    """

    interface: str
    address: str
    family: int
    up: bool
    loopback: bool


class _Sockaddr(ctypes.Structure):
    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_char * 14)]


class _Ifaddrs(ctypes.Structure):
    pass


_Ifaddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_Ifaddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_Sockaddr)),
    ("ifa_netmask", ctypes.POINTER(_Sockaddr)),
    ("ifa_ifu", ctypes.POINTER(_Sockaddr)),
    ("ifa_data", ctypes.c_void_p),
]

# struct sockaddr_in: family (2), port (2), address (4); sockaddr_in6: family (2),
# port (2), flowinfo (4), address (16), scope id (4).
_FAMILY_LAYOUT = {socket.AF_INET: (4, 4, 16), socket.AF_INET6: (8, 16, 28)}


def addresses() -> list[Address]:
    """Every IPv4 and IPv6 address of every interface of this host (network namespace).

    In the order ``getifaddrs(3)`` gives them (by interface, IPv4 first).

    Raises:
        OSError: the C library has no ``getifaddrs`` or it failed.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    head = ctypes.POINTER(_Ifaddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"getifaddrs: {os.strerror(err)}")
    out: list[Address] = []
    try:
        node = head
        while node:
            ifa = node.contents
            node = ifa.ifa_next
            if not ifa.ifa_addr or ifa.ifa_name is None:
                continue
            family = ifa.ifa_addr.contents.sa_family
            layout = _FAMILY_LAYOUT.get(family)
            if layout is None:
                continue  # AF_PACKET and the like
            start, size, total = layout
            raw = ctypes.string_at(ctypes.addressof(ifa.ifa_addr.contents), total)
            out.append(
                Address(
                    ifa.ifa_name.decode("utf-8", "replace"),
                    socket.inet_ntop(family, raw[start : start + size]),
                    family,
                    up=bool(ifa.ifa_flags & _IFF_UP),
                    loopback=bool(ifa.ifa_flags & _IFF_LOOPBACK),
                )
            )
    finally:
        libc.freeifaddrs(head)
    return out


def route_source(family: int = socket.AF_INET) -> str | None:
    """The local address of the route towards a documentation address, if there is a route.

    Connecting a UDP socket sends nothing: it only picks the route (192.0.2.1,
    RFC 5737; 2001:db8::1, RFC 3849).
    """
    target = ("192.0.2.1", 9) if family == socket.AF_INET else ("2001:db8::1", 9)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(target)
        except OSError:
            return None
        return str(s.getsockname()[0])


@dataclass(frozen=True, slots=True)
class Reachable:
    """An address at which a peer can reach a listening service.

    Attributes:
        host: the address (IPv6 without brackets).
        interface: the interface it belongs to, or ``None`` for a configured
            (not wildcard) listen address.
        local_only: reachable only from this machine (loopback).
    """

    host: str
    interface: str | None
    local_only: bool


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


def reachable(listen_host: str, found: list[Address] | None = None) -> list[Reachable]:
    """Where another device can reach a service listening on ``listen_host``.

    A specific address is the only answer.  A wildcard (``0.0.0.0``, or ``::``,
    which also takes IPv4) gives every non-loopback address of every interface
    that is up: IPv4, then for ``::`` IPv6 (not link-local, which needs a zone
    no URI or peer configuration carries).  The address of the default route
    comes first, being the likeliest to be reached.  Only if there is none of
    those, the loopback address is given, marked ``local_only``.

    Args:
        listen_host: the configured listen address.
        found: the host's addresses (default: :func:`addresses`; for tests).
    """
    if listen_host not in ("0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
        return [Reachable(listen_host, None, _loopback(listen_host))]
    if found is None:
        found = addresses()
    families = [socket.AF_INET]
    if listen_host == "::":
        families.append(socket.AF_INET6)
    out: list[Reachable] = []
    for family in families:
        for a in found:
            if a.family != family or not a.up or a.loopback or _loopback(a.address):
                continue
            ip = ipaddress.ip_address(a.address)
            if ip.is_link_local and ip.version == 6:
                continue
            if all(r.host != a.address for r in out):
                out.append(Reachable(a.address, a.interface, local_only=False))
    preferred = route_source()
    out.sort(key=lambda r: r.host != preferred)  # stable: the rest keep their order
    if not out:
        out.append(Reachable("127.0.0.1", "lo", local_only=True))
    return out
