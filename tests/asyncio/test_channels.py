"""Channels, flow control, heartbeats and cancellation over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os

import pytest

from pstp.asyncio.client import connect
from pstp.asyncio.connection import Channel, Session
from pstp.asyncio.server import Server, serve
from pstp.exceptions import ChannelError, ConnectionClosed, ErrorCode
from pstp.protocol.config import Config
from pstp.wire.messages import INITIAL_WINDOW, ChannelCode
from tests.helpers import PAIR_KEY, SERVER_ID, TIMEOUT, make_keyring


async def echo(ch: Channel) -> int:
    """Echo the channel back, then exit with status 7."""
    async for data in ch:
        await ch.write(data)
    await ch.write_eof()
    return 7


async def sha(ch: Channel) -> None:
    """Reply with the SHA-256 of everything received."""
    h = hashlib.sha256()
    async for data in ch:
        h.update(data)
    await ch.write(h.digest())


async def start(config: Config | None = None, **handlers) -> Server:  # type: ignore[no-untyped-def]
    """A server on a free loopback port serving the given channel kinds."""
    return await serve(
        None,
        "127.0.0.1",
        0,
        keyring=make_keyring(),
        own_id=SERVER_ID,
        config=config,
        handlers={"echo": echo, "sha": sha, **handlers},
    )


async def test_request_response_and_exit_status() -> None:
    """request() returns the reply; a channel's exit status reaches the opener."""
    async with await start() as server:
        async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY) as s:
            assert await s.request("echo", b"kettle.on") == b"kettle.on"
            ch = await s.open_channel("echo")
            await ch.write(b"abc")
            await ch.write_eof()
            assert await ch.read_all() == b"abc"
            assert await ch.wait_closed() == 7


async def test_unknown_kind_is_rejected() -> None:
    """Opening a kind the peer does not serve raises ChannelError(UNKNOWN_KIND)."""
    async with await start() as server:
        async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY) as s:
            with pytest.raises(ChannelError) as info:
                await s.open_channel("teleport")
            assert info.value.code == ChannelCode.UNKNOWN_KIND
            with pytest.raises(ChannelError):
                await s.request("teleport", b"x")
            assert await s.request("echo", b"still fine") == b"still fine"


async def test_hundred_parallel_channels_interleave_intact() -> None:
    """100 channels on one session, written concurrently in pieces, each arrive intact."""
    async with await start() as server:
        async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY) as s:
            blobs = [os.urandom(20_000 + 997 * i) for i in range(100)]

            async def one(blob: bytes) -> bytes:
                ch = await s.open_channel("sha", wait_accepted=False)
                for off in range(0, len(blob), 4096):
                    await ch.write(blob[off : off + 4096])
                    await asyncio.sleep(0)  # let the other channels interleave
                await ch.write_eof()
                return await ch.read_all()

            digests = await asyncio.wait_for(asyncio.gather(*(one(b) for b in blobs)), TIMEOUT * 4)
            assert digests == [hashlib.sha256(b).digest() for b in blobs]


async def test_stalled_reader_bounds_buffered_bytes() -> None:
    """A reader that stops reading caps what is buffered at its window; the writer blocks."""
    window = 256 * 1024
    cfg = Config(channel_window=window)
    entered = asyncio.Event()
    release = asyncio.Event()
    held: list[Channel] = []

    async def stall(ch: Channel) -> None:
        held.append(ch)
        entered.set()
        await release.wait()
        async for _ in ch:
            pass

    async with await start(cfg, stall=stall) as server:
        async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY, config=cfg) as s:
            ch = await s.open_channel("stall")
            await entered.wait()
            sent = 0

            async def flood() -> None:
                nonlocal sent
                chunk = b"x" * 65536
                while True:
                    await ch.write(chunk)
                    sent += len(chunk)

            task = asyncio.create_task(flood())
            await asyncio.sleep(0.5)
            buffered = sum(len(b) for b in held[0]._core.inbox)
            assert not task.done()
            assert buffered <= window  # measured bound: never more than the window
            assert sent <= window + 65536  # the writer was stopped by flow control
            release.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_cancelled_request_leaves_the_session_usable() -> None:
    """Cancelling a pending request closes its channel; the session keeps working."""
    never = asyncio.Event()

    async def hang(ch: Channel) -> None:
        await never.wait()

    async with await start(hang=hang) as server:
        async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY) as s:
            task = asyncio.create_task(s.request("hang", b"?"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not s.connection._channels.ids()
            assert await s.request("echo", b"after cancel") == b"after cancel"


async def test_silent_peer_is_declared_dead_by_heartbeats() -> None:
    """A peer that stops answering is detected on the read path after the configured misses."""
    cfg = Config(keepalive_interval=0.1, keepalive_count_max=2)
    async with await start() as server:
        # A relay we can freeze: after the handshake it swallows everything.
        frozen = asyncio.Event()

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", server.port)

            async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                while data := await r.read(65536):
                    if not frozen.is_set():
                        w.write(data)

            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

        proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        s = await connect("127.0.0.1", port, pair_key=PAIR_KEY, config=cfg)
        assert await s.request("echo", b"alive") == b"alive"
        frozen.set()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(s.wait_closed(), TIMEOUT)
        elapsed = loop.time() - t0
        assert 0.25 <= elapsed < 2.0  # ~ interval x (count + 1)
        exc = s.connection.close_exc
        assert exc is not None and "heartbeat" in str(exc)
        with pytest.raises(ConnectionClosed) as info:
            await s.request("echo", b"x")
        assert info.value.code == ErrorCode.TIMEOUT
        proxy.close()


async def test_heartbeats_keep_an_idle_session_alive() -> None:
    """An idle session with short heartbeats stays up and measures a round trip."""
    cfg = Config(keepalive_interval=0.05, keepalive_count_max=2)
    async with await start(cfg) as server:
        async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY, config=cfg) as s:
            await asyncio.sleep(0.4)
            assert not s.is_closed
            assert s.last_rtt is not None and s.last_rtt < 0.05


async def test_session_end_fails_open_channels() -> None:
    """When the session ends, pending reads on its channels raise ConnectionClosed."""
    never = asyncio.Event()

    async def hang(ch: Channel) -> None:
        await never.wait()

    server = await start(hang=hang)
    s = await connect("127.0.0.1", server.port, pair_key=PAIR_KEY)
    ch = await s.open_channel("hang")
    reader = asyncio.create_task(ch.read())
    await asyncio.sleep(0.01)
    await server.close()
    with pytest.raises((ConnectionClosed, ChannelError)):
        await asyncio.wait_for(reader, TIMEOUT)


async def test_data_sent_before_accept_is_delivered() -> None:
    """Up to the initial window may be written before ACCEPT; it all arrives."""
    async with await start() as server:
        async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY) as s:
            blob = os.urandom(INITIAL_WINDOW + 12345)
            assert await s.request("sha", blob) == hashlib.sha256(blob).digest()


async def test_server_can_open_channels_to_the_client() -> None:
    """Channels work in both directions: the device opens one served by the client."""

    async def ask_client(session: Session) -> None:
        reply = await session.request("whoami", b"?")
        await session.send(b"client said " + reply)
        await session.wait_closed()

    async def whoami(ch: Channel) -> None:
        await ch.read_all()
        await ch.write(b"phone")

    server = await serve(ask_client, "127.0.0.1", 0, keyring=make_keyring(), own_id=SERVER_ID)
    async with server:
        s = await connect("127.0.0.1", server.port, pair_key=PAIR_KEY, handlers={"whoami": whoami})
        assert await asyncio.wait_for(s.recv(), TIMEOUT) == b"client said phone"
        await s.close()


def test_works_on_uvloop_too() -> None:
    """The driver runs unchanged on uvloop (its transports do not subclass asyncio's)."""
    pytest.importorskip("uvloop")
    from pstp.asyncio.runner import run

    async def main() -> bytes:
        async with await start() as server:
            async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY) as s:
                return await s.request("echo", b"on uvloop")

    assert run(main(), use_uvloop=True) == b"on uvloop"


async def test_locally_closed_channels_are_forgotten() -> None:
    """Closing channels ourselves does not leave them in the driver's table."""
    async with await start() as server:
        async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY) as s:
            for _ in range(20):
                ch = await s.open_channel("echo")
                await ch.close()
            assert await s.request("echo", b"x") == b"x"
            assert s._protocol.core.channels == {}


async def test_authorizer_refuses_before_accept_and_sees_params() -> None:
    """A channel the authorizer refuses is rejected with REFUSED and its reason."""
    seen: list[tuple[str, str, object]] = []

    def authorize(conn, kind, params):  # type: ignore[no-untyped-def]
        seen.append((conn.peer_id, kind, params.get("why")))
        return None if params.get("why") else "a reason is required"

    server = await serve(
        None,
        "127.0.0.1",
        0,
        keyring=make_keyring(),
        own_id=SERVER_ID,
        handlers={"echo": echo},
        authorize=authorize,
    )
    async with server:
        async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY) as s:
            with pytest.raises(ChannelError) as info:
                await s.request("echo", b"x")
            assert (info.value.code, info.value.reason) == (
                ChannelCode.REFUSED,
                "a reason is required",
            )
            assert await s.request("echo", b"y", {"why": "test"}) == b"y"
    assert seen == [("phone", "echo", None), ("phone", "echo", "test")]
