"""Tests for the asyncio driver over real loopback TCP sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

import pytest

from pstp.asyncio.client import connect
from pstp.asyncio.connection import Session, next_timestamp
from pstp.asyncio.server import Server, serve
from pstp.exceptions import ConnectionClosed, ErrorCode, HandshakeFailed
from pstp.protocol.config import Config
from tests.helpers import CLIENT_ID, PAIR_KEY, ROOT, SERVER_ID, TIMEOUT, make_keyring


async def echo(session: Session) -> None:
    """Echo every chunk back, prefixed."""
    async for data in session:
        await session.send(b"echo:" + data)


async def start(handler=echo, config: Config | None = None) -> Server:  # type: ignore[no-untyped-def]
    """A server on a free loopback port."""
    return await serve(
        handler, "127.0.0.1", 0, keyring=make_keyring(), own_id=SERVER_ID, config=config
    )


def test_timestamps_strictly_increase() -> None:
    """HS_INIT timestamps from one process never repeat, even within a nanosecond."""
    stamps = [next_timestamp() for _ in range(1000)]
    assert stamps == sorted(set(stamps))


async def test_echo_round_trips_over_tcp() -> None:
    """A client and a server exchange records over a real socket and close cleanly."""
    server = await start()
    async with server:
        session = await connect("127.0.0.1", server.port, pair_key=PAIR_KEY, device_id=SERVER_ID)
        async with session:
            assert session.peer_id == SERVER_ID
            for i in range(50):
                await session.send(f"msg {i}".encode())
                assert await session.recv() == f"echo:msg {i}".encode()
        with pytest.raises(ConnectionClosed):
            await session.recv()


async def test_large_transfer_arrives_intact() -> None:
    """8 MiB sent in one call arrives intact, split over many records."""
    got = bytearray()
    done = asyncio.Event()

    async def sink(session: Session) -> None:
        async for data in session:
            got.extend(data)
            if len(got) >= 8 << 20:
                done.set()

    server = await start(sink)
    async with server:
        blob = os.urandom(8 << 20)
        async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY) as session:
            await session.send(blob)
            await asyncio.wait_for(done.wait(), TIMEOUT)
    assert bytes(got) == blob


async def test_wrong_key_fails_with_handshake_failed() -> None:
    """A client with the wrong pair key gets HandshakeFailed; the server stays up."""
    server = await start()
    async with server:
        with pytest.raises(HandshakeFailed):
            await connect("127.0.0.1", server.port, pair_key=b"\x01" * 32, timeout=TIMEOUT)
        with pytest.raises(HandshakeFailed):
            await connect(
                "127.0.0.1", server.port, pair_key=PAIR_KEY, device_id="other", timeout=TIMEOUT
            )
        async with await connect("127.0.0.1", server.port, pair_key=PAIR_KEY) as session:
            await session.send(b"still serving")
            assert await session.recv() == b"echo:still serving"


async def test_garbage_from_one_peer_does_not_disturb_another() -> None:
    """A peer sending garbage is dropped while a good session keeps working."""
    server = await start()
    async with server:
        good = await connect("127.0.0.1", server.port, pair_key=PAIR_KEY)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(os.urandom(5000))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # silently closed
        writer.close()
        await good.send(b"hi")
        assert await good.recv() == b"echo:hi"
        await good.close()


async def test_server_close_ends_sessions_with_going_away() -> None:
    """Closing the server ends live sessions with an authenticated GOING_AWAY."""
    server = await start()
    session = await connect("127.0.0.1", server.port, pair_key=PAIR_KEY)
    await session.send(b"x")
    await session.recv()
    await server.close()
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(session.recv(), TIMEOUT)
    assert info.value.code == ErrorCode.GOING_AWAY


async def test_slow_reader_pauses_the_socket() -> None:
    """When the application stops reading, buffered bytes stay bounded near high water."""
    holding: list[Session] = []
    release = asyncio.Event()

    async def stall(session: Session) -> None:
        holding.append(session)
        await release.wait()
        async for _ in session:
            pass

    server = await start(stall)
    async with server:
        client = await connect("127.0.0.1", server.port, pair_key=PAIR_KEY)
        chunk = b"x" * 65536
        with pytest.raises(TimeoutError):
            # 256 MiB cannot all be accepted while the server is not reading.
            async def flood() -> None:
                for _ in range(4096):
                    await client.send(chunk)

            await asyncio.wait_for(flood(), 1.0)
        proto = holding[0]._protocol
        assert proto._reading_paused
        assert proto.core.inbox_bytes <= (1 << 20) + 2 * 65536
        release.set()
        await client.close()


def test_two_processes_complete_the_handshake_and_exchange_records() -> None:
    """A server process and a client in this process complete PSTP-HS over loopback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    child = subprocess.Popen(
        [sys.executable, "-m", "pstp", "demo", "--role", "server", "--port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        # The demo device holds our key for CLIENT_ID; the key goes over a pipe.
        child.stdin.write(PAIR_KEY.hex().encode() + b"\n")
        child.stdin.close()
        word, host, port = child.stdout.readline().decode().split()
        assert word == "listening"

        async def talk() -> list[bytes]:
            async with await connect(host, int(port), pair_key=PAIR_KEY, device_id="home") as s:
                out = []
                for msg in (b"kettle.on", b"x" * 60_000):
                    await s.send(msg)
                    got = b""
                    while len(got) < len(msg) + 4:
                        got += await s.recv()
                    out.append(got)
                return out

        replies = asyncio.run(talk())
        assert replies == [b"ok: kettle.on", b"ok: " + b"x" * 60_000]
    finally:
        child.terminate()
        assert child.wait(TIMEOUT) == 0


def test_demo_command_runs_both_halves_in_two_processes() -> None:
    """`pstp demo` spawns the device, authenticates, exchanges records and exits 0."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run(
        [sys.executable, "-m", "pstp", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT * 6,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "challenge received" in out.stdout
    assert "device answered 'ok: kettle.on'" in out.stdout
    assert "closed cleanly" in out.stdout
    assert CLIENT_ID in out.stdout


async def test_paused_reader_is_not_mistaken_for_a_dead_peer() -> None:
    """While reading is paused for backpressure, heartbeat silence does not end the session."""
    cfg = Config(keepalive_interval=0.5, keepalive_count_max=2)  # silence limit 1.5 s
    holding: list[Session] = []
    release = asyncio.Event()

    async def stall(session: Session) -> None:
        holding.append(session)
        await release.wait()
        async for _ in session:
            pass

    server = await serve(
        stall, "127.0.0.1", 0, keyring=make_keyring(), own_id=SERVER_ID, config=cfg
    )
    async with server:
        client = await connect("127.0.0.1", server.port, pair_key=PAIR_KEY, config=cfg)

        async def flood() -> None:
            for _ in range(64):
                await client.send(b"x" * 65536)

        task = asyncio.create_task(flood())
        await asyncio.sleep(0.7)  # past the heartbeat interval, with reading paused
        assert holding[0]._protocol._reading_paused
        assert not holding[0].is_closed
        release.set()
        await asyncio.wait_for(task, TIMEOUT)
        await client.close()


async def test_a_session_paused_past_the_silence_limit_ends_as_stalled() -> None:
    """Reading paused longer than the dead-peer limit ends the session with TIMEOUT.

    Before, a paused session had no deadline at all: a peer that filled the buffer
    and then went quiet kept its session (and its buffer) for ever.
    """
    cfg = Config(keepalive_interval=0.1, keepalive_count_max=2)  # silence limit 0.3 s
    holding: list[Session] = []

    async def never_read(session: Session) -> None:
        holding.append(session)
        await session.wait_closed()

    server = await serve(
        never_read, "127.0.0.1", 0, keyring=make_keyring(), own_id=SERVER_ID, config=cfg
    )
    async with server:
        client = await connect("127.0.0.1", server.port, pair_key=PAIR_KEY, config=cfg)
        with contextlib.suppress(ConnectionClosed):
            for _ in range(64):
                await client.send(b"x" * 65536)
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        await asyncio.wait_for(holding[0].wait_closed(), TIMEOUT)
        assert client.connection.close_code in (ErrorCode.TIMEOUT, ErrorCode.TRUNCATED)
