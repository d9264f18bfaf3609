"""Tests for pstp.asyncio.discovery on loopback UDP sockets (no broadcast leaves the host)."""

from __future__ import annotations

import time

from pstp.asyncio.discovery import discover
from pstp.discovery.protocol import Responder
from pstp.sync.discovery import ResponderThread, start_responder
from tests.cli.test_pair import free_port

LOOPBACK = ["127.0.0.1"]


async def test_finds_a_responder_and_the_binding_matches_its_memory() -> None:
    """A device answers; the (PING, PONG) the browser kept is what the responder remembers."""
    port = free_port()
    responder = start_responder("home", port, host="127.0.0.1")
    try:
        (found,) = await discover(port, 0.5, addresses=LOOPBACK)
    finally:
        responder.stop()
    assert (found.device_id, found.host, found.port, found.caps) == ("home", "127.0.0.1", port, 3)
    assert responder.lookup(found.nonce) == (found.ping, found.pong)


async def test_first_returns_at_the_first_answer() -> None:
    """With first=True the call returns long before the timeout."""
    port = free_port()
    responder = start_responder("home", port, host="127.0.0.1")
    try:
        t0 = time.monotonic()
        found = await discover(port, 5.0, first=True, addresses=LOOPBACK)
        assert time.monotonic() - t0 < 2.0
    finally:
        responder.stop()
    assert [f.device_id for f in found] == ["home"]


async def test_stealth_device_needs_the_key_id() -> None:
    """A stealth responder answers only the PING carrying its peer's kid_key."""
    port = free_port()
    key = b"k" * 32
    responder = ResponderThread(
        Responder("home", port, stealth_keys=lambda: [key]), "127.0.0.1"
    ).start()
    try:
        assert await discover(port, 0.3, addresses=LOOPBACK) == []
        (found,) = await discover(port, 1.0, first=True, kid_key=key, addresses=LOOPBACK)
    finally:
        responder.stop()
    assert found.device_id == "home"


async def test_silence_and_unsendable_addresses_give_an_empty_list() -> None:
    """Nobody answering is not an error; a bad target address is skipped."""
    assert await discover(free_port(), 0.1, addresses=["127.0.0.1", "::1"]) == []
