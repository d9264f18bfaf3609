"""Run a coroutine on the fastest event loop available (uvloop when installed)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "uvloop_available"]

T = TypeVar("T")


def uvloop_available() -> bool:
    """True if uvloop can be imported (``pip install 'pstp[speed]'``)."""
    return importlib.util.find_spec("uvloop") is not None


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
