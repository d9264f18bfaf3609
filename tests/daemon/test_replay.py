"""The replay guard survives a restart of `pstp serve` (docs/protocol.md §5.1, §12.2)."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pstp.daemon.app import _GUARD_SAVE_INTERVAL
from pstp.daemon.replay import GUARD_NAME, MAX_AHEAD_NS, load_guard, save_guard, snapshot
from pstp.protocol.handshake import KeyRing
from tests.cli.test_pair import env_for, free_port
from tests.helpers import TIMEOUT, make_client

KEY = bytes(range(7, 39))

CONFIG = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[peers.phone]
key = "{key}"
"""


@contextmanager
def _serve(cfg: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(cfg),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving 1 peer(s)" in line, proc.stderr.read() if proc.stderr else ""
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            assert proc.wait(TIMEOUT) == 0


def _answer(port: int, hs_init: bytes) -> bytes:
    """Send one HS_INIT; return what the device sends back before it goes quiet or hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(hs_init)
        s.settimeout(1.0)
        try:
            return s.recv(4096)
        except TimeoutError:
            return b""


def test_a_recorded_hs_init_is_refused_after_a_restart(tmp_path: Path) -> None:
    """An HS_INIT answered before a restart gets silence after it; the guard file is 0600."""
    port = free_port()
    cfg = tmp_path / "pstp.toml"
    cfg.write_text(CONFIG.format(port=port, key=KEY.hex()))
    os.chmod(cfg, 0o600)
    client = make_client(pair_key=KEY, responder_id="home", timestamp=time.time_ns())
    client.start(0.0)
    recorded = client.data_to_send()

    with _serve(cfg):
        assert _answer(port, recorded)  # HS_RESP: accepted the first time
        assert _answer(port, recorded) == b""  # the running daemon refuses the replay

    guard = tmp_path / GUARD_NAME
    assert stat.S_IMODE(guard.stat().st_mode) == 0o600
    assert load_guard(guard)["phone"] > 0

    with _serve(cfg):
        assert _answer(port, recorded) == b""  # and so does the restarted one
        fresh = make_client(pair_key=KEY, responder_id="home", timestamp=time.time_ns())
        fresh.start(0.0)
        assert _answer(port, fresh.data_to_send())  # a new handshake still works


def test_the_guard_is_saved_while_running(tmp_path: Path) -> None:
    """A daemon killed without warning has saved the guard within its interval (5 s)."""
    port = free_port()
    cfg = tmp_path / "pstp.toml"
    cfg.write_text(CONFIG.format(port=port, key=KEY.hex()))
    os.chmod(cfg, 0o600)
    client = make_client(pair_key=KEY, responder_id="home", timestamp=time.time_ns())
    client.start(0.0)
    with _serve(cfg) as proc:
        assert _answer(port, client.data_to_send())
        deadline = time.monotonic() + 3 * _GUARD_SAVE_INTERVAL
        while not (tmp_path / GUARD_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.kill()
        proc.wait(TIMEOUT)
    assert load_guard(tmp_path / GUARD_NAME)["phone"] > 0


def test_round_trip(tmp_path: Path) -> None:
    """What save_guard writes, load_guard reads back."""
    path = tmp_path / GUARD_NAME
    save_guard(path, {"b": 2, "a": 10**18})
    assert load_guard(path) == {"a": 10**18, "b": 2}


def test_missing_file_is_an_empty_guard(tmp_path: Path) -> None:
    """First start: no file, no warning."""
    assert load_guard(tmp_path / GUARD_NAME) == {}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"format": 2, "newest": {}}',
        '{"format": 1, "newest": []}',
        '{"format": 1}',
        b"\xff\xfe".decode("latin-1"),
    ],
)
def test_a_damaged_file_is_reported_and_ignored(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon still starts on a damaged guard file; the log says the file was ignored."""
    path = tmp_path / GUARD_NAME
    path.write_text(text, encoding="latin-1")
    with caplog.at_level(logging.WARNING, logger="pstp.daemon.replay"):
        assert load_guard(path) == {}
    assert "ignoring the replay guard" in caplog.text


def test_values_that_are_not_timestamps_are_dropped(tmp_path: Path) -> None:
    """Only integers in [0, 2**64) are taken; the rest of the file still counts."""
    path = tmp_path / GUARD_NAME
    newest = {"ok": 5, "bool": True, "neg": -1, "big": 2**64, "text": "7", "float": 1.5}
    path.write_text(json.dumps({"format": 1, "newest": newest}))
    assert load_guard(path) == {"ok": 5}


YEAR_NS = 365 * 86400 * 10**9


def _hs_init(timestamp: int) -> bytes:
    client = make_client(pair_key=KEY, responder_id="home", timestamp=timestamp)
    client.start(0.0)
    return client.data_to_send()


def test_a_far_future_hs_init_does_not_lock_the_key_out_after_a_restart(tmp_path: Path) -> None:
    """A key holder's HS_INIT stamped 10 years ahead is refused and saves nothing.

    Before the fix the device accepted it and the guard saved the 10-years-ahead
    value: every later HS_INIT of the key, at any honest time, was refused across
    restarts.  Now the responder refuses a timestamp more than 5 minutes ahead of
    its clock (docs/protocol.md §5.1), and the key keeps working.
    """
    port = free_port()
    cfg = tmp_path / "pstp.toml"
    cfg.write_text(CONFIG.format(port=port, key=KEY.hex()))
    os.chmod(cfg, 0o600)
    with _serve(cfg):
        assert not _answer(port, _hs_init(time.time_ns() + 10 * YEAR_NS))
        assert not _answer(port, _hs_init(time.time_ns() + MAX_AHEAD_NS + 60 * 10**9))
        assert _answer(port, _hs_init(time.time_ns()))  # the honest clock still works
    saved = json.loads((tmp_path / GUARD_NAME).read_text())["newest"]["phone"]
    assert saved <= time.time_ns()
    with _serve(cfg):
        assert _answer(port, _hs_init(time.time_ns()))


def test_a_saved_far_future_value_is_lowered_on_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A guard file written before the bound existed cannot keep the key out for good."""
    path = tmp_path / GUARD_NAME
    now = 1_800_000_000 * 10**9
    save_guard(path, {"phone": 2**63, "tv": now + 1})
    with caplog.at_level(logging.WARNING, logger="pstp.daemon.replay"):
        assert load_guard(path, now=now) == {"phone": now + MAX_AHEAD_NS, "tv": now + 1}
    assert "ahead of this clock" in caplog.text
    assert load_guard(path)["phone"] <= time.time_ns() + MAX_AHEAD_NS


def test_snapshot_bounds_what_is_saved() -> None:
    ring = KeyRing()
    ring.add("phone", KEY)
    ring.add("tv", bytes(32))
    ring.add("idle", bytes(range(32)))
    now = 1_800_000_000 * 10**9
    for peer in ring:
        if peer.device_id == "phone":
            peer.accept(now + YEAR_NS)
        elif peer.device_id == "tv":
            peer.accept(now - 5)
    assert snapshot(ring, now=now) == {"phone": now + MAX_AHEAD_NS, "tv": now - 5}
