"""HS_INIT timestamps, shared by every driver in the process (docs/protocol.md §5.1).

One counter for the asyncio and the blocking driver alike: the responder's
replay guard refuses a timestamp it has already accepted, so two handshakes
started in one process, by either driver, must never carry the same value.
"""

from __future__ import annotations

import threading
import time

__all__ = ["next_timestamp"]

_lock = threading.Lock()
_last = 0


def next_timestamp() -> int:
    """Wall-clock nanoseconds, strictly increasing within this process (thread-safe)."""
    global _last
    with _lock:
        _last = max(time.time_ns(), _last + 1)
        return _last
