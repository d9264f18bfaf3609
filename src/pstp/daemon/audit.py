"""The audit log: one hash-chained SQLite row per security-relevant event (docs/protocol.md §17.11).

The daemon records every authentication attempt, pairing, action, exec, shell,
file transfer and forward with the peer, the time, the decision, the reason
given, the arguments and the result.  ``pstp audit verify`` detects tampering.

File
    ``<config dir>/audit.sqlite`` by default, or ``[audit] path = "..."`` in
    the configuration (relative paths are taken from the config's directory);
    see :func:`audit_path`.  It is created with mode 0600 (SQLite gives its
    ``-wal`` and ``-shm`` files the same mode) because arguments and reasons
    may be private.  Only the stdlib ``sqlite3`` module is used.

Schema (version 1)::

    audit(seq INTEGER PRIMARY KEY,  -- 1, 2, 3, ... without gaps
          time TEXT,                -- UTC, ISO 8601 with microseconds:
                                    --   2024-05-01T12:00:00.000000+00:00
          kind TEXT, peer TEXT, decision TEXT,
          reason TEXT NULL,
          args TEXT NULL,           -- canonical JSON (see below)
          result TEXT NULL,         -- canonical JSON
          detail TEXT NULL,
          prev_hash BLOB,           -- the previous row's hash (32 zero bytes for seq 1)
          hash BLOB)                -- SHA-256, see below
    meta(id INTEGER PRIMARY KEY CHECK (id = 1),
         schema INTEGER, head_seq INTEGER, head_hash BLOB)

Hash chain
    ``hash = SHA-256(prev_hash || canonical_json([seq, time, kind, peer,
    decision, reason, args, result, detail]))`` where every value is the
    column exactly as stored (``args`` and ``result`` enter as their JSON
    *text*, or null) and ``canonical_json`` is Python's ``json.dumps`` with
    ``sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    allow_nan=False``, encoded as ASCII.  Each insert also moves the head in
    ``meta`` to the new (seq, hash) in the same transaction, so
    :meth:`AuditLog.verify` detects a changed row (hash mismatch), a deleted or
    renumbered row (seq gap or prev_hash mismatch), a row inserted anywhere
    (seq or prev_hash mismatch, or rows beyond the head) and deleted tail rows
    (the chain ends before the head).

Limits of the chain
    The chain proves integrity against *partial* edits, not against a full
    rewrite: someone who can write the file can recompute every hash and the
    head and so forge the whole history (or truncate it and fix the head).
    The mitigation is to keep the head somewhere that person cannot write:
    export ``pstp audit head`` (``SEQ:HASH``) regularly to another machine,
    a printout or a log server, and later check it with
    ``pstp audit verify --expect SEQ:HASH``; history up to an exported head
    cannot then be changed undetected.

Kinds (free text; these are the ones PSTP records)
    ``auth``    an authentication attempt (handshake), allowed or denied;
    ``pairing`` a pairing-window attempt or a new pair key stored;
    ``action``  a named action run (docs/protocol.md §17.6);
    ``exec``    a command run without a shell;
    ``shell``   an interactive shell opened or closed;
    ``file``    a file put or get;
    ``forward`` a TCP forward to a target;
    ``session`` a session opened, resumed with a token, or closed.

Decisions
    ``allow`` / ``deny`` for a policy decision, ``ok`` / ``fail`` for an
    outcome (for example an exec's exit status in ``result``).

Durability
    The log runs in WAL mode with ``synchronous=NORMAL`` by default: every
    committed row survives a crash of the process, and the file can never be
    corrupted, but a power loss or OS crash may lose the last rows committed
    before it.  Because a row and the head move in one transaction, such a
    loss leaves a chain that still verifies.  ``synchronous=FULL`` (an fsync
    per row, ``AuditLog(path, durable=True)``) closes that window but is
    fsync-bound: 500-3 000 rows/s on the development machine, varying with the
    disk, against 6 000-9 000 with NORMAL and a target of 2 000.

Concurrency
    :meth:`AuditLog.record` is one short transaction under a lock, so it is
    safe from any thread and quick enough (tens of microseconds) to call from
    an asyncio event loop; with ``durable=True`` prefer
    ``await asyncio.to_thread(log.record, ...)``.  Each insert reads the head
    inside ``BEGIN IMMEDIATE``, so several processes may append to one file.
    :meth:`AuditLog.list` and :meth:`AuditLog.verify` read a consistent
    snapshot through their own connection and never block writers.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pstp.exceptions import DaemonError
from pstp.settings import ConfigError

if TYPE_CHECKING:
    from pstp.settings import Settings

__all__ = [
    "AUDIT_NAME",
    "DECISIONS",
    "DEFAULT_RESERVE_MIB",
    "KINDS",
    "MAX_JSON",
    "MAX_TEXT",
    "SCHEMA_VERSION",
    "ZERO_HASH",
    "AuditError",
    "AuditLog",
    "AuditRow",
    "VerifyReport",
    "audit_path",
    "audit_reserve",
    "canonical_json",
    "row_hash",
]

#: The audit file's name beside the configuration file.
AUDIT_NAME = "audit.sqlite"
#: The schema version kept in ``meta.schema``.
SCHEMA_VERSION = 1
#: ``prev_hash`` of the first row.
ZERO_HASH = bytes(32)
#: The kinds PSTP records (others are accepted).
KINDS = ("auth", "pairing", "action", "exec", "shell", "file", "forward", "session")
#: The accepted decisions.
DECISIONS = ("allow", "deny", "ok", "fail")

# Column names are constants, never input: the f-strings built from them below
# (noqa: S608) carry every value as a bound parameter.
_COLUMNS = "seq, time, kind, peer, decision, reason, args, result, detail, prev_hash, hash"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        kind TEXT NOT NULL,
        peer TEXT NOT NULL,
        decision TEXT NOT NULL,
        reason TEXT,
        args TEXT,
        result TEXT,
        detail TEXT,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_peer ON audit (peer)",
    "CREATE INDEX IF NOT EXISTS audit_time ON audit (time)",
    """CREATE TABLE IF NOT EXISTS meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        schema INTEGER NOT NULL,
        head_seq INTEGER NOT NULL,
        head_hash BLOB NOT NULL
    )""",
)


class AuditError(DaemonError):
    """The audit log cannot be opened, read or written.

    Raised for a file that is not SQLite or not an audit log of a known
    schema, a disk or lock error, or use after :meth:`AuditLog.close`.  A
    tampered chain is not an error: :meth:`AuditLog.verify` reports it.
    """


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit entry.

    Attributes:
        seq: position in the chain, from 1.
        time: when it happened (timezone-aware, UTC).
        kind: what happened (see :data:`KINDS`).
        peer: the peer's device id (or the id it claimed).
        decision: ``allow``, ``deny``, ``ok`` or ``fail``.
        reason: the reason the peer gave, if any.
        args: the arguments, decoded from JSON.
        result: the result, decoded from JSON.
        detail: free text.
        prev_hash: the previous row's hash.
        hash: this row's hash.
    """

    seq: int
    time: datetime
    kind: str
    peer: str
    decision: str
    reason: str | None
    args: object
    result: object
    detail: str | None
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :meth:`AuditLog.verify`.

    Attributes:
        ok: the chain is intact and ends at the recorded head.
        rows: rows checked before stopping (all of them when ``ok``).
        first_bad_seq: the first seq found wrong (missing, changed, extra).
        problem: what is wrong, empty when ``ok``.
        head: the hex hash of the last good row (zeros for an empty log).
    """

    ok: bool
    rows: int
    first_bad_seq: int | None = None
    problem: str = ""
    head: str = ZERO_HASH.hex()


def audit_path(settings: Settings) -> Path:
    """Where the audit log of this configuration lives.

    ``[audit] path`` in the configuration if set (``~`` expanded; relative to
    the configuration's directory), else ``audit.sqlite`` beside it.

    Args:
        settings: the loaded configuration.

    Returns:
        The audit file's path (not necessarily existing yet).

    Raises:
        ConfigError: ``[audit]`` is not a table or ``path`` not a non-empty string.
    """
    section = settings.data.get("audit", {})
    if not isinstance(section, dict):
        raise ConfigError(settings.path, "must be a table", key="audit")
    raw = section.get("path")
    if raw is None:
        return settings.path.parent / AUDIT_NAME
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(settings.path, "must be a file path string", key="audit.path")
    path = Path(raw).expanduser()
    return path if path.is_absolute() else settings.path.parent / path


#: Free space kept for the audit log on its file system unless ``[audit] reserve_mib``
#: says otherwise: puts that would leave less are refused (docs/security.md).
DEFAULT_RESERVE_MIB = 64


def audit_reserve(settings: Settings) -> int:
    """Bytes of free space kept for the audit log: ``[audit] reserve_mib`` (default 64).

    Raises:
        ConfigError: not an integer from 0 to 1 048 576 (0 turns the reserve off).
    """
    section = settings.data.get("audit", {})
    if not isinstance(section, dict):
        raise ConfigError(settings.path, "must be a table", key="audit")
    raw = section.get("reserve_mib", DEFAULT_RESERVE_MIB)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 1 << 20:
        raise ConfigError(
            settings.path, "must be a whole number of MiB, 0 to 1048576", key="audit.reserve_mib"
        )
    return raw << 20


def canonical_json(value: object) -> str:
    """The canonical JSON text of ``value``: sorted keys, no spaces, ASCII only.

    ``bytes`` become hex strings, path-like objects strings, datetimes ISO
    text and sets sorted lists, so arguments such as file paths and digests
    can be logged as they are.

    Raises:
        TypeError: a value JSON cannot represent (or non-string dict keys that
            cannot be sorted).
        ValueError: NaN or an infinity.
    """
    return _dumps(value, _json_default)


def _dumps(value: object, default: Callable[[object], object] | None) -> str:
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
        default=default,
    )


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot log a {type(value).__name__} as JSON")


def row_hash(
    prev_hash: bytes,
    seq: int,
    time: str,
    kind: str,
    peer: str,
    decision: str,
    reason: str | None,
    args: str | None,
    result: str | None,
    detail: str | None,
) -> bytes:
    """A row's hash from the previous hash and its columns as stored.

    Returns:
        ``SHA-256(prev_hash || canonical_json([seq, time, kind, peer, decision,
        reason, args, result, detail]))`` (``args``/``result`` as JSON text).

    Raises:
        TypeError: a column holds a value JSON cannot represent (a tampered row).
    """
    # Strict JSON, no conversions: a BLOB smuggled into a text column must not
    # hash like the hex text it would be converted to.
    body = _dumps([seq, time, kind, peer, decision, reason, args, result, detail], None)
    return hashlib.sha256(prev_hash + body.encode("ascii")).digest()


def _utc_text(when: datetime) -> str:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("give a timezone-aware datetime (for example datetime.now(UTC))")
    return when.astimezone(UTC).isoformat(timespec="microseconds")


#: Longest text column kept (kind, peer, reason, detail), in characters: what a
#: peer supplies must not make one row large (docs/security.md).
MAX_TEXT = 1024
#: Longest ``args`` or ``result`` JSON kept, in bytes; longer is replaced by a
#: marker with its size and its first MAX_TEXT characters.
MAX_JSON = 4096


def _text(value: str | None) -> str | None:
    """``value`` storable as UTF-8 (lone surrogates escaped) and at most MAX_TEXT long."""
    if value is None:
        return None
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_TEXT:
        text = f"{text[: MAX_TEXT - 40]}... [{len(text)} characters, cut]"
    return text


def _trim(value: object, depth: int = 0) -> object:
    """``value`` with long strings and lists shortened, before any of it is encoded.

    What a peer sends (a 60 KB argument) is cut here, cheaply, rather than
    encoded whole and thrown away: a flood of refused requests must not cost
    the device a large JSON encoding each.
    """
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else f"{value[:MAX_TEXT]}... [{len(value)} chars]"
    if depth >= 4:
        return "..."
    if isinstance(value, (list, tuple)):
        kept = [_trim(v, depth + 1) for v in value[:64]]
        return [*kept, f"... [{len(value)} items]"] if len(value) > 64 else kept
    if isinstance(value, dict):
        pairs = list(value.items())
        out = {str(k)[:MAX_TEXT]: _trim(v, depth + 1) for k, v in pairs[:64]}
        if len(pairs) > 64:
            out["..."] = f"[{len(pairs)} keys]"
        return out
    return value


def _bounded_json(value: object) -> str:
    """``canonical_json`` of ``value`` trimmed, or a marker with its size and head if still
    over MAX_JSON."""
    text = canonical_json(_trim(value))
    if len(text) <= MAX_JSON:
        return text
    return canonical_json({"cut": True, "bytes": len(text), "head": text[:MAX_TEXT]})


class AuditLog:
    """An append-only, hash-chained audit log in one SQLite file.

    Args:
        path: the SQLite file; created with mode 0600 if missing (and its
            directory with mode 0700).
        durable: ``synchronous=FULL`` (fsync every row) instead of NORMAL;
            see the module documentation.

    Raises:
        AuditError: the file is not an audit log this version understands, or
            cannot be opened.

    Use it as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = False) -> None:
        self.path = Path(path)
        self.durable = durable
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Create the file ourselves so it is 0600 from its first byte (SQLite
            # would use 0644 & ~umask); SQLite copies this mode to -wal and -shm.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot create the audit log: {exc}") from exc
        self._db: sqlite3.Connection | None = None
        db = self._connect()
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":  # pragma: no cover - exotic fs
                raise AuditError(f"{self.path}: WAL mode is not available here")
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    db.execute(statement)
                # A new head only for a new log: recreating a deleted head over
                # existing rows would hide the deletion until verify.
                db.execute(
                    "INSERT INTO meta (id, schema, head_seq, head_hash) SELECT 1, ?, 0, ? "
                    "WHERE NOT EXISTS (SELECT 1 FROM meta) AND NOT EXISTS (SELECT 1 FROM audit)",
                    (SCHEMA_VERSION, ZERO_HASH),
                )
                self._check_schema(db)  # before COMMIT: leave a foreign file as it was
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            db.close()
            raise AuditError(f"{self.path}: not a usable audit log: {exc}") from exc
        except AuditError:
            db.close()
            raise
        self._db = db

    def _connect(self) -> sqlite3.Connection:
        try:
            # mode=rw: never create a stray empty file if ours was deleted meanwhile.
            uri = self.path.resolve().as_uri() + "?mode=rw"
            db = sqlite3.connect(
                uri, uri=True, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            db.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        except sqlite3.Error as exc:
            raise AuditError(f"{self.path}: cannot open the audit log: {exc}") from exc
        return db

    def _check_schema(self, db: sqlite3.Connection) -> None:
        columns = [r[1] for r in db.execute("PRAGMA table_info(audit)")]
        expected = [c.strip() for c in _COLUMNS.split(",")]
        # A missing head row (tampering) still opens, so verify() can report it.
        meta = db.execute("SELECT schema FROM meta WHERE id = 1").fetchone()
        if columns != expected or (meta is not None and meta[0] != SCHEMA_VERSION):
            raise AuditError(f"{self.path}: not an audit log of schema version {SCHEMA_VERSION}")

    # -- writing -----------------------------------------------------------------

    def record(
        self,
        kind: str,
        peer: str,
        decision: str,
        *,
        reason: str | None = None,
        args: object = None,
        result: object = None,
        detail: str | None = None,
        now: datetime | None = None,
    ) -> int:
        """Append one entry and return its seq.

        Args:
            kind: what happened (see :data:`KINDS`; other non-empty text is accepted).
            peer: the peer's device id, or the id an unauthenticated peer claimed.
            decision: one of :data:`DECISIONS`.
            reason: the reason the peer gave ("why"), if any.
            args: the arguments, anything :func:`canonical_json` can encode.
            result: the result (exit status, bytes moved, error name...).
            detail: free text.
            now: the event's time (timezone-aware; default: the current time).

        Text over :data:`MAX_TEXT` characters and JSON over :data:`MAX_JSON`
        bytes are cut (marked as such), so one row stays a few KiB whatever a
        peer sent.

        Returns:
            The new row's seq.

        Raises:
            ValueError: empty ``kind``, unknown ``decision``, a naive ``now``, or
                NaN in ``args``/``result``.
            TypeError: ``args`` or ``result`` cannot be encoded as JSON.
            AuditError: the log is closed or cannot be written (disk full, locked).
        """
        if not kind:
            raise ValueError("an audit kind must not be empty")
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        time = _utc_text(now if now is not None else datetime.now(UTC))
        kind_text, peer_text = str(_text(kind)), str(_text(peer))
        reason_text, detail_text = _text(reason), _text(detail)
        args_json = None if args is None else _bounded_json(args)
        result_json = None if result is None else _bounded_json(result)
        values = (time, kind_text, peer_text, decision, reason_text, args_json, result_json)
        with self._lock:
            db = self._open_db()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    # Read the head inside the write transaction: another process
                    # may have appended since our last row.
                    head = db.execute(
                        "SELECT head_seq, head_hash FROM meta WHERE id = 1"
                    ).fetchone()
                    if head is None:
                        raise AuditError(
                            f"{self.path}: the head record is missing; run `pstp audit verify`"
                        )
                    seq, prev = int(head[0]) + 1, bytes(head[1])
                    digest = row_hash(prev, seq, *values, detail_text)
                    db.execute(
                        f"INSERT INTO audit ({_COLUMNS}) VALUES ({', '.join('?' * 11)})",  # noqa: S608
                        (seq, *values, detail_text, prev, digest),
                    )
                    db.execute(
                        "UPDATE meta SET head_seq = ?, head_hash = ? WHERE id = 1", (seq, digest)
                    )
                    db.execute("COMMIT")
                except BaseException:
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditError(f"{self.path}: cannot write the audit log: {exc}") from exc
            return seq

    # -- reading -----------------------------------------------------------------

    def list(
        self,
        peer: str | None = None,
        since: datetime | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[AuditRow]:
        """Entries matching every filter given, oldest first.

        Args:
            peer: only this peer's entries.
            since: only entries at or after this time (timezone-aware).
            kind: only entries of this kind.
            limit: only the last ``limit`` matching entries.

        Returns:
            The rows in seq order.

        Raises:
            ValueError: a naive ``since`` or a negative ``limit``.
            AuditError: the log is closed, unreadable, or a row cannot be
                decoded (run :meth:`verify`).
        """
        where: builtins.list[str] = []
        params: builtins.list[object] = []
        if peer is not None:
            where.append("peer = ?")
            params.append(peer)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if since is not None:
            # Stored times share one fixed-width UTC format, so text order is time order.
            where.append("time >= ?")
            params.append(_utc_text(since))
        sql = f"SELECT {_COLUMNS} FROM audit"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit is not None:
            if limit < 0:
                raise ValueError("limit must not be negative")
            sql += " ORDER BY seq DESC LIMIT ?"
            params.append(limit)
        else:
            sql += " ORDER BY seq"
        with self._snapshot() as db:
            raw = db.execute(sql, params).fetchall()
        if limit is not None:
            raw.reverse()
        return [self._decode(r) for r in raw]

    def _decode(self, r: tuple[Any, ...]) -> AuditRow:
        try:
            return AuditRow(
                seq=int(r[0]),
                time=datetime.fromisoformat(str(r[1])),
                kind=str(r[2]),
                peer=str(r[3]),
                decision=str(r[4]),
                reason=None if r[5] is None else str(r[5]),
                args=None if r[6] is None else json.loads(str(r[6])),
                result=None if r[7] is None else json.loads(str(r[7])),
                detail=None if r[8] is None else str(r[8]),
                prev_hash=bytes(r[9]),
                hash=bytes(r[10]),
            )
        except (TypeError, ValueError) as exc:
            raise AuditError(
                f"{self.path}: row {r[0]} cannot be decoded ({exc}); run `pstp audit verify`"
            ) from exc

    def head(self) -> tuple[int, str]:
        """The recorded head: the last seq and its hash in hex (``0`` and zeros when empty).

        Export it regularly (``pstp audit head``) so that a later full rewrite
        of the file is detected by ``verify(expect=...)``.

        Raises:
            AuditError: the log is closed or unreadable.
        """
        with self._snapshot() as db:
            row = db.execute("SELECT head_seq, head_hash FROM meta WHERE id = 1").fetchone()
        if row is None:
            raise AuditError(f"{self.path}: the head record is missing; run `pstp audit verify`")
        return int(row[0]), bytes(row[1]).hex()

    def verify(self, expect: tuple[int, str] | None = None) -> VerifyReport:
        """Check the whole chain and the recorded head.

        Args:
            expect: an exported head ``(seq, hex hash)``: also check that row
                ``seq`` still has that hash (seq 0 is the empty log).

        Returns:
            ``ok`` and the row count, or the first bad seq and what is wrong with it.

        Raises:
            AuditError: the log is closed or cannot be read at all.
        """
        with self._snapshot() as db:
            return _verify(db, expect)

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on a connection of its own: one consistent view."""
        self._open_db()
        db = self._connect()
        try:
            db.execute("BEGIN")
            yield db
        except sqlite3.Error as exc:
            raise AuditError(f"{self.path}: cannot read the audit log: {exc}") from exc
        finally:
            with suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            db.close()

    # -- lifetime ----------------------------------------------------------------

    def _open_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise AuditError(f"{self.path}: the audit log is closed")
        return self._db

    def close(self) -> None:
        """Close the log (idempotent); later calls raise :class:`AuditError`."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"


def _verify(db: sqlite3.Connection, expect: tuple[int, str] | None) -> VerifyReport:
    def bad(rows: int, seq: int, problem: str, head: bytes) -> VerifyReport:
        return VerifyReport(False, rows, seq, problem, head.hex())

    meta = db.execute("SELECT head_seq, head_hash FROM meta WHERE id = 1").fetchone()
    if meta is None:
        return bad(0, 0, "the head record (meta table) is missing", ZERO_HASH)
    prev, expected = ZERO_HASH, 1
    expect_seq = expect[0] if expect else -1
    expected_hash: bytes | None = ZERO_HASH if expect_seq == 0 else None
    for row in db.execute(f"SELECT {_COLUMNS} FROM audit ORDER BY seq"):  # noqa: S608
        seq, stored_prev, stored_hash = row[0], row[9], row[10]
        count = expected - 1
        if seq != expected:
            if seq > expected:
                gap = (
                    f"row {expected} is"
                    if seq == expected + 1
                    else f"rows {expected}-{seq - 1} are"
                )
                return bad(count, expected, f"{gap} missing (deleted)", prev)
            return bad(count, seq, f"unexpected seq {seq} before {expected} (inserted)", prev)
        if stored_prev != prev:
            return bad(
                count, seq, "prev_hash does not match the previous row (replaced or inserted)", prev
            )
        try:
            digest = row_hash(prev, *row[:9])
        except (TypeError, ValueError):
            return bad(count, seq, "a column holds a value of the wrong type (modified)", prev)
        if digest != stored_hash:
            return bad(count, seq, "hash mismatch: the row was modified", prev)
        if seq == expect_seq:
            expected_hash = digest
        prev, expected = digest, expected + 1
    rows = expected - 1
    head_seq, head_hash = meta[0], meta[1]
    if not isinstance(head_seq, int) or not isinstance(head_hash, bytes):
        return bad(rows, rows, "the head record is malformed (modified)", prev)
    if rows < head_seq:
        return bad(
            rows,
            rows + 1,
            f"the chain ends at seq {rows} but the head records seq {head_seq}: "
            "the last rows were deleted",
            prev,
        )
    if rows > head_seq:
        return bad(
            rows, head_seq + 1, f"rows after the recorded head (seq {head_seq}) were added", prev
        )
    if head_hash != prev:
        return bad(rows, rows, "the last row's hash differs from the recorded head", prev)
    if expect is not None:
        if expected_hash is None:
            return bad(
                rows,
                rows + 1,
                f"the log ends at seq {rows}, before the exported head seq {expect_seq}: "
                "it was truncated or rewritten",
                prev,
            )
        if expected_hash.hex() != expect[1].strip().lower():
            return bad(
                rows,
                expect_seq,
                "hash differs from the exported head: history up to it was rewritten",
                prev,
            )
    return VerifyReport(True, rows, None, "", prev.hex())
