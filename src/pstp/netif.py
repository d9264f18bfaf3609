"""This host's IPv4 interfaces, for discovery drivers and ``pstp doctor`` (Linux ioctls).

Shared by both drivers (:mod:`pstp.asyncio.discovery`, :mod:`pstp.sync.discovery`),
which may not import each other, and by the apps.  docs/protocol.md §8: a PING
goes to every up, broadcast-capable IPv4 interface's broadcast address, then to
the limited broadcast and to loopback.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass

__all__ = [
    "FALLBACK_ADDRESSES",
    "Interface",
    "broadcast_addresses",
    "interfaces",
    "limited_broadcast_routable",
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
