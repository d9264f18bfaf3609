"""`pstp pair` and `pstp ping` as real processes over loopback."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pstp.cli.main import main
from pstp.daemon.audit import AuditLog
from pstp.settings import create, load
from tests.helpers import ROOT, TIMEOUT


def _ports_never_lent() -> range:
    """Ports the kernel never picks by itself: those below its ephemeral range.

    An outgoing connection's local port and ``bind(("", 0))``'s come from
    ``ip_local_port_range`` (32768-60999 by default); below it (from 10000, above
    the well-known ports and pstp's default 9000) only an explicit bind takes one.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default; elsewhere the check in free_port() still holds
    return range(10_000, max(low, 20_000))


_pick = random.SystemRandom()  # not the random module's state, which a test may seed


def free_port() -> int:
    """A TCP and UDP port free on every address now, outside the ephemeral range.

    The caller hands the number to a process that binds it seconds later (many
    seconds on a busy machine).  A port from ``bind(0)`` lies in the range the
    kernel also lends every outgoing connection meanwhile, its own and other test
    runs' (a flood test holds thousands at once), and the process then fails with
    EADDRINUSE.  Ports below that range are taken only by an explicit bind.
    """
    ports = _ports_never_lent()
    while True:
        port = _pick.choice(ports)
        try:
            with socket.socket() as s:
                s.bind(("", port))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("", port))
        except OSError:
            continue
        return port


def env_for(config: Path, **extra: str) -> dict[str, str]:
    """Environment for a pstp subprocess using ``config``."""
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT / "src"),
        PSTP_CONFIG=str(config),
        PYTHONUNBUFFERED="1",
        **extra,
    )


def pstp(*args: str, config: Path, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m pstp ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "pstp", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env_for(config, **env),
        timeout=TIMEOUT * 6,
        check=False,
    )


def open_window(config: Path, timeout: float = 30.0) -> tuple[subprocess.Popen[str], str]:
    """Start `pstp pair --allow` and return the process and the code it shows."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pstp", "pair", "--allow", "--timeout", str(timeout)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(config),
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + TIMEOUT * 4
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"code: (\d{4}-\d{4})", line)
        if m:
            proc.stdout.readline()  # the "on the other device" line
            return proc, m[1]
        assert line, proc.stderr.read() if proc.stderr else ""
    raise AssertionError("no code shown")


@pytest.fixture
def two_devices(tmp_path: Path) -> tuple[Path, Path, int]:
    """Config files for "home" (serving on a free port) and "phone"."""
    port = free_port()
    home = create(tmp_path / "home.toml", "home", listen=f"127.0.0.1:{port}")
    phone = create(tmp_path / "phone.toml", "phone", listen=f"127.0.0.1:{free_port()}")
    return home, phone, port


def test_two_processes_pair_then_open_a_pstp_hs_session(
    two_devices: tuple[Path, Path, int],
) -> None:
    """Pairing with the shown code installs the same key on both; `pstp ping` then works."""
    home, phone, port = two_devices
    window, code = open_window(home)
    try:
        joined = pstp("pair", f"127.0.0.1:{port}", config=phone, stdin=code + "\n")
        assert joined.returncode == 0, joined.stderr
        assert "paired with 'home'" in joined.stdout
        out, err = window.communicate(timeout=TIMEOUT * 2)
    finally:
        window.kill()
    assert window.returncode == 0, err
    assert "paired with 'phone'" in out
    h, p = load(home), load(phone)
    assert h.peers["phone"].key == p.peers["home"].key
    assert p.peers["home"].address == f"127.0.0.1:{port}"
    assert (home.stat().st_mode & 0o777) == (phone.stat().st_mode & 0o777) == 0o600
    assert code.replace("-", "") not in home.read_text() + phone.read_text()  # code not stored
    # A PSTP-HS session between them now works with no further input.
    server = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(home),
    )
    try:
        assert server.stdout is not None
        assert "serving 1 peer(s)" in server.stdout.readline()
        pinged = pstp("ping", "home", "-c", "2", config=phone)
        assert pinged.returncode == 0, pinged.stderr
        assert pinged.stdout.count("pong") == 2
    finally:
        server.terminate()
        server.wait(TIMEOUT)


def test_wrong_code_fails_counts_and_the_window_stays_open(
    two_devices: tuple[Path, Path, int],
) -> None:
    """A wrong code fails the pairing (exit 3) saying "wrong code" and the budget on the
    client, and a line with the tries left on the device; the right code still works."""
    home, phone, port = two_devices
    window, code = open_window(home)
    try:
        wrong = "0000-0000" if code != "0000-0000" else "1111-1111"
        for _ in range(2):
            bad = pstp("pair", f"127.0.0.1:{port}", config=phone, stdin=wrong + "\n")
            assert bad.returncode == 3, bad.stderr
            assert "wrong code" in bad.stderr and "20 wrong codes per pairing window" in bad.stderr
            assert "SPAKE2+" not in bad.stderr and "pair key" not in bad.stderr
        assert "home" not in load(phone).peers
        good = pstp("pair", f"127.0.0.1:{port}", config=phone, PSTP_PAIR_CODE=code)
        assert good.returncode == 0, good.stderr
        out, _err = window.communicate(timeout=TIMEOUT * 2)
    finally:
        window.kill()
    assert window.returncode == 0
    lines = [line for line in out.splitlines() if line.startswith("wrong code from 127.0.0.1:")]
    assert [line.split(": ", 1)[1] for line in lines] == [
        "19 tries left in this window",
        "18 tries left in this window",
    ]
    audit = AuditLog(home.with_name("audit.sqlite")).list()
    fails = [(r.kind, r.decision, r.detail) for r in audit if r.decision == "fail"]
    assert [(k, d) for k, d, _ in fails] == [("pairing", "fail")] * 2
    assert all("wrong code" in (detail or "") for _, _, detail in fails)


def test_pairing_where_no_window_is_open_says_so(two_devices: tuple[Path, Path, int]) -> None:
    """A device that serves but shows no window: "no pairing window is open there"."""
    home, phone, port = two_devices
    server = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(home),
    )
    try:
        assert server.stdout is not None
        assert "serving" in server.stdout.readline()
        bad = pstp("pair", f"127.0.0.1:{port}", config=phone, PSTP_PAIR_CODE="12345678")
    finally:
        server.terminate()
        server.wait(TIMEOUT)
    assert bad.returncode == 3
    assert "no pairing window is open there" in bad.stderr and "wrong key" not in bad.stderr


def test_the_window_shows_every_reachable_address(tmp_path: Path) -> None:
    """Listening on 0.0.0.0, the window lists this host's non-loopback IPv4 addresses
    (or loopback, said to be local only), never 0.0.0.0; the route's address first.

    The same without a default route, in a namespace: tests/cli/test_pair_netns.py.
    """
    from pstp.netif import addresses, route_source

    port = free_port()
    home = create(tmp_path / "home.toml", "home", listen=f"0.0.0.0:{port}")
    home.write_text(home.read_text().replace("discovery = true", "discovery = false"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pstp", "pair", "--allow", "--timeout", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(home),
    )
    assert proc.stdout is not None
    try:
        # Two waits, as open_window and test_window_closes_after_its_timeout: start-up
        # until the window is shown (its last line), then the window's 1 s and the exit.
        shown: list[str] = []
        deadline = time.monotonic() + TIMEOUT * 4
        while not shown or not shown[-1].startswith("on the other device:"):
            assert time.monotonic() < deadline, f"no window shown: {shown}"
            line = proc.stdout.readline()
            assert line, f"{shown} {proc.stderr.read() if proc.stderr else ''}"
            shown.append(line)
        rest, err = proc.communicate(timeout=TIMEOUT * 2)
    finally:
        proc.kill()
    out = "".join(shown) + rest
    assert proc.returncode == 1, err
    lan = [a.address for a in addresses() if a.up and not a.loopback and ":" not in a.address]
    assert "0.0.0.0" not in out
    if lan:
        assert "127.0.0.1" not in out
        for a in lan:
            assert f"  {a}:{port} (" in out
        first = route_source() if route_source() in lan else lan[0]
    else:
        assert f"127.0.0.1:{port} (reachable only from this machine" in out
        first = "127.0.0.1"
    assert f"on the other device: pstp pair {first}:{port}" in out


def test_window_closes_after_its_timeout(two_devices: tuple[Path, Path, int]) -> None:
    """An unused window closes by itself and says so (exit 1)."""
    home, _, _ = two_devices
    window, _code = open_window(home, timeout=1.0)
    _out, err = window.communicate(timeout=TIMEOUT * 4)
    assert window.returncode == 1
    assert "closed without pairing (timeout" in err


def test_code_on_the_command_line_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pstp pair HOST CODE` refuses the code: secrets never travel on argv."""
    assert main(["--config", str(tmp_path / "x.toml"), "pair", "127.0.0.1:1", "12345678"]) == 2
    assert "never taken from the command line" in capsys.readouterr().err


def test_ping_of_an_unknown_peer_and_a_missing_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Clear errors: no such peer (exit 2), no config (exit 78 naming the file)."""
    cfg = create(tmp_path / "c.toml", "phone")
    assert main(["--config", str(cfg), "ping", "nobody"]) == 2
    assert "no peer 'nobody'" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "none.toml"), "ping", "x"]) == 78
    assert "none.toml" in capsys.readouterr().err


def test_pairing_never_takes_over_an_existing_peer(two_devices: tuple[Path, Path, int]) -> None:
    """A device pairing under the id of an existing peer is refused; the old key stays."""
    from pstp.settings import add_peer

    home, phone, port = two_devices
    old_key = bytes(range(32))
    add_peer(home, "phone", old_key, default_policy=True)
    # The window stays open as long as in the tests above (a `pstp pair` child may take
    # seconds to start); once the code is proven it closes and the process ends.
    window, code = open_window(home)
    try:
        joined = pstp("pair", f"127.0.0.1:{port}", config=phone, stdin=code + "\n")
        assert joined.returncode != 0
        assert "exists" in joined.stderr, joined.stderr  # not "connection refused": no window
        window.communicate(timeout=TIMEOUT * 4)
    finally:
        window.kill()
    assert load(home).peers["phone"].key == old_key
    assert "home" not in load(phone).peers
