"""``pstp put`` and ``pstp get``: file transfer with a peer (see :mod:`pstp.client.files`).

Both resume an interrupted transfer when run again, skip files the other
side already has with the same digests, and never replace an existing file
without ``--force``.  A progress bar (rich) is drawn on standard error when
it is a terminal, unless ``--no-progress``; ``--json`` prints the summary as
one JSON object on standard output.

Exit status: 0 if everything went through, 1 if the peer refused the
transfer or some entries failed (each is named on standard error), 130 if
interrupted (Ctrl-C: what was kept is said, and the same command resumes),
and the usual connection and protocol codes of ``pstp`` otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import posixpath
import re
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from pstp.cli.common import load_settings, run
from pstp.cli.main import EXIT_INTERRUPTED, Console
from pstp.exceptions import ChannelError, PstpError, TransferFailed

if TYPE_CHECKING:
    from pstp.asyncio.connection import Session
    from pstp.client.files import Progress, TransferSummary
    from pstp.files.client import TransferState

__all__ = ["get_command", "parse_rate", "put_command"]

_Callback = Callable[["Progress"], None] | None
_Work = Callable[["Session", _Callback, "TransferState"], Coroutine[Any, Any, "TransferSummary"]]
#: How the engine words a refusal to overwrite (docs/protocol.md §18.6, §18.8).
_EXISTS = ("exists (use --force to replace it)", "exists with different content (use --force")
_RATE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmg]?)(?:i?b)?(?:/s)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
#: Channel windows and records for transfers (docs/benchmarks.md, bench/files.py).
_RECORD_SIZE = 256 * 1024
_WINDOW = 4 * 1024 * 1024


def parse_rate(text: str | None) -> float | None:
    """``--limit`` as bytes per second: ``500K``, ``20M``, ``1.5G`` (binary units), ``4096``.

    Raises:
        ValueError: not a positive rate.
    """
    if text is None:
        return None
    m = _RATE_RE.fullmatch(text)
    if m is None or float(m[1]) <= 0:
        raise ValueError(f"--limit {text!r}: expected a rate such as 500K, 20M or 1G (bytes/s)")
    return float(m[1]) * _UNITS[m[2].lower()]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


@contextlib.contextmanager
def _progress_bar(console: Console, wanted: bool) -> Iterator[Callable[[Progress], None] | None]:
    """A rich progress bar on standard error, or None when not wanted or not a terminal."""
    isatty = getattr(console.err, "isatty", None)
    if not wanted or isatty is None or not isatty():
        yield None
        return
    try:
        from rich.console import Console as RichConsole
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as Bar
    except ImportError:  # rich is optional at run time: no bar, same transfer
        yield None
        return
    bar = Bar(
        TextColumn("{task.description}", table_column=None),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=RichConsole(file=console.err),
        transient=True,
    )
    task = bar.add_task("", total=None)

    def update(p: Progress) -> None:
        name = p.path if len(p.path) <= 40 else "..." + p.path[-37:]
        bar.update(task, completed=p.done_bytes, total=p.total_bytes or None, description=name)

    with bar:
        yield update


def _known(args: argparse.Namespace, console: Console) -> Any:
    settings = load_settings(args)
    if args.peer not in settings.peers:
        console.error(f"no peer {args.peer!r} in {settings.path} (pair first: pstp pair HOST)")
        return None
    return settings


def _transfer(
    args: argparse.Namespace,
    console: Console,
    verb: str,
    work: _Work,
    describe: Callable[[str, str], str],
) -> int:
    """Connect, run ``work`` with a progress callback, and report.

    ``describe(path, error)`` words a failed entry for standard error.
    """
    from pstp.client.api import connect_peer
    from pstp.files.client import TransferState
    from pstp.protocol.config import Config

    try:
        parse_rate(args.limit)
    except ValueError as exc:
        console.error(str(exc))
        return 2
    settings = _known(args, console)
    if settings is None:
        return 2
    config = Config(max_record_size=_RECORD_SIZE, channel_window=_WINDOW)
    state = TransferState()

    async def main(progress: Callable[[Progress], None] | None) -> TransferSummary:
        session = await connect_peer(settings, args.peer, address=args.address, config=config)
        async with session:
            return await work(session, progress, state)

    try:
        with _progress_bar(
            console, not (args.no_progress or args.json or console.quiet)
        ) as progress:
            summary = run(main(progress))
    except KeyboardInterrupt:
        return _interrupted(args, console, verb, state)
    except TransferFailed as exc:
        return _failed(args, console, str(exc))
    except ChannelError as exc:
        return _failed(args, console, f"refused by {args.peer}: {exc.reason or exc}")
    except (PstpError, OSError) as exc:  # reported by pstp's error mapping (exit code)
        if args.json:
            console.print(json.dumps({"ok": False, "error": str(exc)}, ensure_ascii=False))
        raise
    if args.json:
        console.print(json.dumps(summary.as_dict(), ensure_ascii=False))
    else:
        for path, error in summary.failed:
            console.error(describe(path, error))
        rate = summary.bytes_sent / summary.seconds / 1e6 if summary.seconds > 0 else 0.0
        parts = [
            f"{verb} {summary.files} file(s), {_size(summary.bytes_sent)} in "
            f"{summary.seconds:.2f} s ({rate:.0f} MB/s)"
        ]
        if summary.bytes_resumed:
            parts.append(f"{_size(summary.bytes_resumed)} resumed")
        if summary.skipped:
            parts.append(f"{summary.skipped} already there")
        if summary.failed:
            parts.append(f"{len(summary.failed)} failed")
        console.print("; ".join(parts))
    return 0 if summary.ok else 1


def _interrupted(
    args: argparse.Namespace, console: Console, verb: str, state: TransferState
) -> int:
    """Ctrl-C: say what was kept and that the same command resumes (exit 130)."""
    partial = state.partial
    part = state.local_part()
    if args.json:
        out: dict[str, Any] = {
            "ok": False,
            "interrupted": True,
            "files": state.files,
            "skipped": state.skipped,
            "partial": None,
        }
        if partial is not None:
            out["partial"] = {
                "path": partial.path,
                "bytes": state.local_kept() if part is not None else partial.file_bytes,
                "size": partial.file_size,
                "part": part,
            }
        console.print(json.dumps(out, ensure_ascii=False))
    if state.last is None and not state.files and not state.skipped:
        console.error("interrupted before any file was transferred; nothing was kept")
        return EXIT_INTERRUPTED
    done = f"{state.files} file(s) {verb}"
    if state.skipped:
        done += f", {state.skipped} already there"
    console.error(f"interrupted: {done}")
    if partial is not None:
        of = f"{_size(partial.file_bytes)} of {_size(partial.file_size)}"
        kept = state.local_kept()
        if kept is not None:
            of = f"{_size(kept)} of {_size(partial.file_size)}"
        if part is not None:  # get: the receiver is here, and its verified bytes are known
            console.error(f"{partial.path}: {of} kept in its hidden partial file {part}")
        else:  # put: what reached the peer; it keeps the part of it that verified
            console.error(
                f"{partial.path}: up to {of} sent; {args.peer} keeps what it verified in a "
                f"hidden partial file beside the target"
            )
    console.error("run the same command again to resume (files already there are skipped)")
    return EXIT_INTERRUPTED


def _exists(error: str) -> bool:
    return error.startswith(_EXISTS)


def _failed(args: argparse.Namespace, console: Console, message: str) -> int:
    if args.json:
        console.print(json.dumps({"ok": False, "error": message}, ensure_ascii=False))
    console.error(message)
    return 1


def put_command(args: argparse.Namespace, console: Console) -> int:
    """``pstp put PEER LOCAL... REMOTE``: send files and directories to a peer."""
    from pstp.client.files import put

    if len(args.paths) < 2:
        console.error("usage: pstp put PEER LOCAL... REMOTE")
        return 2
    *local, remote = args.paths
    missing = [path for path in local if not os.path.lexists(path)]
    if missing:  # a local mistake: say so before connecting, not as a network error
        console.error(f"no such local file or directory: {', '.join(missing)}")
        return 2

    into = len(local) > 1 or remote.endswith("/")

    async def work(session: Session, progress: _Callback, state: TransferState) -> TransferSummary:
        return await put(
            session,
            local,
            remote,
            progress=progress,
            force=args.force,
            reason=args.reason,
            limit=parse_rate(args.limit),
            state=state,
        )

    def describe(path: str, error: str) -> str:
        if not _exists(error):
            return f"{path}: {error}"
        if into:
            where = f"{args.peer}:{remote.rstrip('/')}/{path}"
            return f"{path}: {where} exists, not replaced (--force replaces it)"
        # The device decides whether REMOTE is a directory to put into (§18.11).
        return (
            f"{path}: exists on {args.peer}, not replaced (the target {args.peer}:{remote}, "
            "or this name in it if it is a directory); --force replaces it"
        )

    return _transfer(args, console, "sent", work, describe)


def get_command(args: argparse.Namespace, console: Console) -> int:
    """``pstp get PEER REMOTE... LOCAL``: fetch files and directories from a peer."""
    from pstp.client.files import get

    if len(args.paths) < 2:
        console.error("usage: pstp get PEER REMOTE... LOCAL")
        return 2
    *remote, local = args.paths

    async def work(session: Session, progress: _Callback, state: TransferState) -> TransferSummary:
        return await get(
            session,
            remote,
            local,
            progress=progress,
            force=args.force,
            reason=args.reason,
            limit=parse_rate(args.limit),
            state=state,
        )

    # As get() decides it, before the transfer creates anything.
    into = len(remote) > 1 or local.endswith("/") or os.path.isdir(local)
    tops = {posixpath.basename(r.rstrip("/")): r for r in remote}

    def describe(path: str, error: str) -> str:
        if not _exists(error):
            return f"{path}: {error}"
        top, _, rest = path.partition("/")
        source = tops.get(top)
        if source is None:  # pragma: no cover - the device named an entry it was not asked for
            return f"{path}: {error}"
        there = posixpath.join(source, rest) if rest else source
        here = os.path.join(local, path) if into else os.path.join(local, rest) if rest else local
        return f"{here}: exists here, not replaced by {args.peer}:{there} (--force replaces it)"

    return _transfer(args, console, "received", work, describe)
