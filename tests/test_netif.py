"""Tests for pstp.netif: this host's interfaces as discovery sees them."""

from __future__ import annotations

import ipaddress

from pstp.netif import (
    FALLBACK_ADDRESSES,
    Interface,
    broadcast_addresses,
    interfaces,
    limited_broadcast_routable,
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
