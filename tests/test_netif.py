"""Tests for pstp.netif: this host's interfaces as discovery sees them."""

from __future__ import annotations

import ipaddress
import socket

from pstp.netif import (
    FALLBACK_ADDRESSES,
    Address,
    Interface,
    Reachable,
    addresses,
    broadcast_addresses,
    interfaces,
    limited_broadcast_routable,
    reachable,
    route_source,
)


def test_loopback_is_listed_without_a_broadcast_address() -> None:
    """lo has 127.0.0.1/8 and cannot broadcast."""
    (lo,) = [i for i in interfaces() if i.loopback]
    assert lo.address == "127.0.0.1" and lo.broadcast is None
    assert lo.network == ipaddress.IPv4Network("127.0.0.0/8")


def test_broadcast_addresses_are_the_interfaces_then_the_fallbacks() -> None:
    """Every up interface's broadcast address, once each, then 255.255.255.255 and loopback."""
    addrs = broadcast_addresses()
    assert tuple(addrs[-2:]) == FALLBACK_ADDRESSES
    expected = {i.broadcast for i in interfaces() if i.up and i.broadcast}
    assert set(addrs[:-2]) == expected and len(addrs[:-2]) == len(expected)


def test_an_interface_without_an_address_has_no_network() -> None:
    """No IPv4 address, no subnet."""
    assert Interface("eth9", up=True, loopback=False).network is None


def test_limited_broadcast_check_returns_a_bool() -> None:
    """The route check only connects a UDP socket: it never sends."""
    assert isinstance(limited_broadcast_routable(9), bool)


def test_addresses_lists_loopback_and_every_interface_address() -> None:
    """getifaddrs sees 127.0.0.1 on the loopback interface and each interface's primary IPv4."""
    found = addresses()
    assert any(a.loopback and a.address == "127.0.0.1" for a in found)
    listed = {(a.interface, a.address) for a in found}
    for i in interfaces():
        if i.address is not None:
            assert (i.name, i.address) in listed


def _addr(name: str, address: str, *, up: bool = True, loopback: bool = False) -> Address:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return Address(name, address, family, up=up, loopback=loopback)


def test_reachable_lists_the_wildcard_s_addresses_never_loopback() -> None:
    """0.0.0.0: every up non-loopback IPv4 address; :: adds IPv6 but not link-local."""
    found = [
        _addr("lo", "127.0.0.1", loopback=True),
        _addr("eth0", "198.18.1.10"),
        _addr("eth0", "198.18.9.10"),  # a secondary address of the same interface
        _addr("eth1", "198.18.2.10", up=False),
        _addr("lo", "::1", loopback=True),
        _addr("eth0", "fe80::1"),
        _addr("eth0", "fd00::10"),
    ]
    v4 = reachable("0.0.0.0", found)
    assert [(r.host, r.interface, r.local_only) for r in v4] == [
        ("198.18.1.10", "eth0", False),
        ("198.18.9.10", "eth0", False),
    ]
    assert [r.host for r in reachable("::", found)] == ["198.18.1.10", "198.18.9.10", "fd00::10"]


def test_reachable_falls_back_to_loopback_marked_local_only() -> None:
    """Nothing but loopback: 127.0.0.1, said to reach only this machine; a specific
    address is the only answer, loopback ones marked local."""
    only_lo = [_addr("lo", "127.0.0.1", loopback=True), _addr("eth0", "198.18.1.1", up=False)]
    assert reachable("0.0.0.0", only_lo) == [Reachable("127.0.0.1", "lo", local_only=True)]
    assert reachable("198.18.1.10", []) == [Reachable("198.18.1.10", None, local_only=False)]
    assert reachable("::1", [])[0].local_only and reachable("127.0.0.2", [])[0].local_only


def test_route_source_is_an_address_of_this_host_or_none() -> None:
    """The route towards 192.0.2.1, if any, leaves from one of our addresses (no packet sent)."""
    src = route_source()
    assert src is None or src in {a.address for a in addresses()}
