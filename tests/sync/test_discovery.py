"""Tests for pstp.sync.discovery on real UDP sockets.

PINGs go to loopback, or, for the default targets (every interface's broadcast
address, then 255.255.255.255), inside a network namespace of their own
(tests/netns_host.py): nothing leaves the machine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from pstp.sync.discovery import broadcast_addresses, discover, find_first, start_responder
from tests import netns_host
from tests.helpers import TIMEOUT

LOOPBACK = ["127.0.0.1"]


def free_udp_port() -> int:
    """A UDP port nobody uses right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_find_first_finds_a_local_responder_and_binding_matches() -> None:
    """A responder thread is found at the given target; the lookup returns the PING and PONG."""
    port = free_udp_port()
    responder = start_responder("home", port)
    try:
        found = find_first(port, timeout=2.0, addresses=LOOPBACK)
        assert found.device_id == "home" and found.port == port
        assert found.host == "127.0.0.1"
        assert responder.lookup(found.nonce) == (found.ping, found.pong)
    finally:
        responder.stop()


def test_find_first_sends_only_to_the_targets_given() -> None:
    """A responder on 127.0.0.2 is not found by PINGs to 127.0.0.1 alone, then is."""
    port = free_udp_port()
    responder = start_responder("home", port, host="127.0.0.2")
    try:
        with pytest.raises(TimeoutError):
            find_first(port, timeout=0.3, addresses=LOOPBACK)
        assert find_first(port, timeout=2.0, addresses=["127.0.0.2"]).host == "127.0.0.2"
    finally:
        responder.stop()


def test_nobody_answering_is_a_timeout() -> None:
    """find_first raises TimeoutError when no device answers."""
    with pytest.raises(TimeoutError):
        find_first(free_udp_port(), timeout=0.2, addresses=LOOPBACK)
    assert discover(free_udp_port(), timeout=0.1, addresses=LOOPBACK) == []


def test_broadcast_addresses_include_the_fallbacks() -> None:
    """The limited broadcast and loopback are always tried."""
    addrs = broadcast_addresses()
    assert addrs[-2:] == ["255.255.255.255", "127.0.0.1"]


@netns_host.needs_netns
def test_default_targets_broadcast_on_every_interface_and_find_the_device() -> None:
    """In a lone host (lo + eth0), the defaults are eth0's broadcast then the fallbacks."""
    port = free_udp_port()
    with netns_host.lone_host("sync") as ns:
        argv = [sys.executable, "-m", "tests.discovery.netns_peers", "find", "--port", str(port)]
        done = subprocess.run(
            netns_host.in_ns(ns, *argv, "--respond", "home"),
            env=netns_host.env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 4,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["targets"] == [netns_host.BROADCAST, "255.255.255.255", "127.0.0.1"]
    assert result["found"][0::2] == ["home", port] and result["bound"] is True
