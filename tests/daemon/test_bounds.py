"""Nothing a peer or a stranger sends grows the daemon without a bound (docs/security.md).

Every test here runs a real `pstp serve` process on loopback and attacks it as a
hostile neighbour or a low-privilege paired peer would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from pstp.asyncio.client import connect
from pstp.exceptions import ChannelError
from pstp.wire.messages import ChannelCode
from tests.daemon.serving import GUEST, PHONE, Served, serve
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
