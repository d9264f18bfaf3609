"""One HS_INIT timestamp counter per process, shared by both drivers (§5.1)."""

from __future__ import annotations

import threading

from pstp.asyncio import connection as aio
from pstp.clock import next_timestamp
from pstp.sync import connection as blocking


def test_both_drivers_draw_from_one_strictly_increasing_counter() -> None:
    """Handshakes started by the asyncio and the blocking driver never share a timestamp."""
    assert aio.next_timestamp is blocking.next_timestamp is next_timestamp
    seen = [aio.next_timestamp(), blocking.next_timestamp(), next_timestamp()]
    assert seen == sorted(set(seen))


def test_threads_never_get_the_same_timestamp() -> None:
    """Four threads drawing at once still get distinct values."""
    out: list[int] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [next_timestamp() for _ in range(2000)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == len(out) == 8000
