"""Helpers shared by CLI commands (kept light: imported only by commands)."""

from __future__ import annotations

import argparse
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pstp.settings import Settings, config_path, load

if TYPE_CHECKING:  # asyncio is imported only by commands that run a loop
    import asyncio

    from pstp.cli.main import Console

__all__ = ["load_settings", "print_table", "run", "stop_event"]

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


def print_table(console: Console, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` under ``header`` in left-aligned columns (the last one unpadded)."""
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [f"{c!s:{w}}" for c, w in zip(row, widths, strict=False)]
        console.print("  ".join([*cells, str(row[-1])]))
