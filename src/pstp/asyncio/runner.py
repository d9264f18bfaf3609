"""Run a coroutine on the fastest event loop available (uvloop when installed)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "tune_malloc", "uvloop_available"]

T = TypeVar("T")


def uvloop_available() -> bool:
    """True if uvloop can be imported (``pip install 'pstp[speed]'``)."""
    return importlib.util.find_spec("uvloop") is not None


#: glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc() -> bool:
    """Keep glibc from returning every freed 64-256 KiB buffer to the kernel.

    A record path allocates and frees buffers of that size continuously; with
    glibc's defaults each one is mmap'ed, or trimmed from the heap, and faulted
    in again next time: measured as the largest single cost of a bulk transfer
    (docs/benchmarks.md, forwarding: 1.3-1.4x faster with these values).  The
    price is up to about 8 MiB of freed heap kept for reuse.  Called by the
    long-running commands (``pstp serve``, ``pstp forward``); does nothing
    where glibc is not the allocator.

    Returns:
        Whether the settings were applied.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, 1 << 20),
            (_M_TRIM_THRESHOLD, 8 << 20),
            (_M_TOP_PAD, 1 << 20),
        )
    )


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool | None = None) -> T:
    """Like :func:`asyncio.run`, on uvloop when it is installed (or as asked).

    Args:
        main: the coroutine to run.
        use_uvloop: force (True) or refuse (False) uvloop; default: use it if present.

    Raises:
        ModuleNotFoundError: ``use_uvloop=True`` but uvloop is not installed.
    """
    if use_uvloop is None:
        use_uvloop = uvloop_available()
    if use_uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
