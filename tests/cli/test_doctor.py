"""`pstp doctor PEER` against a real `pstp serve`: a diagnosis leaves no failed-auth rows.

PINGs are kept on loopback and mDNS is not browsed (nothing leaves the machine);
the daemon runs with discovery off, so it advertises nothing either.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pstp.asyncio.discovery as adisc
import pstp.cli.cmd_discover as cmd
from pstp.cli.cmd_doctor import _Candidate, _distinct
from pstp.cli.main import main
from pstp.daemon.audit import AuditLog
from pstp.settings import add_peer, create
from tests.daemon.serving import PHONE, Served, serve
from tests.helpers import TIMEOUT

CONFIG = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[peers.phone]
key = "{phone}"
[peers.phone.policy]
"""


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """PINGs go to 127.0.0.1 only; the mDNS browse finds nothing."""

    async def browse(timeout: float, console: object) -> list[object]:
        return []

    monkeypatch.setattr(adisc, "broadcast_addresses", lambda: ["127.0.0.1"])
    monkeypatch.setattr(cmd, "_browse", browse)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Served]:
    """`pstp serve` for "home", which trusts "phone"."""
    served = serve(tmp_path, CONFIG)
    try:
        yield served
    finally:
        served.stop()


def _rows(served: Served) -> list[tuple[str, str, str]]:
    return [(r.kind, r.peer, r.decision) for r in AuditLog(served.audit).list()]


def _wait_for(done: Callable[[], bool], served: Served, what: str) -> None:
    """Poll until ``done()``: the daemon may audit after doctor has returned.

    Doctor is established once HS_RESP verifies and is done once its CONFIRM and
    CLOSE are sent; the daemon audits the session when it reads that CONFIRM
    (docs/protocol.md §5.5) and a failed handshake when it sees the connection
    end, in its own time: on a busy machine, after doctor has returned.
    """
    deadline = time.monotonic() + 2 * TIMEOUT
    while not done():
        assert time.monotonic() < deadline, f"{what}; daemon log:\n{served.stderr()}"
        time.sleep(0.02)


def test_a_successful_doctor_run_audits_one_session_and_no_failure(
    tmp_path: Path, home: Served, quiet: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Doctor authenticates once; home's log gains one `auth ok` and no `auth fail`."""
    cfg = create(tmp_path / "phone.toml", "phone")
    add_peer(cfg, "home", PHONE, address=f"127.0.0.1:{home.port}")
    before = _rows(home)
    for _ in range(2):
        assert main(["--config", str(cfg), "doctor", "home", "--timeout", "0.3"]) == 0
        out = capsys.readouterr().out
        assert f"[ok] 127.0.0.1:{home.port} (remembered): TCP connect ok" in out
        assert "handshake ok: authenticated as 'home'" in out
        assert "=> home: reachable and authenticated" in out
    # Both sessions over on the daemon's side too: what it audits of them is written.
    ended = "session with phone ended"
    _wait_for(lambda: home.stderr().count(ended) >= 2, home, "the daemon saw no 2 sessions end")
    added = _rows(home)[len(before) :]
    assert added == [("auth", "phone", "ok")] * 2, added


def test_a_failing_doctor_run_is_still_a_failed_authentication(
    tmp_path: Path, home: Served, quiet: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a key home does not hold, the handshake fails (exit 1) and home audits it."""
    cfg = create(tmp_path / "phone.toml", "phone")
    add_peer(cfg, "home", bytes(32), address=f"127.0.0.1:{home.port}")
    assert main(["--config", str(cfg), "doctor", "home", "--timeout", "0.3"]) == 1
    out = capsys.readouterr().out
    assert "handshake failed" in out and "=> home: no address gave a working session" in out

    def fails() -> list[tuple[str, str, str]]:
        return [row for row in _rows(home) if row[2] == "fail"]

    # The daemon audits the failure when it sees the connection end, maybe after doctor exits.
    _wait_for(lambda: bool(fails()), home, "no failed authentication audited")
    assert all(kind == "auth" for kind, _, _ in fails())


def test_each_address_is_tried_once() -> None:
    """A remembered address that also answered the PING is one candidate, binding kept."""
    binding = (b"n", b"ping", b"pong")
    cands = [
        _Candidate("198.18.1.10", 9000, "remembered"),
        _Candidate("198.18.1.10", 9000, "PONG", binding),
        _Candidate("198.18.1.10", 9000, "mDNS"),
        _Candidate("198.18.2.10", 9000, "PONG"),
    ]
    (first, second) = _distinct(cands)
    assert (first.source, first.also, first.binding) == ("remembered", {"PONG", "mDNS"}, binding)
    assert (second.host, second.source) == ("198.18.2.10", "PONG")
