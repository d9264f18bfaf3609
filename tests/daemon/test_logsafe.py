"""Log hygiene: peer text is escaped in the log, and floods of one message are cut.

The end-to-end test runs a real `pstp serve`: a peer puts a file whose name
holds a newline and ESC, and the daemon's log line names it escaped.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from pstp.asyncio.client import connect
from pstp.client.files import put
from pstp.daemon.logsafe import FORMAT, RateLimit, SafeFormatter, escape, install
from tests.cli.test_pair import env_for, free_port
from tests.helpers import TIMEOUT

KEY = bytes(range(9, 41))
EVIL = "x\n2026-01-01 00:00:00,000 pstp.daemon INFO forged\x1b[2J\x07\x7f\x85\u2028\tend"


def test_escape_covers_c0_del_c1_and_the_unicode_separators() -> None:
    assert escape("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert escape("\x00\x1b[2J\x7f\x80\x9f") == "\\x00\\x1b[2J\\x7f\\x80\\x9f"
    assert escape("\u2028\u2029") == "\\u2028\\u2029"
    assert escape("plain é ü ✓ \\ text") == "plain é ü ✓ \\ text"
    assert escape("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"


def _record(
    msg: str, *args: object, name: str = "pstp.test", exc: bool = False
) -> logging.LogRecord:
    ei = None
    if exc:
        try:
            raise ValueError("bad\x1b[2J")
        except ValueError:
            ei = sys.exc_info()
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, ei)


def test_formatter_escapes_the_message_but_keeps_tracebacks_multiline() -> None:
    fmt = SafeFormatter("%(levelname)s %(message)s")
    assert fmt.format(_record("file %s for %s", EVIL, "phone")) == (
        "INFO file x\\n2026-01-01 00:00:00,000 pstp.daemon INFO forged\\x1b[2J\\x07\\x7f\\x85"
        "\\u2028\\tend for phone"
    )
    record = _record("failed for %s", "a\nb", exc=True)
    out = fmt.format(record)
    first, *rest = out.split("\n")
    assert first == "INFO failed for a\\nb"
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: bad\\x1b[2J"
    assert record.getMessage() == "failed for a\nb"  # the record itself is untouched


def test_rate_limit_lets_a_burst_through_then_summarises_when_the_period_rolls() -> None:
    now = [0.0]
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(SafeFormatter("%(name)s %(message)s"))
    limit = RateLimit(3, 10.0, clock=lambda: now[0])
    limit.attach(handler)
    for i in range(100):
        handler.handle(_record("handshake failed from %s", f"10.0.0.{i}"))
    handler.handle(_record("another %s", 1))  # another template: its own budget
    assert out.getvalue().splitlines() == [
        "pstp.test handshake failed from 10.0.0.0",
        "pstp.test handshake failed from 10.0.0.1",
        "pstp.test handshake failed from 10.0.0.2",
        "pstp.test another 1",
    ]
    now[0] = 10.5
    handler.handle(_record("handshake failed from %s", "10.0.0.200"))
    assert out.getvalue().splitlines()[4:] == [
        "pstp.test 97 similar messages suppressed in 10 s: 'handshake failed from %s'",
        "pstp.test handshake failed from 10.0.0.200",
    ]
    for _ in range(5):
        handler.handle(_record("handshake failed from %s", "x"))
    limit.flush()
    assert out.getvalue().splitlines()[-1] == (
        "pstp.test 3 similar messages suppressed in 10 s: 'handshake failed from %s'"
    )


def test_rate_limit_key_table_is_bounded() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    limit = RateLimit(1, 60.0, max_keys=4, clock=lambda: 0.0)
    limit.attach(handler)
    for i in range(1000):  # messages formatted in advance: a key each
        handler.handle(_record(f"message {i}"))
        handler.handle(_record(f"message {i}"))  # suppressed
    assert len(limit._windows) == 4
    lines = out.getvalue().splitlines()
    assert lines.count("1 similar messages suppressed in 60 s: 'message 0'") == 1
    assert len(lines) == 1000 + 996  # every message once; a summary for each forgotten key


def test_install_puts_both_on_the_root_handler() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    try:
        handler, limit = install(out, burst=2)
        assert isinstance(handler.formatter, SafeFormatter) and limit in handler.filters
        for _ in range(5):
            logging.getLogger("pstp.t").warning("peer said %s", "\x1b[2J")
        assert out.getvalue().count("peer said \\x1b[2J") == 2
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert FORMAT.endswith("%(message)s")


def _serve_files(tmp_path: Path) -> tuple[subprocess.Popen[str], int, Path]:
    port = free_port()
    root = tmp_path / "rw"
    root.mkdir()
    cfg = tmp_path / "home.toml"
    cfg.write_text(
        f'[device]\nid = "home"\nlisten = ["127.0.0.1:{port}"]\ndiscovery = false\n'
        f'[peers.phone]\nkey = "{KEY.hex()}"\n'
        f'[peers.phone.policy]\nfiles = [ {{ root = "{root}", write = true }} ]\n'
    )
    os.chmod(cfg, 0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(cfg),
    )
    assert proc.stdout is not None
    assert "serving 1 peer(s)" in proc.stdout.readline()
    return proc, port, root


def _put(port: int, local: Path, remotes: list[str]) -> None:
    async def go() -> None:
        s = await connect("127.0.0.1", port, pair_key=KEY, device_id="home", own_id="phone")
        async with s:
            for remote in remotes:
                await put(s, [str(local)], remote, force=True)

    asyncio.run(go())


def test_serve_escapes_a_peer_file_name_in_its_log(tmp_path: Path) -> None:
    """A real `pstp serve`: a put of a file named with a newline and ESC is logged escaped."""
    local = tmp_path / "local.txt"
    local.write_text("hi")
    proc, port, root = _serve_files(tmp_path)
    try:
        _put(port, local, [f"{root}/{EVIL}"])
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=TIMEOUT)
    assert (root / EVIL).read_text() == "hi"
    lines = err.splitlines()
    put_lines = [line for line in lines if " pstp.daemon.files INFO file put " in line]
    assert len(put_lines) == 1, err
    assert "x\\n2026-01-01 00:00:00,000 pstp.daemon INFO forged\\x1b[2J\\x07" in put_lines[0]
    assert not any(line.startswith("2026-01-01") for line in lines), err
    assert "\x1b" not in err and "\x07" not in err and "\u2028" not in err


def test_serve_rate_limits_repeated_log_records(tmp_path: Path) -> None:
    """A real `pstp serve`: 25 puts log 10 lines, and the rest are counted at shutdown."""
    local = tmp_path / "local.txt"
    local.write_text("hi")
    proc, port, root = _serve_files(tmp_path)
    try:
        _put(port, local, [f"{root}/f{i}" for i in range(25)])
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=TIMEOUT)
    assert len(list(root.iterdir())) == 25
    lines = err.splitlines()
    logged = sum(" pstp.daemon.files INFO file put " in line for line in lines)
    summaries = [
        re.search(r" (\d+) similar messages suppressed in 10 s: 'file %s %s for", line)
        for line in lines
        if "similar messages suppressed" in line
    ]
    suppressed = [int(m[1]) for m in summaries if m]
    # 10 a period (the 25 puts take well under 10 s: then exactly 10 logged, 15 counted).
    assert suppressed and len(suppressed) == len(summaries), err
    assert logged + sum(suppressed) == 25 and logged <= 10 * len(suppressed), err
