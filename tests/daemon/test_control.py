"""The control socket: pairing with a running `pstp serve`, and who may use it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pstp.daemon.audit import AuditLog
from pstp.settings import control_path, create, load
from tests.cli.test_pair import env_for, free_port, open_window, pstp
from tests.helpers import TIMEOUT


def _serve(config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(config),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving" in line, proc.stderr.read() if proc.stderr else ""
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(TIMEOUT)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, Path, int, subprocess.Popen[str]]]:
    """A `pstp serve` for "home" (no peers yet) and the config of "phone"."""
    port = free_port()
    home = create(tmp_path / "home.toml", "home", listen=f"127.0.0.1:{port}")
    text = home.read_text().replace("discovery = true", "discovery = false")
    home.write_text(text)
    phone = create(tmp_path / "phone.toml", "phone", listen=f"127.0.0.1:{free_port()}")
    daemon = _serve(home)
    try:
        yield home, phone, port, daemon
    finally:
        _stop(daemon)


def _request(path: Path, raw: bytes) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(str(path))
        s.sendall(raw)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_pairing_with_a_running_daemon_needs_no_restart(
    running: tuple[Path, Path, int, subprocess.Popen[str]],
) -> None:
    """`pstp pair --allow` opens the window inside the running daemon; the new peer can
    use that same daemon at once (its key and policy are loaded without a restart)."""
    home, phone, port, daemon = running
    window, code = open_window(home)
    try:
        joined = pstp("pair", f"127.0.0.1:{port}", config=phone, stdin=code + "\n")
        assert joined.returncode == 0, joined.stderr
        out, err = window.communicate(timeout=TIMEOUT * 2)
    finally:
        window.kill()
    assert window.returncode == 0, err
    assert "paired with 'phone'" in out
    assert load(home).peers["phone"].key == load(phone).peers["home"].key
    assert daemon.poll() is None  # the daemon served the whole time
    deadline = time.monotonic() + TIMEOUT
    while True:  # the daemon reloads its configuration right after pairing
        pinged = pstp("ping", "home", "-c", "1", config=phone)
        if pinged.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert pinged.returncode == 0, pinged.stderr
    kinds = [(r.kind, r.peer, r.decision) for r in AuditLog(home.with_name("audit.sqlite")).list()]
    assert ("pairing", "?", "allow") in kinds and ("pairing", "phone", "ok") in kinds


def test_wrong_codes_are_shown_by_the_window_and_audited_as_such(
    running: tuple[Path, Path, int, subprocess.Popen[str]],
) -> None:
    """Through the running daemon: one "wrong code ... N tries left" line per failed try on
    the window, "wrong code" on the client, and `pairing fail` rows (no `auth fail`)."""
    home, phone, port, _daemon = running
    window, code = open_window(home)
    try:
        wrong = "0000-0000" if code != "0000-0000" else "1111-1111"
        for _ in range(2):
            bad = pstp("pair", f"127.0.0.1:{port}", config=phone, stdin=wrong + "\n")
            assert bad.returncode == 3 and "wrong code" in bad.stderr, bad.stderr
        good = pstp("pair", f"127.0.0.1:{port}", config=phone, PSTP_PAIR_CODE=code)
        assert good.returncode == 0, good.stderr
        out, err = window.communicate(timeout=TIMEOUT * 2)
    finally:
        window.kill()
    assert window.returncode == 0, err
    assert "wrong code from 127.0.0.1:" in out and ": 19 tries left in this window" in out
    assert ": 18 tries left in this window" in out
    rows = AuditLog(home.with_name("audit.sqlite")).list()
    fails = [(r.kind, r.detail) for r in rows if r.decision == "fail"]
    assert [k for k, _ in fails] == ["pairing", "pairing"]
    assert "wrong code (18 tries left in this window)" in (fails[1][1] or "")


def test_the_window_closes_when_its_requester_leaves(
    running: tuple[Path, Path, int, subprocess.Popen[str]],
) -> None:
    """^C on `pstp pair --allow` closes the daemon's window: the code no longer works."""
    home, phone, port, daemon = running
    window, code = open_window(home)
    window.send_signal(signal.SIGINT)
    assert window.wait(TIMEOUT) != 0
    late = pstp("pair", f"127.0.0.1:{port}", config=phone, stdin=code + "\n")
    assert late.returncode == 3, late.stderr
    assert "home" not in load(phone).peers and "phone" not in load(home).peers
    # The daemon is fine, and a new window can be opened.
    again, _ = open_window(home, timeout=1)
    assert again.wait(TIMEOUT * 2) == 1
    assert daemon.poll() is None


def test_one_window_at_a_time(running: tuple[Path, Path, int, subprocess.Popen[str]]) -> None:
    """A second `pstp pair --allow` while a window is open is refused, naming why."""
    home, _, _, _ = running
    first, _ = open_window(home)
    try:
        second = pstp("pair", "--allow", "--timeout", "5", config=home)
        assert second.returncode != 0
        assert "already open" in second.stderr
    finally:
        first.kill()
        first.wait(TIMEOUT)


def test_bad_requests_get_an_error_and_change_nothing(
    running: tuple[Path, Path, int, subprocess.Popen[str]],
) -> None:
    """Malformed, unknown, oversized or out-of-range requests are answered with an error."""
    home, _, _, daemon = running
    path = control_path(load(home))
    cases = {
        b"not json\n": "unknown request",
        b'{"op": "reboot"}\n': "unknown request",
        b'{"op": "pair"}\n': "no code",
        b'{"op": "pair", "code": "12345678", "timeout": 0}\n': "timeout out of range",
        b'{"op": "pair", "code": "12345678", "timeout": 1e9}\n': "timeout out of range",
        b'{"op": "pair", "code": "1", "timeout": "x"}\n': "timeout out of range",
        b'{"op": "pair", "code": "' + b"1" * 5000 + b'"}\n': "request too long",
    }
    for raw, message in cases.items():
        assert _request(path, raw) == [{"event": "error", "message": message}], raw[:40]
    assert daemon.poll() is None


def test_other_users_are_refused() -> None:
    """The socket is 0600; and even if it were opened to all, another uid gets 'not allowed'."""
    if os.getuid() != 0:
        pytest.skip("needs root to act as another user")
    # A directory another user can traverse (pytest's own temporary tree is closed).
    work = Path(tempfile.mkdtemp(prefix="pstp-ctl-"))
    work.chmod(0o711)
    home = create(work / "home.toml", "home", listen=f"127.0.0.1:{free_port()}")
    home.write_text(home.read_text().replace("discovery = true", "discovery = false"))
    daemon = _serve(home)
    path = control_path(load(home))
    try:
        _check_other_users_are_refused(path)
    finally:
        _stop(daemon)
        shutil.rmtree(work, ignore_errors=True)


def _check_other_users_are_refused(path: Path) -> None:
    assert (path.stat().st_mode & 0o777) == 0o600

    def as_nobody() -> str:
        """Connect as uid 65534 in a forked child (no exec: /root is closed to nobody)."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(TIMEOUT)
                    s.connect(str(path))  # refused before any request is read
                    os.write(write_end, s.recv(4096))
            except OSError as exc:
                os.write(write_end, f"{type(exc).__name__}".encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read().decode()
        os.waitpid(pid, 0)
        return answer

    assert as_nobody() == "PermissionError"
    os.chmod(path, 0o666)  # noqa: S103 - opened on purpose: the uid check must still hold
    assert json.loads(as_nobody()) == {"event": "error", "message": "not allowed"}


def test_a_second_daemon_on_the_same_configuration_is_refused(
    running: tuple[Path, Path, int, subprocess.Popen[str]],
) -> None:
    """Two daemons must not share one configuration (audit log, keys, replay guard)."""
    home, _, _, _ = running
    second = pstp("serve", config=home)
    assert second.returncode != 0
    assert "another pstp serve is running" in second.stderr


def test_a_stale_socket_from_a_killed_daemon_is_replaced(tmp_path: Path) -> None:
    """After SIGKILL the socket file stays behind; the next `pstp serve` starts anyway."""
    home = create(tmp_path / "home.toml", "home", listen=f"127.0.0.1:{free_port()}")
    home.write_text(home.read_text().replace("discovery = true", "discovery = false"))
    first = _serve(home)
    first.kill()
    first.wait(TIMEOUT)
    path = control_path(load(home))
    assert path.is_socket()
    second = _serve(home)
    try:
        assert _request(path, b"{}\n") == [{"event": "error", "message": "unknown request"}]
    finally:
        _stop(second)
    assert not path.exists()  # a clean stop removes it
