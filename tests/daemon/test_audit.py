"""The hash-chained audit log (pstp.daemon.audit) and `pstp audit` (pstp.cli.cmd_audit)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from pstp.cli.cmd_audit import parse_expect, parse_since
from pstp.cli.main import main
from pstp.daemon.audit import (
    ZERO_HASH,
    AuditError,
    AuditLog,
    audit_path,
    canonical_json,
    row_hash,
)
from pstp.settings import ConfigError, create, load

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    """A fresh audit log in a temporary directory."""
    with AuditLog(tmp_path / "audit.sqlite") as audit:
        yield audit


def fill(log: AuditLog, n: int = 10) -> None:
    """Record ``n`` varied entries, one minute apart from T0."""
    kinds = ["auth", "exec", "file", "action", "forward"]
    for i in range(n):
        log.record(
            kinds[i % len(kinds)],
            "phone" if i % 2 else "laptop",
            "allow" if i % 3 else "deny",
            reason=f"reason {i}" if i % 4 == 0 else None,
            args={"argv": ["ls", str(i)], "n": i},
            result={"status": i},
            detail=f"detail {i}",
            now=T0 + timedelta(minutes=i),
        )


def raw(log: AuditLog, sql: str, params: tuple[object, ...] = ()) -> None:
    """Change the file behind the log's back, as an attacker with write access would."""
    db = sqlite3.connect(log.path)
    try:
        db.execute(sql, params)
        db.commit()
    finally:
        db.close()


def forge(log: AuditLog, seq: int, prev: bytes, **cols: str | None) -> bytes:
    """Insert a row with a correctly computed hash; returns that hash."""
    values = {"time": T0.isoformat(timespec="microseconds"), "kind": "exec", "peer": "evil"}
    values |= {"decision": "allow", "reason": None, "args": None, "result": None, "detail": None}
    values |= cols
    digest = row_hash(prev, seq, *values.values())  # type: ignore[arg-type]
    raw(
        log,
        "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, *values.values(), prev, digest),
    )
    return digest


def row_hash_of(log: AuditLog, seq: int) -> bytes:
    """The stored hash of row ``seq``."""
    return next(r.hash for r in log.list() if r.seq == seq)


# -- recording and listing --------------------------------------------------------------


def test_record_returns_consecutive_seqs(log: AuditLog) -> None:
    """record() returns 1, 2, 3, ..."""
    assert [log.record("auth", "phone", "allow") for _ in range(3)] == [1, 2, 3]


def test_list_returns_rows_with_decoded_json(log: AuditLog) -> None:
    """list() gives every column back, args and result decoded, time aware UTC."""
    log.record(
        "exec",
        "phone",
        "ok",
        reason="backup",
        args={"argv": ["tar", "c"], "cwd": Path("/srv")},
        result={"status": 0, "digest": b"\x01\x02"},
        detail="took 3 s",
        now=T0,
    )
    [row] = log.list()
    assert row.seq == 1
    assert row.time == T0 and row.time.tzinfo is not None
    assert (row.kind, row.peer, row.decision, row.reason) == ("exec", "phone", "ok", "backup")
    assert row.args == {"argv": ["tar", "c"], "cwd": "/srv"}
    assert row.result == {"digest": "0102", "status": 0}
    assert row.detail == "took 3 s"
    assert row.prev_hash == ZERO_HASH and len(row.hash) == 32


def test_optional_columns_stay_null(log: AuditLog) -> None:
    """Entries without reason, args, result or detail keep them None."""
    log.record("session", "phone", "ok")
    [row] = log.list()
    assert (row.reason, row.args, row.result, row.detail) == (None, None, None, None)


def test_time_is_stored_as_utc_iso_with_microseconds(log: AuditLog) -> None:
    """An aware time in another zone is stored as UTC ISO 8601 with microseconds."""
    log.record(
        "auth",
        "phone",
        "deny",
        now=datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
    )
    log.record("auth", "phone", "deny")
    db = sqlite3.connect(log.path)
    times = [t for (t,) in db.execute("SELECT time FROM audit ORDER BY seq")]
    db.close()
    assert times[0] == "2024-05-01T12:00:00.000000+00:00"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", times[1])
    assert abs(datetime.fromisoformat(times[1]) - datetime.now(UTC)) < timedelta(minutes=5)


def test_list_filters_by_peer_kind_and_since(log: AuditLog) -> None:
    """Filters combine: peer, kind and since (inclusive)."""
    fill(log, 10)
    assert {r.peer for r in log.list(peer="phone")} == {"phone"}
    assert len(log.list(peer="phone")) == 5
    assert [r.seq for r in log.list(kind="exec")] == [2, 7]
    assert [r.seq for r in log.list(since=T0 + timedelta(minutes=7))] == [8, 9, 10]
    assert [r.seq for r in log.list(peer="laptop", kind="exec")] == [7]
    assert [r.seq for r in log.list(peer="phone", since=T0 + timedelta(minutes=5))] == [6, 8, 10]
    assert log.list(peer="nobody") == []


def test_since_in_another_zone_compares_as_utc(log: AuditLog) -> None:
    """A since in UTC+2 selects the same rows as the equal UTC instant."""
    fill(log, 10)
    plus2 = (T0 + timedelta(minutes=7)).astimezone(timezone(timedelta(hours=2)))
    assert [r.seq for r in log.list(since=plus2)] == [8, 9, 10]


def test_limit_keeps_the_last_rows_oldest_first(log: AuditLog) -> None:
    """limit=N returns the most recent N matching rows in seq order."""
    fill(log, 10)
    assert [r.seq for r in log.list(limit=3)] == [8, 9, 10]
    assert [r.seq for r in log.list(peer="phone", limit=2)] == [8, 10]
    assert log.list(limit=0) == []
    assert len(log.list(limit=100)) == 10


def test_record_rejects_bad_input(log: AuditLog) -> None:
    """Unknown decision, empty kind, naive time and non-JSON values raise; nothing is written."""
    with pytest.raises(ValueError, match="decision"):
        log.record("auth", "phone", "maybe")
    with pytest.raises(ValueError, match="kind"):
        log.record("", "phone", "allow")
    with pytest.raises(ValueError, match="timezone"):
        log.record("auth", "phone", "allow", now=datetime(2024, 1, 1))
    with pytest.raises(TypeError, match="object"):
        log.record("exec", "phone", "ok", args={"x": object()})
    with pytest.raises(ValueError):
        log.record("exec", "phone", "ok", result=math.nan)
    assert log.list() == []
    assert log.verify().ok


def test_list_rejects_bad_filters(log: AuditLog) -> None:
    """A negative limit or a naive since raise ValueError."""
    with pytest.raises(ValueError, match="limit"):
        log.list(limit=-1)
    with pytest.raises(ValueError, match="timezone"):
        log.list(since=datetime(2024, 1, 1))


def test_odd_text_round_trips_and_verifies(log: AuditLog) -> None:
    """NUL, non-ASCII and undecodable file names (lone surrogates) are kept and verify."""
    name = b"caf\xe9.txt".decode("utf-8", "surrogateescape")
    log.record("file", "ph\u00f6ne", "ok", args={"path": name}, detail="a\x00b", reason=name)
    [row] = log.list()
    assert row.peer == "ph\u00f6ne"
    assert row.args == {"path": name}
    assert row.detail == "a\x00b"
    assert row.reason == "caf\\udce9.txt"
    assert log.verify().ok


def test_canonical_json_is_sorted_compact_and_ascii() -> None:
    """canonical_json sorts keys, drops spaces, escapes non-ASCII and maps bytes, paths, sets."""
    assert canonical_json({"b": 1, "a": [1, "\u00e9"]}) == '{"a":[1,"\\u00e9"],"b":1}'
    assert canonical_json([b"\xff", Path("/x"), {3, 1}, T0]) == (
        '["ff","/x",[1,3],"2024-05-01T12:00:00.123456+00:00"]'
    )


def test_row_hash_follows_the_documented_formula(log: AuditLog) -> None:
    """hash = SHA-256(prev_hash || canonical JSON of the nine stored columns)."""
    log.record("exec", "phone", "ok", args={"argv": ["id"]}, now=T0)
    [row] = log.list()
    columns = [1, "2024-05-01T12:00:00.123456+00:00", "exec", "phone", "ok"]
    columns += [None, '{"argv":["id"]}', None, None]
    body = json.dumps(
        columns,
        sort_keys=True,
        separators=(",", ":"),
    )
    assert row.hash == hashlib.sha256(ZERO_HASH + body.encode()).digest()
    second = log.record("auth", "phone", "deny", now=T0)
    assert log.list()[1].prev_hash == row.hash
    assert second == 2


def test_rows_persist_and_the_chain_continues_after_reopening(tmp_path: Path) -> None:
    """A reopened log keeps its rows and appends to the same chain."""
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as first:
        fill(first, 3)
        head = first.head()
    with AuditLog(path) as second:
        assert second.head() == head
        assert second.record("auth", "phone", "allow") == 4
        assert second.list()[3].prev_hash.hex() == head[1]
        assert second.verify().ok


def test_file_and_wal_are_private(tmp_path: Path) -> None:
    """The database and its -wal/-shm files are created with mode 0600."""
    path = tmp_path / "sub" / "audit.sqlite"
    with AuditLog(path) as audit:
        audit.record("auth", "phone", "allow")
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_wal_mode_and_synchronous_setting(tmp_path: Path) -> None:
    """The file is in WAL mode; durable=True selects synchronous=FULL."""
    with AuditLog(tmp_path / "a.sqlite", durable=True) as audit:
        audit.record("auth", "phone", "allow")
        assert audit._db is not None
        assert audit._db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert audit.verify().ok
    with AuditLog(tmp_path / "b.sqlite") as audit:
        assert audit._db is not None
        assert audit._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    db = sqlite3.connect(tmp_path / "a.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


def test_not_an_audit_log_is_refused(tmp_path: Path) -> None:
    """A non-SQLite file, or a database with another 'audit' table, raises AuditError."""
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(AuditError, match="not a database"):
        AuditLog(junk)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE audit (x INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(AuditError, match="not a usable audit log"):
        AuditLog(other)
    db = sqlite3.connect(other)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert tables == {"audit"}  # left as it was: no meta table added


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    """A log written by a newer schema version is not appended to."""
    path = tmp_path / "audit.sqlite"
    AuditLog(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET schema = 99")
    db.commit()
    db.close()
    with pytest.raises(AuditError, match="schema version 1"):
        AuditLog(path)


def test_uncreatable_path_raises_audit_error(tmp_path: Path) -> None:
    """A path under a regular file cannot be created: AuditError."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(AuditError, match="cannot create"):
        AuditLog(tmp_path / "file" / "audit.sqlite")


def test_closed_log_raises(tmp_path: Path) -> None:
    """After close() (idempotent) every call raises AuditError."""
    audit = AuditLog(tmp_path / "audit.sqlite")
    audit.close()
    audit.close()
    for call in (
        lambda: audit.record("auth", "p", "allow"),
        audit.list,
        audit.verify,
        audit.head,
    ):
        with pytest.raises(AuditError, match="closed"):
            call()
    assert "audit.sqlite" in repr(audit)


def test_deleted_file_is_not_recreated_by_readers(tmp_path: Path) -> None:
    """Reading after the file vanished raises AuditError and creates no empty file."""
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as audit:
        audit.record("auth", "p", "allow")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        with pytest.raises(AuditError, match="cannot open"):
            audit.list()
        assert not path.exists()


def test_deleted_head_is_not_recreated_on_open(tmp_path: Path) -> None:
    """Reopening a log whose head was deleted keeps it missing: verify reports, record fails."""
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as audit:
        fill(audit, 3)
        raw(audit, "DELETE FROM meta")
    with AuditLog(path) as audit:
        report = audit.verify()
        assert (report.ok, report.first_bad_seq) == (False, 0)
        with pytest.raises(AuditError, match="head record is missing"):
            audit.record("auth", "p", "allow")
        assert len(audit.list()) == 3


def test_write_errors_become_audit_errors(log: AuditLog) -> None:
    """A write that SQLite refuses (here: no head record) raises AuditError, not sqlite3.Error."""
    raw(log, "DELETE FROM meta")
    with pytest.raises(AuditError, match="head record is missing"):
        log.record("auth", "phone", "allow")
    with pytest.raises(AuditError, match="head record is missing"):
        log.head()
    raw(log, "DROP TABLE audit")
    raw(log, "CREATE TABLE audit (x)")
    raw(log, "INSERT INTO meta VALUES (1, 1, 0, zeroblob(32))")
    with pytest.raises(AuditError, match="cannot write"):
        log.record("auth", "phone", "allow")
    with pytest.raises(AuditError, match="cannot read"):
        log.list()


# -- verification -----------------------------------------------------------------------


def test_verify_ok_on_empty_and_filled_logs(log: AuditLog) -> None:
    """An empty log and an untouched log verify; head() matches the last row."""
    assert log.verify().ok
    assert log.verify().rows == 0
    assert log.head() == (0, ZERO_HASH.hex())
    fill(log, 20)
    report = log.verify()
    assert (report.ok, report.rows, report.first_bad_seq, report.problem) == (True, 20, None, "")
    assert log.head() == (20, row_hash_of(log, 20).hex())
    assert report.head == log.head()[1]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("time", "2024-05-01T11:00:00.000000+00:00"),
        ("kind", "auth"),
        ("peer", "mallory"),
        ("decision", "deny"),
        ("reason", "innocent"),
        ("reason", None),
        ("args", '{"argv":["true"]}'),
        ("result", '{"status":0}'),
        ("detail", "nothing to see"),
        ("hash", b"\x00" * 32),
    ],
)
def test_modified_row_is_reported_by_seq(log: AuditLog, column: str, value: object) -> None:
    """Changing any column of row 5 with a raw UPDATE makes verify name seq 5."""
    fill(log, 8)
    raw(log, f"UPDATE audit SET {column} = ? WHERE seq = 5", (value,))  # noqa: S608
    report = log.verify()
    assert not report.ok
    assert report.first_bad_seq == 5
    assert report.rows == 4
    assert "modified" in report.problem or "prev_hash" in report.problem


def test_modified_row_with_recomputed_hash_breaks_the_next_link(log: AuditLog) -> None:
    """Rehashing an edited row does not help: the next row's prev_hash no longer matches."""
    fill(log, 6)
    prev = row_hash_of(log, 2)
    raw(log, "DELETE FROM audit WHERE seq = 3")
    forge(log, 3, prev, peer="mallory")
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 4)
    assert "prev_hash" in report.problem


def test_value_of_the_wrong_type_is_reported(log: AuditLog) -> None:
    """A BLOB smuggled into a text column is reported, not a crash."""
    fill(log, 3)
    raw(log, "UPDATE audit SET detail = ? WHERE seq = 2", (b"\x00\xff",))
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert "wrong type" in report.problem


def test_undecodable_row_makes_list_raise(log: AuditLog) -> None:
    """list() raises AuditError naming the row whose JSON was corrupted."""
    fill(log, 3)
    raw(log, "UPDATE audit SET args = '{not json' WHERE seq = 2")
    with pytest.raises(AuditError, match="row 2"):
        log.list()


@pytest.mark.parametrize(("deleted", "first_bad"), [([5], 5), ([1], 1), ([3, 4, 5], 3)])
def test_deleted_middle_rows_are_detected(
    log: AuditLog, deleted: list[int], first_bad: int
) -> None:
    """Deleting rows before the end is reported at the first missing seq."""
    fill(log, 10)
    for seq in deleted:
        raw(log, "DELETE FROM audit WHERE seq = ?", (seq,))
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, first_bad)
    assert "missing" in report.problem
    assert report.rows == first_bad - 1


def test_deleted_and_renumbered_rows_are_detected(log: AuditLog) -> None:
    """Closing the gap by renumbering the later rows breaks the chain at the gap."""
    fill(log, 6)
    raw(log, "DELETE FROM audit WHERE seq = 3")
    raw(log, "UPDATE audit SET seq = seq - 1 WHERE seq > 3")
    raw(log, "UPDATE meta SET head_seq = 5")
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 3)


@pytest.mark.parametrize("count", [1, 3])
def test_deleted_tail_rows_are_detected_via_the_head(log: AuditLog, count: int) -> None:
    """Deleting the last rows leaves a valid chain, but it ends before the recorded head."""
    fill(log, 10)
    raw(log, "DELETE FROM audit WHERE seq > ?", (10 - count,))
    report = log.verify()
    assert (report.ok, report.first_bad_seq, report.rows) == (False, 11 - count, 10 - count)
    assert "deleted" in report.problem


def test_every_row_deleted_is_detected(log: AuditLog) -> None:
    """An emptied table no longer matches its head."""
    fill(log, 4)
    raw(log, "DELETE FROM audit")
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 1)


def test_forged_row_appended_is_detected(log: AuditLog) -> None:
    """A correctly hashed row added after the head is reported as added."""
    fill(log, 5)
    forge(log, 6, row_hash_of(log, 5))
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 6)
    assert "added" in report.problem


def test_forged_row_before_the_first_is_detected(log: AuditLog) -> None:
    """A row inserted with seq 0 is reported as inserted."""
    fill(log, 3)
    forge(log, 0, ZERO_HASH)
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 0)
    assert "inserted" in report.problem


def test_tampered_head_is_detected(log: AuditLog) -> None:
    """A changed, malformed or missing head record is reported."""
    fill(log, 3)
    raw(log, "UPDATE meta SET head_hash = ?", (b"\x01" * 32,))
    assert (log.verify().ok, log.verify().first_bad_seq) == (False, 3)
    raw(log, "UPDATE meta SET head_hash = 'text'")
    assert "malformed" in log.verify().problem
    raw(log, "DELETE FROM meta")
    report = log.verify()
    assert not report.ok
    assert "head record" in report.problem


def test_rewritten_tail_passes_verify_but_not_an_exported_head(log: AuditLog) -> None:
    """Dropping rows and fixing the head forges history, which an exported head exposes."""
    fill(log, 6)
    exported = log.head()
    assert log.verify(expect=exported).ok
    raw(log, "DELETE FROM audit WHERE seq > 4")
    raw(log, "UPDATE meta SET head_seq = 4, head_hash = ?", (row_hash_of(log, 4),))
    assert log.verify().ok  # the documented limit: a full rewrite is self-consistent
    report = log.verify(expect=exported)
    assert (report.ok, report.first_bad_seq) == (False, 5)
    assert "exported head" in report.problem


def test_rewritten_history_differs_from_an_exported_head(log: AuditLog) -> None:
    """Re-hashing a whole chain with one changed row breaks an older exported head."""
    fill(log, 3)
    exported = (2, row_hash_of(log, 2).hex())
    rows = log.list()
    raw(log, "DELETE FROM audit")
    prev = ZERO_HASH
    for r in rows:
        prev = forge(
            log,
            r.seq,
            prev,
            time=r.time.isoformat(timespec="microseconds"),
            kind=r.kind,
            peer="mallory" if r.seq == 1 else r.peer,
            decision=r.decision,
            reason=r.reason,
            args=canonical_json(r.args),
            result=canonical_json(r.result),
            detail=r.detail,
        )
    raw(log, "UPDATE meta SET head_hash = ?", (prev,))
    assert log.verify().ok
    report = log.verify(expect=exported)
    assert (report.ok, report.first_bad_seq) == (False, 2)


def test_expect_accepts_the_empty_head_and_case(log: AuditLog) -> None:
    """seq 0 with zeros is the empty log's head; hex case does not matter."""
    assert log.verify(expect=(0, ZERO_HASH.hex())).ok
    fill(log, 2)
    assert log.verify(expect=(0, ZERO_HASH.hex())).ok
    assert log.verify(expect=(1, row_hash_of(log, 1).hex().upper())).ok
    assert not log.verify(expect=(0, "11" * 32)).ok


# -- concurrency and speed --------------------------------------------------------------


def test_eight_threads_record_one_unbroken_chain(log: AuditLog) -> None:
    """8 threads x 200 records give 1600 rows, seqs 1..1600, and the chain verifies."""
    seqs: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        mine = [log.record("exec", f"peer{n}", "ok", args={"i": i}) for i in range(200)]
        with lock:
            seqs.extend(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 1601))
    report = log.verify()
    assert (report.ok, report.rows) == (True, 1600)
    assert len(log.list(peer="peer3")) == 200


def test_two_writers_on_one_file_share_the_chain(tmp_path: Path) -> None:
    """Two AuditLog objects (as two processes would) interleave into one valid chain."""
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as a, AuditLog(path) as b:
        seqs = [(a if i % 2 else b).record("auth", "p", "allow") for i in range(50)]
        assert seqs == list(range(1, 51))
        assert a.verify().ok and b.verify().ok


def test_readers_do_not_block_while_writers_append(log: AuditLog) -> None:
    """verify() and list() run while another thread keeps recording."""
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            log.record("file", "phone", "ok")

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(20):
            assert log.verify().ok
            log.list(limit=5)
    finally:
        stop.set()
        t.join()
    assert log.verify().ok


async def test_usable_from_asyncio(log: AuditLog) -> None:
    """Coroutines may call record() directly or through asyncio.to_thread."""
    log.record("session", "phone", "ok")
    await asyncio.gather(*(asyncio.to_thread(log.record, "exec", "phone", "ok") for _ in range(20)))
    assert log.verify().rows == 21


def test_record_rate(log: AuditLog) -> None:
    """500 records take well under 5 s (the target is 2 000 rows/s)."""
    t = time.perf_counter()
    for i in range(500):
        log.record("exec", "phone", "ok", args={"argv": ["ls", str(i)]}, result={"status": 0})
    elapsed = time.perf_counter() - t
    print(f"audit record rate: {500 / elapsed:.0f} rows/s")
    assert elapsed < 5.0
    assert log.verify().rows == 500


# -- where the log lives ----------------------------------------------------------------


def settings_with(tmp_path: Path, extra: str = "") -> Path:
    """A fresh config for device 'home', with ``extra`` TOML appended."""
    path = create(tmp_path / "cfg" / "pstp.toml", "home")
    if extra:
        path.write_text(path.read_text() + extra)
    return path


def test_audit_path_defaults_beside_the_config(tmp_path: Path) -> None:
    """Without [audit], the log is audit.sqlite in the config's directory."""
    cfg = settings_with(tmp_path)
    assert audit_path(load(cfg)) == tmp_path / "cfg" / "audit.sqlite"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("logs/a.db", "cfg/logs/a.db"),
        ("/abs/a.db", "/abs/a.db"),
    ],
)
def test_audit_path_from_config(tmp_path: Path, value: str, expected: str) -> None:
    """[audit] path is used; a relative one is taken from the config's directory."""
    cfg = settings_with(tmp_path, f'\n[audit]\npath = "{value}"\n')
    assert audit_path(load(cfg)) == tmp_path / expected


def test_audit_path_expands_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leading ~ in [audit] path is the user's home."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = settings_with(tmp_path, '\n[audit]\npath = "~/audit.db"\n')
    assert audit_path(load(cfg)) == tmp_path / "home" / "audit.db"


@pytest.mark.parametrize(
    ("extra", "key"),
    [('audit = "x"\n', "audit"), ("[audit]\npath = 3\n", "audit.path")],
)
def test_audit_path_rejects_bad_config(tmp_path: Path, extra: str, key: str) -> None:
    """A non-table [audit] or a non-string path is a ConfigError naming the key."""
    cfg = settings_with(tmp_path)
    cfg.write_text(extra + cfg.read_text())
    with pytest.raises(ConfigError) as info:
        audit_path(load(cfg))
    assert info.value.key == key


# -- the CLI ------------------------------------------------------------------------------


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A config whose audit log holds ten entries."""
    path = settings_with(tmp_path)
    with AuditLog(path.parent / "audit.sqlite") as audit:
        fill(audit, 10)
    return path


def cli(cfg: Path, *argv: str) -> int:
    """Run `pstp --config CFG audit ARGV`."""
    return main(["--config", str(cfg), "audit", *argv])


def test_cli_list_prints_a_table(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit list` prints a header and one line per entry, oldest first."""
    assert cli(cfg, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["SEQ", "TIME", "(UTC)", "KIND", "PEER"]
    assert len(lines) == 11
    assert lines[1].split()[:6] == ["1", "2024-05-01", "12:00:00", "auth", "laptop", "deny"]
    assert "reason='reason 0'" in lines[1]
    assert 'args={"argv": ["ls", "0"], "n": 0}' in lines[1]
    assert lines[-1].split()[0] == "10"


def test_cli_list_json_filters(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object per line; --peer, --kind and --limit filter."""
    assert cli(cfg, "list", "--json", "--peer", "phone", "--limit", "2") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in rows] == [8, 10]
    assert rows[0]["peer"] == "phone" and rows[0]["args"] == {"argv": ["ls", "7"], "n": 7}
    assert rows[0]["time"] == "2024-05-01T12:07:00.123456+00:00"
    assert len(rows[0]["hash"]) == 64
    assert cli(cfg, "list", "--json", "--kind", "file") == 0
    assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [3, 8]


def test_cli_list_since(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--since takes an ISO time or an age."""
    assert cli(cfg, "list", "--json", "--since", "2024-05-01T12:08:01Z") == 0
    assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [10]
    assert cli(cfg, "list", "--since", "1h") == 0  # entries are from 2024
    assert capsys.readouterr().out.strip() == "no matching audit entries"


def test_cli_list_bad_arguments(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --since or a negative --limit is a usage error (exit 2)."""
    assert cli(cfg, "list", "--since", "yesterday") == 2
    assert "--since" in capsys.readouterr().err
    assert cli(cfg, "list", "--limit", "-1") == 2


def test_cli_list_escapes_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Peer-supplied text cannot send terminal escapes through the table."""
    cfg = settings_with(tmp_path)
    with AuditLog(cfg.parent / "audit.sqlite") as audit:
        audit.record("auth", "ev\x1b[2Jil\u202e", "deny", detail="\x9b31m")
        audit.record("session", "phone", "ok")
    assert cli(cfg, "list") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].endswith("ok")  # no details: no trailing padding
    assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out
    assert "ev\\x1b[2Jil\\u202e" in out


def test_cli_verify_ok(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit verify` on an intact log exits 0 with the row count and head."""
    assert cli(cfg, "verify") == 0
    with AuditLog(cfg.parent / "audit.sqlite") as audit:
        head = audit.head()[1]
    assert capsys.readouterr().out.strip() == f"ok: 10 rows, head {head}"


def test_cli_verify_names_the_first_bad_seq(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tampered log makes `audit verify` exit 1 naming the seq and the problem."""
    db = sqlite3.connect(cfg.parent / "audit.sqlite")
    db.execute("UPDATE audit SET decision = 'ok' WHERE seq = 6")
    db.commit()
    db.close()
    assert cli(cfg, "verify") == 1
    err = capsys.readouterr().err
    assert "seq 6" in err and "modified" in err


def test_cli_head_and_verify_expect(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit head` prints SEQ:HASH, which `verify --expect` accepts until history changes."""
    assert cli(cfg, "head") == 0
    exported = capsys.readouterr().out.strip()
    assert re.fullmatch(r"10:[0-9a-f]{64}", exported)
    assert cli(cfg, "verify", "--expect", exported) == 0
    capsys.readouterr()
    assert cli(cfg, "verify", "--expect", "10:" + "0" * 64) == 1
    assert "exported head" in capsys.readouterr().err
    assert cli(cfg, "verify", "--expect", "ten") == 2


def test_cli_uses_the_configured_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """[audit] path in the config points the commands at that file."""
    cfg = settings_with(tmp_path, '\n[audit]\npath = "elsewhere.db"\n')
    with AuditLog(cfg.parent / "elsewhere.db") as audit:
        audit.record("pairing", "phone", "ok")
    assert cli(cfg, "head") == 0
    assert capsys.readouterr().out.startswith("1:")


@pytest.mark.parametrize("command", ["list", "verify", "head"])
def test_cli_missing_log(tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Without an audit file each command exits 1 and says where it looked (creating nothing)."""
    cfg = settings_with(tmp_path)
    assert cli(cfg, command) == 1
    assert "no audit log at" in capsys.readouterr().err
    assert not (cfg.parent / "audit.sqlite").exists()


@pytest.mark.parametrize("command", ["list", "verify", "head"])
def test_cli_unusable_log(tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not an audit log makes each command exit 1 with a message."""
    cfg = settings_with(tmp_path)
    (cfg.parent / "audit.sqlite").write_bytes(b"garbage" * 200)
    assert cli(cfg, command) == 1
    assert "audit log" in capsys.readouterr().err


def test_cli_list_undecodable_row(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit list` exits 1 naming a row whose JSON was corrupted, and suggests verify."""
    db = sqlite3.connect(cfg.parent / "audit.sqlite")
    db.execute("UPDATE audit SET result = '[' WHERE seq = 3")
    db.commit()
    db.close()
    assert cli(cfg, "list") == 1
    err = capsys.readouterr().err
    assert "row 3" in err and "pstp audit verify" in err


def test_cli_deleted_head(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the head record deleted, `head` and `verify` exit 1 saying so."""
    db = sqlite3.connect(cfg.parent / "audit.sqlite")
    db.execute("DELETE FROM meta")
    db.commit()
    db.close()
    assert cli(cfg, "head") == 1
    assert "head record is missing" in capsys.readouterr().err
    assert cli(cfg, "verify") == 1
    assert "head record" in capsys.readouterr().err


def test_cli_requires_an_action(cfg: Path) -> None:
    """`pstp audit` alone is a usage error."""
    with pytest.raises(SystemExit) as info:
        cli(cfg)
    assert info.value.code == 2


def test_parse_since_ages_and_times() -> None:
    """Ages count back from now; ISO times keep their zone or take the local one."""
    now = datetime(2024, 5, 2, tzinfo=UTC)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("15m", now) == now - timedelta(minutes=15)
    assert parse_since("2D", now) == now - timedelta(days=2)
    assert parse_since("1w", now) == now - timedelta(weeks=1)
    assert parse_since("2024-05-01T10:00:00+02:00") == datetime(2024, 5, 1, 8, tzinfo=UTC)
    local = parse_since("2024-05-01")
    assert local.tzinfo is not None and local.replace(tzinfo=None) == datetime(2024, 5, 1)
    assert abs(parse_since("1h") - (datetime.now(UTC) - timedelta(hours=1))) < timedelta(minutes=1)
    with pytest.raises(ValueError, match="age"):
        parse_since("soon")


def test_parse_expect() -> None:
    """SEQ:HASH parses to (seq, lower-case hex); anything else is a ValueError."""
    assert parse_expect(f"7:{'AB' * 32}") == (7, "ab" * 32)
    for bad in ("7", "x:" + "ab" * 32, "7:abc", "-1:" + "ab" * 32):
        with pytest.raises(ValueError, match="SEQ:HASH"):
            parse_expect(bad)
