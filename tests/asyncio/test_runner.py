"""pstp.asyncio.runner: the event loop chosen, and glibc's malloc tuned for bulk."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from pstp.asyncio.runner import run, tune_malloc


def test_run_returns_the_coroutines_result() -> None:
    """run() runs a coroutine to its result, on asyncio's own loop when asked."""

    async def answer() -> int:
        return 42

    assert run(answer(), use_uvloop=False) == 42


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or ctypes.util.find_library("c") is None,
    reason="mallopt is glibc's",
)
def test_tune_malloc_applies_on_glibc() -> None:
    """Every mallopt call is accepted (it returns 1), so the thresholds are in force."""
    assert tune_malloc() is True
