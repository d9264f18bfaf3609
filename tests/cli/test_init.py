"""`pstp init`: the listen address is checked before anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pstp.cli.main import main
from pstp.settings import load
from tests.cli.test_pair import env_for, free_port
from tests.helpers import TIMEOUT


def init(cfg: Path, *args: str) -> int:
    return main(["--config", str(cfg), "init", "--id", "home", *args])


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("9000", 'use "0.0.0.0:9000" for every interface, or "127.0.0.1:9000"'),
        (":9000", 'use "0.0.0.0:9000"'),
        ("0.0.0.0:70000", "PORT 1-65535"),
        ("my_host:9000", "is not an IP address or a host name"),
        ("300.1.2.3:9000", "is not an IP address"),
    ],
)
def test_a_bad_listen_address_is_a_usage_error_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str, message: str
) -> None:
    """`pstp init --listen 9000` says what to write (exit 2) instead of a later bind error."""
    cfg = tmp_path / "pstp.toml"
    assert init(cfg, "--listen", listen) == 2
    err = capsys.readouterr().err
    assert err.startswith("pstp: --listen: ") and message in err
    assert not cfg.exists()


def test_an_address_of_another_machine_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An IP this host does not have (TEST-NET-1) fails at init, not at serve."""
    if Path("/proc/sys/net/ipv4/ip_nonlocal_bind").read_text().strip() != "0":
        pytest.skip("this host lets sockets bind addresses it does not have")
    cfg = tmp_path / "pstp.toml"
    assert init(cfg, "--listen", "192.0.2.1:9000") == 2
    err = capsys.readouterr().err
    assert "'192.0.2.1' is not an address of this machine" in err
    assert 'use "0.0.0.0:9000" for every interface' in err
    assert not cfg.exists()


@pytest.mark.parametrize("listen", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}"])
def test_an_accepted_address_is_one_serve_can_listen_on(tmp_path: Path, listen: str) -> None:
    """What init accepts, `pstp serve` binds: the daemon comes up on it."""
    port = free_port()
    cfg = tmp_path / "pstp.toml"
    assert init(cfg, "--listen", listen.format(port=port)) == 0
    assert load(cfg).listen[0][1] == port
    server = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(cfg),
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "serving" in line, server.stderr.read() if server.stderr else line
    finally:
        server.terminate()
        server.communicate(timeout=TIMEOUT)


def test_a_hand_edited_bare_port_fails_every_command_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The loader refuses listen = ["9000"] too: configuration error 78, with file:line."""
    cfg = tmp_path / "pstp.toml"
    assert init(cfg) == 0
    text = cfg.read_text()
    assert 'listen = ["0.0.0.0:9000"]' in text
    cfg.write_text(text.replace('listen = ["0.0.0.0:9000"]', 'listen = ["9000"]'))
    capsys.readouterr()
    assert main(["--config", str(cfg), "device", "list"]) == 78
    line = next(n for n, t in enumerate(cfg.read_text().splitlines(), 1) if "listen" in t)
    err = capsys.readouterr().err
    assert f"{cfg}:{line}: device.listen: '9000' is a port without a host" in err
    assert 'use "0.0.0.0:9000"' in err
