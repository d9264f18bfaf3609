"""Nothing a peer or a stranger sends grows the daemon without a bound (docs/security.md).

Every test here runs a real `pstp serve` process on loopback and attacks it as a
hostile neighbour or a low-privilege paired peer would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest

from pstp.asyncio.client import connect
from pstp.exceptions import ChannelError, ConnectionClosed, ErrorCode
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
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One daemon for the tests that do not change its configuration."""
    served = serve(tmp_path_factory.mktemp("bounds"), CONFIG)
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


def test_a_peer_that_reads_nothing_cannot_make_replies_pile_up(daemon: Served) -> None:
    """Heartbeat PINGs from a peer that never reads: answers are bounded, then it is cut off.

    Before, every PING's PONG queued in the daemon's write buffer: 10 MiB of PINGs
    grew it by 8 MB.  Now at most 1 MiB of answers may wait (REPLY_FLOOD), then the
    session ends and its descriptor is released.
    """
    before = daemon.rss_kib()
    fds = daemon.fds()
    sock, conn = raw_session(daemon.port, GUEST, rcvbuf=4096)
    sent = 0
    cut_off = False
    try:
        while sent < 40 << 20:  # 40 MiB of PINGs, never reading a byte
            for _ in range(1000):
                conn.send_ping()
            out = conn.data_to_send()
            sock.sendall(out)
            sent += len(out)
    except OSError:
        cut_off = True  # reset by the daemon, as it should be
    finally:
        sock.close()
    grown = daemon.rss_kib() - before
    assert cut_off, f"the daemon took {sent} bytes of PINGs without cutting the peer off"
    assert grown < 8 * 1024, f"daemon grew by {grown} KiB"
    deadline = time.monotonic() + TIMEOUT
    while daemon.fds() > fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.fds() <= fds


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
