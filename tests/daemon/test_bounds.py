"""Nothing a peer or a stranger sends grows the daemon without a bound (docs/security.md).

Every test here runs a real `pstp serve` process on loopback and attacks it as a
hostile neighbour or a low-privilege paired peer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pstp.asyncio.client import connect
from pstp.asyncio.connection import Session
from pstp.client.files import put
from pstp.client.remote import run_action, run_exec
from pstp.daemon.audit import MAX_JSON, AuditLog, canonical_json
from pstp.exceptions import ChannelError, ConnectionClosed, ErrorCode, TransferFailed
from pstp.wire.messages import ChannelCode
from tests.daemon.serving import GUEST, PHONE, Served, raw_session, serve
from tests.helpers import TIMEOUT

CONFIG = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[actions."echo.text"]
argv = ["{python}", "-c", "import sys; print(sys.argv[1])", "{{text}}"]
args = {{ text = {{ type = "str", max_len = 100 }} }}

[peers.phone]
key = "{phone}"
[peers.phone.policy]
actions = ["echo.*"]

# What pairing writes: sessions and ping, nothing else.
[peers.guest]
key = "{guest}"
[peers.guest.policy]

# Peers the flood tests get suspended (a flooding key holder is shut out for 10 s).
[peers.pings]
key = "FLOOD_pings"
[peers.pings.policy]

[peers.opens]
key = "FLOOD_opens"
[peers.opens.policy]
"""

#: Keys of the two flooding peers above.
FLOOD = {"pings": bytes(range(40, 72)), "opens": bytes(range(50, 82))}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One daemon for the tests that do not change its configuration."""
    config = CONFIG
    for name, key in FLOOD.items():
        config = config.replace(f"FLOOD_{name}", key.hex())
    served = serve(tmp_path_factory.mktemp("bounds"), config)
    yield served
    served.stop()


def test_ping_keeps_at_most_64_kib(daemon: Served) -> None:
    """A peer with only the pairing policy cannot make ping hold what it streams.

    Before the bound the device read a ping to EOF with no limit: 384 MiB sent into one
    ping channel grew the daemon by 400 MB.  Now it closes the channel with
    RESOURCE_LIMIT past 64 KiB and holds nothing more.
    """

    async def main() -> tuple[int, str, bytes]:
        async with await connect(
            "127.0.0.1", daemon.port, pair_key=GUEST, device_id="home"
        ) as session:
            assert await session.request("ping", b"x" * 65536) == b"pong " + b"x" * 65536
            ch = await session.open_channel("ping")
            chunk = b"y" * 65536
            with pytest.raises(ChannelError) as err:
                for _ in range(64 * 16):  # 64 MiB, far more than the daemon may keep
                    await ch.write(chunk)
                await ch.write_eof()
                await ch.read_all()
            # The session is still usable.
            return err.value.code, err.value.reason, await session.request("ping", b"1")

    before = daemon.rss_kib()
    code, reason, pong = asyncio.run(asyncio.wait_for(main(), 10 * TIMEOUT))
    assert code == ChannelCode.RESOURCE_LIMIT
    assert "65536 bytes" in reason
    assert pong == b"pong 1"
    assert daemon.rss_kib() - before < 16 * 1024


def test_phone_still_works(daemon: Served) -> None:
    """The fixture's broad peer runs its action (the other tests' control)."""

    async def main() -> bytes:
        async with await connect(
            "127.0.0.1", daemon.port, pair_key=PHONE, device_id="home"
        ) as session:
            return await session.request("ping", b"ok")

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == b"pong ok"


@pytest.mark.parametrize("flood", ["pings", "opens"])
def test_a_peer_that_reads_nothing_cannot_make_replies_pile_up(daemon: Served, flood: str) -> None:
    """A peer that never reads, sending what the daemon must answer, is cut off in bounds.

    Before, every answer queued in the daemon's write buffer: 10 MiB of heartbeat
    PINGs grew it by 8 MB.  Now a PING flood ends the session at once (§6.5), and
    other answers (REJECTs of unknown kinds here) may queue up to 1 MiB while the peer
    reads nothing (REPLY_FLOOD), then the session ends and its descriptor is released.
    """
    before = daemon.rss_kib()
    fds = daemon.fds()
    sock, conn = raw_session(daemon.port, FLOOD[flood], rcvbuf=4096)
    sent = 0
    cut_off = False
    try:
        while sent < 40 << 20:  # 40 MiB, never reading a byte
            for _ in range(1000):
                if flood == "pings":
                    conn.send_ping()
                else:
                    conn.open_channel("no-such-kind")  # each answered with a REJECT
            out = conn.data_to_send()
            sock.sendall(out)
            sent += len(out)
    except OSError:
        cut_off = True  # reset by the daemon, as it should be
    finally:
        sock.close()
    grown = daemon.rss_kib() - before
    assert cut_off, f"the daemon took {sent} bytes without cutting the peer off"
    assert grown < 8 * 1024, f"daemon grew by {grown} KiB"
    deadline = time.monotonic() + TIMEOUT
    while daemon.fds() > fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.fds() <= fds
    if flood == "pings":  # a heartbeat flood suspends the key: reconnecting costs nothing
        with pytest.raises(AssertionError, match="handshake failed"):
            raw_session(daemon.port, FLOOD[flood])
        rows = AuditLog(daemon.audit).list(peer="pings", kind="session")
        assert any("suspended for 10 s: heartbeat flood" in (r.detail or "") for r in rows)


def test_session_data_to_the_daemon_is_refused_not_kept(daemon: Served) -> None:
    """The daemon serves channels only: session-level DATA ends the session with REFUSED.

    Before, it was kept unread: past 1 MiB the daemon stopped reading that connection,
    with its dead-peer check off, so such sessions outlived the 60 s limit.
    """

    async def main() -> ConnectionClosed:
        session = await connect("127.0.0.1", daemon.port, pair_key=GUEST, device_id="home")
        with contextlib.suppress(ConnectionClosed):
            for _ in range(4):
                await session.send(b"z" * 65536)
        await asyncio.wait_for(session.wait_closed(), TIMEOUT)
        with pytest.raises(ConnectionClosed) as err:
            await session.request("ping", b"")
        return err.value

    exc = asyncio.run(main())
    assert exc.code == ErrorCode.REFUSED
    assert "use a channel" in str(exc)


def test_refused_requests_cannot_flood_the_audit_log(daemon: Served) -> None:
    """300 refused execs with 60 KB arguments each: few rows, each of a few KiB at most.

    Before, every denial stored all its OPEN parameters and spent no rate token:
    609 rows (35 MiB) in one second.
    """
    log = AuditLog(daemon.audit)
    before_rows = len(log.list(peer="guest"))
    before_size = daemon.audit.stat().st_size + _wal_size(daemon.audit)
    big = "A" * 60_000

    async def main() -> set[int]:
        codes = set()
        async with await connect(
            "127.0.0.1", daemon.port, pair_key=GUEST, device_id="home"
        ) as session:
            for _ in range(300):
                with pytest.raises(ChannelError) as err:
                    await run_exec(session, ["cat", big])
                codes.add(err.value.code)
        return codes

    started = time.monotonic()
    assert asyncio.run(asyncio.wait_for(main(), 20 * TIMEOUT)) == {ChannelCode.REFUSED}
    elapsed = time.monotonic() - started
    rows = log.list(peer="guest")[before_rows:]
    # The per-peer budget: a burst of 20 rows, then 5 a second.
    assert len(rows) <= 20 + 5 * (elapsed + 1), (len(rows), elapsed)
    for row in rows:
        assert len(canonical_json(row.args)) <= MAX_JSON
    grown = daemon.audit.stat().st_size + _wal_size(daemon.audit) - before_size
    assert grown < 2 << 20, f"the audit log grew by {grown} bytes"


def _wal_size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


AUDIT_ON_TMPFS = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[audit]
path = "{audit}"
reserve_mib = 0

[actions."mark"]
argv = ["{python}", "-c", "open('{mark}', 'w').close()"]

[peers.phone]
key = "{phone}"
[peers.phone.policy]
actions = ["mark"]
"""


def test_a_full_audit_disk_refuses_requests_instead_of_running_them(tmp_path: Path) -> None:
    """With the audit log's file system full, an allowed action is refused and does not run.

    Before, the audit write failed with "database or disk is full", was logged, and
    the request ran unaudited (5 of 5 execs).
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    mark = tmp_path / "ran"
    served = None
    try:
        config = AUDIT_ON_TMPFS.replace("{audit}", str(disk / "audit.sqlite")).replace(
            "{mark}", str(mark)
        )
        served = serve(tmp_path, config)

        async def run() -> int:
            async with await connect(
                "127.0.0.1", served.port, pair_key=PHONE, device_id="home"
            ) as session:
                return await run_action(session, "mark", {})

        assert asyncio.run(asyncio.wait_for(run(), TIMEOUT)) == 0  # audited and run
        assert mark.exists()
        mark.unlink()
        filler = disk / "filler"
        with filler.open("wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()

        async def refused() -> ConnectionClosed | ChannelError:
            try:
                async with await connect(
                    "127.0.0.1", served.port, pair_key=PHONE, device_id="home"
                ) as session:
                    await run_action(session, "mark", {})
            except (ConnectionClosed, ChannelError) as exc:
                return exc
            raise AssertionError("the action ran although it could not be audited")

        exc = asyncio.run(asyncio.wait_for(refused(), TIMEOUT))
        assert "audit log" in str(exc)
        assert not mark.exists()
        assert "could not write the audit log" in served.stderr()
        filler.unlink()  # space again: requests are audited and run again
        assert asyncio.run(asyncio.wait_for(run(), TIMEOUT)) == 0
        assert mark.exists()
    finally:
        if served is not None:
            served.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)


SESSIONS = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[peers.phone]
key = "{phone}"
[peers.phone.policy]
max_sessions = MAX
"""


def test_a_reload_lowering_max_sessions_keeps_every_open_session_counted(tmp_path: Path) -> None:
    """Three sessions open, max_sessions lowered to 2, one ends: a new one is still refused.

    Before, the reload counted the open sessions only up to the new maximum (two),
    so after one ended a third session was admitted beside the two still open.
    """
    served = serve(tmp_path, SESSIONS.replace("MAX", "3"))
    try:

        async def main() -> ConnectionClosed | None:
            async def one() -> Session:
                return await connect("127.0.0.1", served.port, pair_key=PHONE, device_id="home")

            sessions = [await one() for _ in range(3)]
            for s in sessions:
                assert await s.request("ping", b"") == b"pong "
            cfg = tmp_path / "pstp.toml"
            cfg.write_text(cfg.read_text().replace("max_sessions = 3", "max_sessions = 2"))
            served.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + TIMEOUT
            while "configuration reloaded" not in served.stderr():
                assert time.monotonic() < deadline, served.stderr()
                await asyncio.sleep(0.05)
            await sessions[0].close()
            await asyncio.sleep(0.2)  # the daemon sees the end
            try:
                extra = await one()
                await extra.request("ping", b"")
            except ConnectionClosed as exc:
                return exc
            finally:
                for s in sessions[1:]:
                    await s.close()
            return None

        refused = asyncio.run(asyncio.wait_for(main(), 4 * TIMEOUT))
        assert refused is not None, "a third session opened beside two with max_sessions = 2"
        assert refused.code == ErrorCode.REFUSED
    finally:
        served.stop()


LIVE = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[peers.phone]
key = "{phone}"
[peers.phone.policy]
exec = [["sleep", "*"]]
EXPIRES
"""


def _sleeping(tag: str) -> bool:
    """Whether a `sleep TAG` process is running."""
    return subprocess.run(["pgrep", "-f", f"sleep {tag}"], capture_output=True).returncode == 0


def _run_until_revoked(
    served: Served, tag: str, revoke: Callable[[], None]
) -> tuple[ChannelError, Session]:
    async def main() -> tuple[ChannelError, Session]:
        session = await connect("127.0.0.1", served.port, pair_key=PHONE, device_id="home")
        running = asyncio.create_task(run_exec(session, ["sleep", tag]))
        deadline = time.monotonic() + TIMEOUT
        while not _sleeping(tag):
            assert time.monotonic() < deadline, served.stderr()
            await asyncio.sleep(0.05)
        revoke()
        with pytest.raises((ChannelError, ConnectionClosed)) as err:
            await asyncio.wait_for(running, 3 * TIMEOUT)
        return err.value, session

    return asyncio.run(main())


def test_expiry_ends_what_is_running_and_the_session(tmp_path: Path) -> None:
    """A `sleep` started before the peer's `expires` is killed when it passes; audited.

    Before, policy was judged only when a channel opened: the command ran on and
    the session stayed up after the peer expired.
    """
    # Far enough ahead that the daemon starts and the command runs first on a busy
    # machine (3 s was not: the exec was refused as expired before it started).
    ahead = timedelta(seconds=2 * TIMEOUT)
    expires = (datetime.now(UTC) + ahead).strftime("%Y-%m-%dT%H:%M:%SZ")
    served = serve(tmp_path, LIVE.replace("EXPIRES", f"expires = {expires}"))
    try:
        err, session = _run_until_revoked(served, "31.4159", lambda: None)
        # The session ends (REFUSED) with the command; either may be seen first.
        assert err.code in (ChannelCode.REFUSED, ErrorCode.REFUSED) and "expired" in str(err)
        assert not _sleeping("31.4159")
        asyncio.run(asyncio.wait_for(session.wait_closed(), TIMEOUT))
        rows = AuditLog(served.audit).list(peer="phone")
        assert any(r.kind == "exec" and r.result and "revoked" in r.result for r in rows)
        assert any(r.kind == "session" and r.decision == "deny" for r in rows)
    finally:
        served.stop()


def test_a_reload_removing_a_right_ends_the_command_using_it(tmp_path: Path) -> None:
    """SIGHUP with the exec right removed: the running command is killed, the session stays."""
    served = serve(tmp_path, LIVE.replace("EXPIRES", ""))
    cfg = tmp_path / "pstp.toml"

    def revoke() -> None:
        cfg.write_text(cfg.read_text().replace('exec = [["sleep", "*"]]', "exec = []"))
        served.proc.send_signal(signal.SIGHUP)

    try:
        err, session = _run_until_revoked(served, "27.1828", revoke)
        assert isinstance(err, ChannelError) and err.code == ChannelCode.REFUSED
        assert "no longer allowed" in err.reason
        assert not _sleeping("27.1828")
        assert not session.is_closed
    finally:
        served.stop()


RESERVE = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[audit]
path = "DISK/audit.sqlite"
reserve_mib = 4

[peers.phone]
key = "{phone}"
[peers.phone.policy]
files = [ {{ root = "DISK/inbox", write = true }} ]
"""


def test_a_put_that_would_eat_the_audit_reserve_is_refused(tmp_path: Path) -> None:
    """An 8 MiB file system holds the audit log and the peer's inbox: a 6 MiB put is refused.

    Before, a peer could fill the audit log's file system with its own puts and then
    run requests that were never audited.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    served = None
    try:
        (disk / "inbox").mkdir()
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(6 << 20))
        served = serve(tmp_path, RESERVE.replace("DISK", str(disk)))

        async def main() -> str:
            async with await connect(
                "127.0.0.1", served.port, pair_key=PHONE, device_id="home"
            ) as session:
                try:
                    summary = await put(session, [str(big)], str(disk / "inbox") + "/")
                except (ChannelError, TransferFailed) as exc:
                    return str(exc)
                return repr(summary.failed)

        said = asyncio.run(asyncio.wait_for(main(), 4 * TIMEOUT))
        assert "less than 4 MiB free for the audit log" in said
        assert not (disk / "inbox" / "big.bin").exists()
    finally:
        if served is not None:
            served.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)
