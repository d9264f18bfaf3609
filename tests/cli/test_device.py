"""`pstp device add|list|remove` and config reload in a running daemon."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from pstp.asyncio.client import connect
from pstp.cli.main import main
from pstp.exceptions import ConnectionClosed, ErrorCode
from pstp.settings import add_peer, create, load
from tests.cli.test_pair import env_for, free_port
from tests.helpers import TIMEOUT


def test_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """add prints a snippet with the new key; list never shows keys; remove forgets."""
    cfg = create(tmp_path / "home.toml", "home")
    assert main(["--config", str(cfg), "device", "add", "phone", "--address", "h:9000"]) == 0
    out = capsys.readouterr().out
    key = load(cfg).peers["phone"].key
    assert "[peers.home]" in out and f'key = "{key.hex()}"' in out and "pstp://h:9000" in out
    assert main(["--config", str(cfg), "device", "add", "phone"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["--config", str(cfg), "device", "list"]) == 0
    listed = capsys.readouterr().out
    assert "phone" in listed and key.hex() not in listed and "sessions and ping only" in listed
    assert main(["--config", str(cfg), "device", "remove", "phone"]) == 0
    assert "phone" not in load(cfg).peers
    assert main(["--config", str(cfg), "device", "remove", "phone"]) == 2


def test_add_on_a_wildcard_shows_reachable_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Listening on 0.0.0.0, the link carries this host's addresses, never 0.0.0.0."""
    from pstp.daemon.pairing import parse_link
    from pstp.netif import addresses

    cfg = create(tmp_path / "home.toml", "home", listen="0.0.0.0:9000")
    assert main(["--config", str(cfg), "device", "add", "phone"]) == 0
    out = capsys.readouterr().out
    assert "0.0.0.0" not in out
    (uri,) = [w for w in out.split() if w.startswith("pstp://")]
    link = parse_link(uri)
    assert link.kind == "peer" and link.params["id"] == "home"
    assert link.params["key"] == load(cfg).peers["phone"].key.hex()
    lan = [a.address for a in addresses() if a.up and not a.loopback and ":" not in a.address]
    assert {h for h, _ in link.addresses} == set(lan[:8] or ["127.0.0.1"])
    assert all(p == 9000 for _, p in link.addresses)
    if not lan:
        assert "reachable only from this machine" in out


def test_removing_a_peer_closes_its_live_session(tmp_path: Path) -> None:
    """With `pstp serve` running, `pstp device remove` ends the peer's open session."""
    port = free_port()
    cfg = create(tmp_path / "home.toml", "home", listen=f"127.0.0.1:{port}")
    key = bytes(range(32))
    add_peer(cfg, "phone", key, default_policy=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(cfg),
    )
    try:
        assert server.stdout is not None
        assert "serving 1 peer(s)" in server.stdout.readline()

        async def scenario() -> int:
            s = await connect("127.0.0.1", port, pair_key=key, device_id="home")
            assert await s.request("ping", b"1") == b"pong 1"
            removed = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pstp",
                "device",
                "remove",
                "phone",
                env=env_for(cfg),
                stdout=subprocess.DEVNULL,
            )
            assert await removed.wait() == 0
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(s.recv(), TIMEOUT)
            return int(info.value.code)

        assert asyncio.run(scenario()) == ErrorCode.REFUSED

        async def again() -> None:
            with pytest.raises(Exception):  # noqa: B017 - the key is gone: silent refusal
                await connect("127.0.0.1", port, pair_key=key, timeout=1.0)

        asyncio.run(again())
    finally:
        server.terminate()
        server.wait(TIMEOUT)
    assert not (tmp_path / "pstp.pid").exists()


def test_stale_pid_file_of_an_unrelated_process_is_not_signalled(tmp_path: Path) -> None:
    """A pid file left behind, whose pid now belongs to another process: no SIGHUP is sent."""
    cfg = create(tmp_path / "home.toml", "home")
    # The unrelated process: SIGHUP would end it (default action).
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        try:
            (tmp_path / "pstp.pid").write_text(f"{sleeper.pid}\n")
            for argv in (["device", "add", "phone"], ["device", "remove", "phone"]):
                done = subprocess.run(
                    [sys.executable, "-m", "pstp", *argv],
                    capture_output=True,
                    text=True,
                    env=env_for(cfg),
                    timeout=TIMEOUT,
                )
                assert done.returncode == 0, done.stderr
                assert "no daemon is running" in done.stdout
                assert "told the running daemon" not in done.stdout
            with pytest.raises(subprocess.TimeoutExpired):
                sleeper.wait(0.3)
            assert sleeper.returncode is None
        finally:
            sleeper.kill()


def test_running_daemon_holds_its_pid_file_locked(tmp_path: Path) -> None:
    """While `pstp serve` runs, pstp.pid is flocked (a second lock cannot be taken)."""
    import fcntl

    cfg = create(tmp_path / "home.toml", "home", listen=f"127.0.0.1:{free_port()}")
    server = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(cfg),
    )
    try:
        assert server.stdout is not None
        assert "serving 0 peer(s)" in server.stdout.readline()
        pidfile = tmp_path / "pstp.pid"
        assert int(pidfile.read_text()) == server.pid
        with pidfile.open() as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        added = subprocess.run(
            [sys.executable, "-m", "pstp", "device", "add", "phone"],
            capture_output=True,
            text=True,
            env=env_for(cfg),
            timeout=TIMEOUT,
        )
        assert f"told the running daemon (pid {server.pid}) to reload" in added.stdout
    finally:
        server.terminate()
        server.wait(TIMEOUT)
    assert not (tmp_path / "pstp.pid").exists()
