"""Tests for pstp.sync.discovery on real UDP sockets (loopback and this host's LAN)."""

from __future__ import annotations

import socket

import pytest

from pstp.sync.discovery import broadcast_addresses, discover, find_first, start_responder


def free_udp_port() -> int:
    """A UDP port nobody uses right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_find_first_finds_a_local_responder_and_binding_matches() -> None:
    """A responder thread is found; the handshake lookup returns the exact PING and PONG."""
    port = free_udp_port()
    responder = start_responder("home", port)
    try:
        found = find_first(port, timeout=2.0)
        assert found.device_id == "home" and found.port == port
        assert responder.lookup(found.nonce) == (found.ping, found.pong)
    finally:
        responder.stop()


def test_nobody_answering_is_a_timeout() -> None:
    """find_first raises TimeoutError when no device answers."""
    with pytest.raises(TimeoutError):
        find_first(free_udp_port(), timeout=0.2)
    assert discover(free_udp_port(), timeout=0.1) == []


def test_broadcast_addresses_include_the_fallbacks() -> None:
    """The limited broadcast and loopback are always tried."""
    addrs = broadcast_addresses()
    assert addrs[-2:] == ["255.255.255.255", "127.0.0.1"]
