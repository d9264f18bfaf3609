"""The daemon end to end: a real `pstp serve` process, real actions, policy and audit."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from pstp.asyncio.client import connect
from pstp.client.remote import run_action, run_exec
from pstp.daemon.app import Daemon
from pstp.daemon.audit import AuditLog
from pstp.exceptions import ChannelError, ConnectionClosed, ErrorCode
from pstp.settings import add_peer, create, load
from pstp.wire.messages import ChannelCode
from tests.cli.test_pair import env_for, free_port
from tests.helpers import TIMEOUT

PHONE = bytes(range(32))
TV = bytes(range(1, 33))
GUEST = bytes(range(2, 34))
NIGHT = bytes(range(3, 35))

CONFIG = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[actions."kettle.on"]
argv = ["{python}", "-c", "import sys; print('kettle at', sys.argv[1]); sys.exit(0)", "{{temp}}"]
args = {{ temp = {{ type = "int", min = 40, max = 100, default = 100 }} }}

[actions."fail.seven"]
argv = ["{python}", "-c", "import sys; sys.stderr.write('broken'); sys.exit(7)"]

[actions."echo.text"]
argv = ["{python}", "-c", "import sys; print(sys.argv[1])", "{{text}}"]
args = {{ text = {{ type = "str", max_len = 100 }} }}

[peers.phone]
key = "{phone}"
[peers.phone.policy]
actions = ["kettle.*", "fail.seven", "echo.text"]
exec = [["{python}", "-c", "**"], ["echo", "**"]]
shell = false

[peers.tv]
key = "{tv}"
[peers.tv.policy]
actions = ["kettle.on"]
require_reason = true

[peers.night]
key = "{night}"
[peers.night.policy]
actions = ["kettle.on"]
when = [ {{ days = ["{other_day}"], from = "00:00", to = "00:01" }} ]

[peers.guest]
key = "{guest}"
[peers.guest.policy]
actions = ["kettle.on"]
expires = 2001-01-01T00:00:00Z
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A `pstp serve` process with three peers and their policies."""
    tmp = tmp_path_factory.mktemp("daemon")
    port = free_port()
    cfg = tmp / "pstp.toml"
    cfg.write_text(
        CONFIG.format(
            port=port,
            python=sys.executable,
            phone=PHONE.hex(),
            tv=TV.hex(),
            guest=GUEST.hex(),
            night=NIGHT.hex(),
            # A window on a day that is not today (nor tomorrow): never open during the test.
            other_day=(datetime.now() + timedelta(days=3)).strftime("%a").lower(),
        )
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
    line = proc.stdout.readline()
    assert "serving 4 peer(s)" in line, proc.stderr.read() if proc.stderr else ""
    yield port, tmp / "audit.sqlite"
    proc.terminate()
    proc.wait(TIMEOUT)


def _sink() -> tuple[list[bytes], object]:
    out: list[bytes] = []
    return out, out.append


async def _session(port: int, key: bytes):  # type: ignore[no-untyped-def]
    return await connect("127.0.0.1", port, pair_key=key, device_id="home")


def test_allowed_action_runs_and_returns_output_and_status(daemon: tuple[int, Path]) -> None:
    """An allowed action runs with its typed argument; output and status come back."""
    port, audit = daemon

    async def go() -> tuple[int, bytes, int, bytes]:
        async with await _session(port, PHONE) as s:
            out, write = _sink()
            status = await run_action(s, "kettle.on", {"temp": 80}, stdout=write)  # type: ignore[arg-type]
            err, write_err = _sink()
            status7 = await run_action(s, "fail.seven", {}, stderr=write_err)  # type: ignore[arg-type]
            return status, b"".join(out), status7, b"".join(err)

    status, out, status7, err = asyncio.run(go())
    assert (status, out) == (0, b"kettle at 80\n")
    assert (status7, err) == (7, b"broken")
    rows = AuditLog(audit).list(peer="phone", kind="action")
    # Each request: an "allow" row before it runs (fail closed), then its outcome.
    assert [(r.decision, r.args["name"]) for r in rows[-4:]] == [
        ("allow", "kettle.on"),
        ("ok", "kettle.on"),
        ("allow", "fail.seven"),
        ("fail", "fail.seven"),
    ]
    assert [r.result["exit_status"] for r in rows[-3::2]] == [0, 7]


@pytest.mark.parametrize(
    ("key", "name", "args", "reason", "why"),
    [
        (PHONE, "kettle.on", {"temp": 200}, None, "max"),  # argument out of bounds
        (PHONE, "lights.off", {}, None, "matches none"),  # not allowed by any glob
        (TV, "kettle.on", {}, None, "reason"),  # reason required
        (NIGHT, "kettle.on", {}, "coming home", "time window"),  # outside the time window
        (GUEST, "kettle.on", {}, None, "expired"),  # expired peer
    ],
)
def test_denied_requests_are_refused_with_a_reason_and_audited(
    daemon: tuple[int, Path],
    key: bytes,
    name: str,
    args: dict,
    reason: str | None,
    why: str,  # type: ignore[type-arg]
) -> None:
    """Denials name the rule; the peer sees REFUSED with the reason; a deny row is written."""
    port, audit = daemon

    async def go() -> ChannelError | ConnectionClosed:
        s = await _session(port, key)
        try:
            # Time windows and expiry apply to the session itself: it may be closed
            # (REFUSED) before the channel is even looked at.
            with pytest.raises((ChannelError, ConnectionClosed)) as info:
                await run_action(s, name, args, reason=reason)
            return info.value
        finally:
            await s.close()

    exc = asyncio.run(go())
    assert exc.code in (ChannelCode.REFUSED, ErrorCode.REFUSED)
    assert why in exc.reason.lower()
    rows = AuditLog(audit).list()
    last = [r for r in rows if r.kind in ("action", "session")][-1]
    assert last.decision == "deny" and why in (last.detail or "").lower()


def test_pstp_run_refusal_and_reason(daemon: tuple[int, Path], tmp_path: Path) -> None:
    """`pstp run` (a fresh process on the blocking path): a policy refusal exits 255 with
    the reason; with --reason the same action runs and is audited with it."""
    port, audit = daemon
    cfg = create(tmp_path / "tv.toml", "tv", listen="127.0.0.1:1")
    add_peer(cfg, "home", TV, address=f"127.0.0.1:{port}")
    argv = [sys.executable, "-m", "pstp", "run", "home", "kettle.on", "temp=70"]
    refused = subprocess.run(
        argv, capture_output=True, text=True, env=env_for(cfg), timeout=TIMEOUT
    )
    assert refused.returncode == 255
    assert "refused" in refused.stderr and "reason" in refused.stderr
    done = subprocess.run(
        [*argv, "--reason", "tea"],
        capture_output=True,
        text=True,
        env=env_for(cfg),
        timeout=TIMEOUT,
    )
    assert (done.returncode, done.stdout) == (0, "kettle at 70\n"), done.stderr
    row = AuditLog(audit).list(kind="action", peer="tv")[-1]
    assert (row.decision, row.reason) == ("ok", "tea")


def test_exec_allow_list_literal_arguments_and_denial(daemon: tuple[int, Path]) -> None:
    """Allowed argv runs with metacharacters passed literally; other commands are refused."""
    port, audit = daemon

    async def go() -> tuple[int, bytes, ChannelError]:
        async with await _session(port, PHONE) as s:
            out, write = _sink()
            status = await run_exec(s, ["echo", "$(id)", ";", "|", "`ls`"], stdout=write)  # type: ignore[arg-type]
            with pytest.raises(ChannelError) as info:
                await run_exec(s, ["rm", "-rf", "/tmp/x"])
            return status, b"".join(out), info.value

    status, out, denied = asyncio.run(go())
    assert (status, out) == (0, b"$(id) ; | `ls`\n")
    assert denied.code == ChannelCode.REFUSED
    rows = AuditLog(audit).list(kind="exec")
    assert rows[-1].decision == "deny" and rows[-1].args["argv"] == ["rm", "-rf", "/tmp/x"]


def test_shell_denied_by_policy(daemon: tuple[int, Path]) -> None:
    """shell = false refuses the shell channel before anything runs."""
    port, _ = daemon

    async def go() -> int:
        async with await _session(port, PHONE) as s:
            with pytest.raises(ChannelError) as info:
                await s.open_channel("shell", {"term": "xterm", "rows": 24, "cols": 80})
            return info.value.code

    assert asyncio.run(go()) == ChannelCode.REFUSED


def test_failed_authentication_is_audited(daemon: tuple[int, Path]) -> None:
    """A wrong key fails silently for the peer and leaves an 'auth fail' row."""
    port, audit = daemon
    before = len(AuditLog(audit).list(kind="auth"))

    async def go() -> None:
        with pytest.raises(Exception):  # noqa: B017 - silence: HandshakeFailed
            await connect("127.0.0.1", port, pair_key=bytes(32), timeout=TIMEOUT)

    asyncio.run(go())
    rows = AuditLog(audit).list(kind="auth")
    assert len(rows) > before and rows[-1].decision == "fail"


def test_a_connection_that_sends_nothing_is_not_a_failed_authentication(
    daemon: tuple[int, Path],
) -> None:
    """A port check (connect, close without a byte) leaves no 'auth fail' row; one
    garbage byte is an attempt and does."""
    import socket
    import time

    port, audit = daemon
    before = len(AuditLog(audit).list(kind="auth"))
    for _ in range(3):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\xff" * 64)
        sock.settimeout(TIMEOUT)
        assert sock.recv(1) == b""  # the device hangs up on garbage
    deadline = time.monotonic() + TIMEOUT
    while len(AuditLog(audit).list(kind="auth")) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = AuditLog(audit).list(kind="auth")[before:]
    assert [r.decision for r in rows] == ["fail"], rows  # the garbage, not the 3 checks


def test_two_hundred_concurrent_clients(daemon: tuple[int, Path]) -> None:
    """200 clients at once, each running an action: no errors, one audit row per call."""
    port, audit = daemon
    log = AuditLog(audit)
    before = len(log.list(kind="action", peer="phone"))

    async def one(i: int) -> bytes:
        async with await _session(port, PHONE) as s:
            out, write = _sink()
            status = await run_action(s, "echo.text", {"text": f"client-{i}"}, stdout=write)  # type: ignore[arg-type]
            assert status == 0
            return b"".join(out)

    async def all_clients() -> list[bytes]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    outputs = asyncio.run(all_clients())
    assert outputs == [f"client-{i}\n".encode() for i in range(200)]
    rows = log.list(kind="action", peer="phone")[before:]
    assert sorted(r.decision for r in rows) == ["allow"] * 200 + ["ok"] * 200
    assert log.verify().ok


def test_peer_without_policy_gets_no_session(tmp_path: Path) -> None:
    """Deny by default: a peer with a key but no policy table cannot open a session."""
    port = free_port()
    cfg = tmp_path / "pstp.toml"
    cfg.write_text(
        f'[device]\nid = "home"\nlisten = ["127.0.0.1:{port}"]\ndiscovery = false\n'
        f'[peers.phone]\nkey = "{PHONE.hex()}"\n'
    )
    os.chmod(cfg, 0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"], stdout=subprocess.PIPE, text=True, env=env_for(cfg)
    )
    try:
        assert proc.stdout is not None and "serving" in proc.stdout.readline()

        async def go() -> int:
            s = await _session(port, PHONE)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(s.recv(), TIMEOUT)
            return int(info.value.code)

        assert asyncio.run(go()) == ErrorCode.REFUSED
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


def test_max_sessions_cannot_be_bypassed(tmp_path: Path) -> None:
    """With max_sessions = 1 a second session is refused before any of its channels run."""
    port = free_port()
    cfg = tmp_path / "pstp.toml"
    cfg.write_text(
        f'[device]\nid = "home"\nlisten = ["127.0.0.1:{port}"]\ndiscovery = false\n'
        f'[peers.phone]\nkey = "{PHONE.hex()}"\n'
        f'[peers.phone.policy]\nexec = [["echo", "**"]]\nmax_sessions = 1\n'
    )
    os.chmod(cfg, 0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"], stdout=subprocess.PIPE, text=True, env=env_for(cfg)
    )
    try:
        assert proc.stdout is not None and "serving" in proc.stdout.readline()

        async def go() -> tuple[int, int]:
            first = await _session(port, PHONE)
            second = await _session(port, PHONE)
            # The second session opens a channel at once, in the flight after its
            # handshake: the daemon must have refused the session before it.
            with pytest.raises((ChannelError, ConnectionClosed)):
                await run_exec(second, ["echo", "sneaked in"])
            ok = await run_exec(first, ["echo", "still here"])
            await first.close()
            third = await _session(port, PHONE)  # the slot is free again
            status = await run_exec(third, ["echo", "third"])
            await third.close()
            return ok, status

        assert asyncio.run(go()) == (0, 0)
        rows = AuditLog(tmp_path / "audit.sqlite").list(kind="session")
        assert [r.decision for r in rows] == ["deny"]
        assert all(
            r.args is None or "sneaked" not in str(r.args)
            for r in AuditLog(tmp_path / "audit.sqlite").list(kind="exec")
        )
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host")
def test_ipv6_listen_address_with_discovery_on(tmp_path: Path) -> None:
    """An IPv6-only listen address with discovery on serves (no IPv4 broadcast responder)."""
    port = free_port()
    cfg = tmp_path / "pstp.toml"
    cfg.write_text(
        f'[device]\nid = "home"\nlisten = ["[::1]:{port}"]\ndiscovery = true\n'
        f'[peers.phone]\nkey = "{PHONE.hex()}"\n[peers.phone.policy]\n'
    )
    os.chmod(cfg, 0o600)
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
        assert "serving" in line, proc.stderr.read() if proc.stderr else ""

        async def go() -> bytes:
            async with await connect("::1", port, pair_key=PHONE) as s:
                return await s.request("ping", b"hi")

        assert asyncio.run(go()) == b"pong hi"
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
    log = proc.stderr.read() if proc.stderr else ""
    assert "no broadcast discovery on ::1" in log  # the device says why (§8.1)
    assert f"not advertising port {port} on mDNS" in log


def _in_process_daemon(tmp_path: Path) -> Daemon:
    cfg = tmp_path / "pstp.toml"
    cfg.write_text(
        f'[device]\nid = "home"\nlisten = ["127.0.0.1:{free_port()}"]\ndiscovery = false\n'
    )
    os.chmod(cfg, 0o600)
    return Daemon(load(cfg), control=False)


def test_spawn_needs_a_running_daemon(tmp_path: Path) -> None:
    """Before start() the daemon has no task group: spawn refuses (and closes the coroutine)."""

    async def work() -> None:
        raise AssertionError("never runs")

    async def go() -> None:
        daemon = _in_process_daemon(tmp_path)
        coro = work()
        with pytest.raises(RuntimeError):
            daemon.spawn(coro)
        assert coro.cr_frame is None  # closed: no "never awaited" warning
        daemon.audit.close()  # type: ignore[union-attr]

    asyncio.run(go())


def test_task_group_logs_failures_and_close_ends_every_task(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing daemon task is logged, not fatal; close() cancels and awaits the rest."""
    ended: list[str] = []

    async def fails() -> None:
        raise ValueError("boom")

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("forever")

    async def go() -> None:
        daemon = _in_process_daemon(tmp_path)
        await daemon.start()
        failed = asyncio.Event()
        daemon.spawn(fails())
        daemon.spawn(forever())

        async def mark() -> None:
            failed.set()

        daemon.spawn(mark())  # runs after fails() has run: tasks start in order
        await asyncio.wait_for(failed.wait(), TIMEOUT)
        await asyncio.wait_for(daemon.close(), TIMEOUT)
        with pytest.raises(RuntimeError):
            daemon.spawn(mark())

    with caplog.at_level("ERROR", logger="pstp.daemon"):
        asyncio.run(go())
    assert ended == ["forever"]
    assert any("a daemon task failed" in r.getMessage() for r in caplog.records)
