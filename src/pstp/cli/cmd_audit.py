"""``pstp audit list|verify|head``: read and check this device's audit log.

The log lives beside the configuration (``audit.sqlite``) or at
``[audit] path``; see :mod:`pstp.daemon.audit`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from pstp.cli.common import load_settings
from pstp.cli.main import Console

if TYPE_CHECKING:
    from pstp.daemon.audit import AuditLog, AuditRow

__all__ = ["parse_expect", "parse_since", "run_head", "run_list", "run_verify"]

T = TypeVar("T")

#: Exit status of ``verify`` for a broken chain, and of every command for an unusable log.
EXIT_BAD = 1

_AGE_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# C0 and C1 controls, DEL and bidi overrides: audit fields may come from a peer; never let
# them drive the terminal or reorder what it shows.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A ``--since`` value: an age (``90s``, ``15m``, ``1h``, ``2d``, ``1w``) or an ISO time.

    An ISO time without a zone is local time; a bare date is its local midnight.

    Args:
        text: the option's value.
        now: the current time for ages (default: now).

    Returns:
        A timezone-aware datetime.

    Raises:
        ValueError: neither an age nor an ISO 8601 time.
    """
    m = _AGE_RE.match(text)
    if m:
        now = now or datetime.now(UTC)
        return now - timedelta(seconds=int(m[1]) * _UNITS[m[2].lower()])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give an age like 30m, 1h, 2d or 1w, or an ISO time "
            "like 2024-05-01T12:00"
        ) from None
    return when if when.tzinfo is not None else when.astimezone()


def parse_expect(text: str) -> tuple[int, str]:
    """A ``--expect`` value ``SEQ:HASH`` as printed by ``pstp audit head``.

    Raises:
        ValueError: not a seq and a 64-digit hex hash.
    """
    seq, _, digest = text.strip().partition(":")
    if not seq.isdigit() or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise ValueError(f"--expect {text!r}: give SEQ:HASH as printed by `pstp audit head`")
    return int(seq), digest.lower()


def _with_log(args: argparse.Namespace, console: Console, use: Callable[[AuditLog], T]) -> T | None:
    """``use(log)`` on the configured log, or None after saying why it failed."""
    from pstp.daemon.audit import AuditError, AuditLog, audit_path

    path = audit_path(load_settings(args))
    if not path.exists():
        console.error(f"no audit log at {path} (the daemon writes it: pstp serve)")
        return None
    try:
        with AuditLog(path) as log:
            return use(log)
    except AuditError as exc:
        console.error(str(exc))
        return None


def run_list(args: argparse.Namespace, console: Console) -> int:
    """Print matching entries, oldest first: a table, or JSON lines with --json."""
    since = parse_since(args.since) if args.since else None
    if args.limit is not None and args.limit < 0:
        raise ValueError("--limit must not be negative")
    rows = _with_log(
        args,
        console,
        lambda log: log.list(peer=args.peer, since=since, kind=args.kind, limit=args.limit),
    )
    if rows is None:
        return EXIT_BAD
    if args.json:
        for row in rows:
            console.print(json.dumps(_as_dict(row), sort_keys=True))
    elif rows:
        _print_table(rows, console)
    else:
        console.print("no matching audit entries")
    return 0


def _as_dict(row: AuditRow) -> dict[str, object]:
    return {
        "seq": row.seq,
        "time": row.time.isoformat(timespec="microseconds"),
        "kind": row.kind,
        "peer": row.peer,
        "decision": row.decision,
        "reason": row.reason,
        "args": row.args,
        "result": row.result,
        "detail": row.detail,
        "hash": row.hash.hex(),
    }


def _safe(text: str) -> str:
    """``text`` with control characters shown as escapes."""
    return _CONTROL_RE.sub(lambda m: repr(m[0])[1:-1], text)


def _details(row: AuditRow) -> str:
    parts = []
    if row.reason is not None:
        parts.append(f"reason={row.reason!r}")
    if row.args is not None:
        parts.append(f"args={json.dumps(row.args, sort_keys=True, ensure_ascii=False)}")
    if row.result is not None:
        parts.append(f"result={json.dumps(row.result, sort_keys=True, ensure_ascii=False)}")
    if row.detail is not None:
        parts.append(row.detail)
    return " ".join(parts)


def _print_table(rows: list[AuditRow], console: Console) -> None:
    header = ("SEQ", "TIME (UTC)", "KIND", "PEER", "DECISION", "DETAILS")
    lines = [header] + [
        (
            str(r.seq),
            r.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            _safe(r.kind),
            _safe(r.peer),
            _safe(r.decision),
            _safe(_details(r)),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        console.print("  ".join([*cells, line[-1]]).rstrip())


def run_verify(args: argparse.Namespace, console: Console) -> int:
    """Check the chain (and an exported head with --expect); exit 1 naming the first bad seq."""
    expect = parse_expect(args.expect) if args.expect else None
    checked = _with_log(args, console, lambda log: (log.path, log.verify(expect)))
    if checked is None:
        return EXIT_BAD
    path, report = checked
    if args.json:
        console.print(
            json.dumps(
                {
                    "ok": report.ok,
                    "path": str(path),
                    "rows": report.rows,
                    "head": report.head,
                    "first_bad_seq": report.first_bad_seq,
                    "problem": report.problem or None,
                }
            )
        )
        return 0 if report.ok else EXIT_BAD
    if report.ok:
        console.print(f"ok: {report.rows} rows, head {report.head}")
        return 0
    console.error(
        f"audit log {path} FAILED verification at seq {report.first_bad_seq}: "
        f"{report.problem} ({report.rows} rows before it are intact)"
    )
    return EXIT_BAD


def run_head(args: argparse.Namespace, console: Console) -> int:
    """Print ``SEQ:HASH``, the recorded head, to keep elsewhere for ``verify --expect``."""
    head = _with_log(args, console, lambda log: log.head())
    if head is None:
        return EXIT_BAD
    if args.json:
        console.print(json.dumps({"seq": head[0], "hash": head[1]}))
    else:
        console.print(f"{head[0]}:{head[1]}")
    return 0
