"""Helpers shared by CLI commands (kept light: imported only by commands)."""

from __future__ import annotations

import argparse
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from pstp.settings import Settings, config_path, load

if TYPE_CHECKING:  # asyncio is imported only by commands that run a loop
    import asyncio

__all__ = ["load_settings", "run", "stop_event"]

T = TypeVar("T")


def load_settings(args: argparse.Namespace) -> Settings:
    """The configuration named by --config / $PSTP_CONFIG / the default place.

    Raises:
        ConfigError: missing or invalid.
    """
    return load(config_path(args.config))


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine (on uvloop when installed)."""
    from pstp.asyncio.runner import run as run_loop

    return run_loop(main)


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call inside the running loop)."""
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
