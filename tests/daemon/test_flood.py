"""A keyless connection flood against a real `pstp serve` (issue 11, item 1).

Before the caps, 1 400 half-open connections under the usual limit of 1 024
descriptors made a legitimate client's handshake+ping p95 go from 8 ms to
1 037 ms (2 of 25 timed out) and filled the log with tracebacks.  Now the
daemon keeps at most 256 unauthenticated connections (32 per source), shedding
the oldest, so the flood holds a bounded number of descriptors.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pstp.asyncio.client import connect
from tests.daemon.serving import PHONE, serve
from tests.helpers import TIMEOUT

CONFIG = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[peers.phone]
key = "{phone}"
[peers.phone.policy]
"""

#: pstp.asyncio.server's defaults, which the daemon uses.
GLOBAL_CAP = 256
FLOOD = 1400


def _low_nofile() -> None:  # in the daemon, before exec: what a bare service manager gives
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


@pytest.fixture
def many_files() -> Iterator[None]:
    """A soft RLIMIT_NOFILE for this process high enough for the flood's sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if want < FLOOD + 200:
        pytest.skip(f"the hard descriptor limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_keyless_flood_holds_a_bounded_number_of_descriptors(
    tmp_path: Path, many_files: None
) -> None:
    """1 400 idle connections from 70 sources: the daemon keeps at most its cap, ping works."""
    daemon = serve(tmp_path, CONFIG, preexec=_low_nofile)
    held: list[socket.socket] = []
    try:
        base = daemon.fds()
        for i in range(FLOOD):
            s = socket.socket()
            held.append(s)
            s.bind((f"127.0.0.{3 + i % 70}", 0))  # 20 per source: under the per-source cap
            s.settimeout(TIMEOUT)
            s.connect(("127.0.0.1", daemon.port))

        async def legitimate() -> bytes:
            async with await connect(
                "127.0.0.1", daemon.port, pair_key=PHONE, device_id="home", timeout=4 * TIMEOUT
            ) as session:
                return await session.request("ping", b"through")

        # Several sessions in a row all get through (the accept queue is FIFO, so
        # the first also means the whole flood has been accepted by now).
        for _ in range(5):
            assert asyncio.run(legitimate()) == b"pong through"
        deadline = time.monotonic() + 4 * TIMEOUT
        while (extra := daemon.fds() - base) > GLOBAL_CAP + 16 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert extra <= GLOBAL_CAP + 16, f"the daemon holds {extra} descriptors for the flood"
    finally:
        for s in held:
            s.close()
        daemon.stop()
    log = daemon.stderr()
    assert "Traceback" not in log, log[-4000:]
    assert log.count("shed ") <= 3, log[-4000:]
    assert "shed " in log
