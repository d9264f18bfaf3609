"""Caps on connections that have not completed the handshake (issue 11, item 1).

Real loopback sockets: the server runs on its own event loop in a thread, and
the test holds idle keyless TCP connections from several source addresses
(the whole of 127/8 is loopback, so binding a client socket to 127.0.0.2 makes
another source).  Past a cap the server sheds the *oldest* unauthenticated
connections, so a flood holds at most the caps' worth of descriptors and a
legitimate client still gets its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pstp.asyncio import server as server_module
from pstp.asyncio.client import connect
from pstp.asyncio.connection import Channel
from pstp.asyncio.server import Server, serve
from pstp.protocol.config import Config
from tests.helpers import PAIR_KEY, SERVER_ID, TIMEOUT, make_keyring

#: The defaults (pstp.asyncio.server.MAX_UNAUTHENTICATED and ..._PER_SOURCE), spelled
#: out so the tests also run, and fail, against a server without the caps.
GLOBAL_CAP = 256
PER_SOURCE_CAP = 32
#: Long enough that no idle connection ends by the handshake timeout during a test.
CONFIG = Config(handshake_timeout=600.0)


async def ping(ch: Channel) -> None:
    """Answer ``pong`` and what was sent."""
    await ch.write(b"pong " + await ch.read_all(limit=1024))


class Threaded:
    """A PSTP server on its own event loop in a thread (the test thread blocks on sockets)."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Server = self.call(
            serve(
                None,
                "127.0.0.1",
                0,
                keyring=make_keyring(),
                own_id=SERVER_ID,
                config=CONFIG,
                handlers={"ping": ping},
                **kwargs,
            )
        )
        self.port = self.server.port

    def call(self, coro: Any) -> Any:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(4 * TIMEOUT)

    def close(self) -> None:
        """Close the server and stop its loop."""
        try:
            self.call(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            self.loop.close()


@pytest.fixture
def threaded() -> Iterator[Callable[..., Threaded]]:
    """Start servers (closed at the end of the test)."""
    started: list[Threaded] = []

    def start(**kwargs: Any) -> Threaded:
        started.append(Threaded(**kwargs))
        return started[-1]

    yield start
    for t in started:
        t.close()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Client sockets, all closed at the end of the test."""
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


@pytest.fixture
def many_files() -> Iterator[None]:
    """A soft RLIMIT_NOFILE high enough for both ends of 1 000+ connections in one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if want < 3000:
        pytest.skip(f"the hard descriptor limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_idle(port: int, source: str, held: list[socket.socket]) -> socket.socket:
    """A raw TCP connection from ``source`` that never sends a byte."""
    s = socket.socket()
    held.append(s)
    s.bind((source, 0))
    s.settimeout(TIMEOUT)
    s.connect(("127.0.0.1", port))
    return s


def closed_by_server(s: socket.socket, timeout: float) -> bool:
    """True if the server closed ``s`` (EOF or reset) within ``timeout`` (0: now)."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except (BlockingIOError, TimeoutError):
        return False


def wait_for(what: Callable[[], bool], message: str) -> None:
    """Poll ``what`` until it holds (at most 4 TIMEOUTs)."""
    deadline = time.monotonic() + 4 * TIMEOUT
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def open_fds() -> int:
    """Descriptors this process (server and clients together) holds now."""
    return len(os.listdir("/proc/self/fd"))


def test_source_key_is_the_address_or_the_ipv6_64() -> None:
    """IPv4 counts per address, IPv6 per /64, an IPv4-mapped address as the IPv4 one."""
    source_key = server_module.source_key
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("/run/pstp.sock") == "/run/pstp.sock"


def test_a_flood_from_one_source_sheds_its_oldest(
    threaded: Callable[..., Threaded], sockets: list[socket.socket]
) -> None:
    """Past the cap, a source holding more than its share loses its oldest connections."""
    t = threaded()
    extra = 8
    conns = [open_idle(t.port, "127.0.0.1", sockets) for _ in range(GLOBAL_CAP + extra)]
    oldest, newest = conns[:extra], conns[extra:]
    assert all(closed_by_server(s, 2 * TIMEOUT) for s in oldest), "the oldest stayed open"
    wait_for(lambda: t.server.unauthenticated == GLOBAL_CAP, "pending count")
    assert not any(closed_by_server(s, 0) for s in newest), "a newer connection was closed"
    assert t.server.shed == extra
    assert t.server.per_source == {"127.0.0.1": GLOBAL_CAP}


def test_a_burst_from_one_source_below_the_cap_is_not_shed(
    threaded: Callable[..., Threaded], sockets: list[socket.socket]
) -> None:
    """200 pending connections from one address (a NAT, a test): all served, none shed."""
    t = threaded()
    conns = [open_idle(t.port, "127.0.0.1", sockets) for _ in range(200)]
    wait_for(lambda: t.server.unauthenticated == 200, "pending count")
    assert not any(closed_by_server(s, 0) for s in conns)
    assert t.server.shed == 0


def test_a_flood_from_many_sources_sheds_the_oldest_overall(
    threaded: Callable[..., Threaded], sockets: list[socket.socket]
) -> None:
    """Past the global cap the oldest idle connections, whatever their source, are closed."""
    t = threaded()
    sources = [f"127.0.1.{i}" for i in range(1, 21)]  # 20 sources, 15 each: under 32
    total = GLOBAL_CAP + 44
    conns = [open_idle(t.port, sources[i % len(sources)], sockets) for i in range(total)]
    oldest, newest = conns[: total - GLOBAL_CAP], conns[total - GLOBAL_CAP :]
    assert all(closed_by_server(s, 2 * TIMEOUT) for s in oldest), "the oldest stayed open"
    wait_for(lambda: t.server.unauthenticated == GLOBAL_CAP, "pending count")
    assert not any(closed_by_server(s, 0) for s in newest), "a newer connection was closed"
    assert t.server.shed == total - GLOBAL_CAP


def test_another_source_is_not_shed_by_a_flood(
    threaded: Callable[..., Threaded], sockets: list[socket.socket]
) -> None:
    """Connections from 127.0.0.2, older than a flood from 127.0.0.1, stay open."""
    t = threaded()
    bystanders = [open_idle(t.port, "127.0.0.2", sockets) for _ in range(2)]
    flood = [open_idle(t.port, "127.0.0.1", sockets) for _ in range(GLOBAL_CAP + 50)]
    assert all(closed_by_server(s, 2 * TIMEOUT) for s in flood[:52])
    wait_for(lambda: t.server.unauthenticated == GLOBAL_CAP, "pending count")
    assert not any(closed_by_server(s, 0) for s in bystanders), "another source was shed"
    assert not any(closed_by_server(s, 0) for s in flood[52:])


def test_small_caps_shed_globally_and_per_source(
    threaded: Callable[..., Threaded], sockets: list[socket.socket]
) -> None:
    """The caps are parameters; a source over its share pays first, then the oldest of all."""
    t = threaded(max_unauthenticated=8, max_unauthenticated_per_source=4)
    bystanders = [open_idle(t.port, "127.0.0.2", sockets) for _ in range(2)]
    flood = [open_idle(t.port, "127.0.0.1", sockets) for _ in range(20)]
    # Full at 8 (2 + 6): each newcomer sheds the flood's oldest, never a bystander.
    assert all(closed_by_server(s, 2 * TIMEOUT) for s in flood[:14])
    wait_for(lambda: t.server.unauthenticated == 8, "pending count")
    assert not any(closed_by_server(s, 0) for s in bystanders + flood[14:])
    # Many sources: the flood loses down to its share of 4, then the oldest overall go.
    spread = [open_idle(t.port, f"127.0.2.{i}", sockets) for i in range(1, 9)]
    assert all(closed_by_server(s, 2 * TIMEOUT) for s in bystanders + flood[14:])
    wait_for(lambda: t.server.unauthenticated == 8, "pending count")
    assert not any(closed_by_server(s, 0) for s in spread)
    assert t.server.shed == 14 + 8
    with pytest.raises(ValueError):
        t.call(
            serve(None, "127.0.0.1", 0, keyring=make_keyring(), own_id="x", max_unauthenticated=0)
        )


def test_a_paired_client_gets_through_a_flood_of_1000(
    threaded: Callable[..., Threaded],
    sockets: list[socket.socket],
    many_files: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1 000 idle keyless connections from other sources: ping works, descriptors stay bounded.

    Without the caps the server holds one descriptor per flood connection (1 000
    more); with them, at most the global cap.
    """
    caplog.set_level(logging.INFO)
    t = threaded()
    started = time.monotonic()
    base = open_fds()
    flood_size = 1000
    sources = [f"127.0.0.{i}" for i in range(3, 53)]  # 50 sources, 20 each: under 32
    for i in range(flood_size):
        open_idle(t.port, sources[i % len(sources)], sockets)
    # The server accepts in arrival order: once the client below has its session,
    # every flood connection has been accepted (and shed, or not) before it.

    async def legitimate() -> bytes:
        async with await connect(
            "127.0.0.1", t.port, pair_key=PAIR_KEY, device_id=SERVER_ID, timeout=4 * TIMEOUT
        ) as session:
            return await session.request("ping", b"hello")

    assert asyncio.run(legitimate()) == b"pong hello"
    # This process holds both ends: the flood's 1 000 client sockets, and what
    # the server kept of them (at most the cap), plus a few for the loops.
    held = open_fds() - base
    assert held <= flood_size + GLOBAL_CAP + 32, f"{held} descriptors for {flood_size} sockets"
    assert t.server.unauthenticated <= GLOBAL_CAP
    assert t.server.shed >= flood_size - GLOBAL_CAP
    # No traceback per connection, and the shedding is summarized, not logged each time.
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    shed_lines = [r for r in caplog.records if r.getMessage().startswith("shed ")]
    elapsed = time.monotonic() - started
    assert 1 <= len(shed_lines) <= 1 + int(elapsed / 10), [r.getMessage() for r in shed_lines]
    with contextlib.suppress(OSError):
        for s in sockets:
            s.close()
