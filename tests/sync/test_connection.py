"""Tests for the blocking driver over real sockets: socketpairs, loopback TCP, and asyncio peers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from pstp.asyncio.client import connect as aconnect
from pstp.asyncio.connection import Channel as AsyncChannel
from pstp.asyncio.connection import Session as AsyncSession
from pstp.asyncio.server import serve as aserve
from pstp.exceptions import ChannelError, ConnectionClosed, ErrorCode, HandshakeFailed
from pstp.protocol.config import Config
from pstp.protocol.connection import ConnectionState
from pstp.protocol.events import ChannelClosed, ChannelOpenRequested, DataReceived, Event
from pstp.sync.client import connect
from pstp.sync.connection import ChannelHandler, SyncChannel, SyncSession, next_timestamp
from pstp.sync.server import accept
from pstp.wire.messages import INITIAL_WINDOW, ChannelCode
from tests.helpers import CLIENT_ID, PAIR_KEY, SERVER_ID, TIMEOUT, make_keyring, make_server

# A short wait that is expected to expire (a blocked call stays blocked this long).
SHORT = TIMEOUT / 50

Pair = tuple[SyncSession, SyncSession]


def echo(ch: SyncChannel) -> int:
    """Echo the channel back, then exit with status 7."""
    for data in ch:
        ch.write(data)
    ch.write_eof()
    return 7


def sha(ch: SyncChannel) -> None:
    """Reply with the SHA-256 of everything received."""
    ch.write(hashlib.sha256(ch.read_all()).digest())


def sync_pair(
    server_handlers: Mapping[str, ChannelHandler] | None = None,
    client_handlers: Mapping[str, ChannelHandler] | None = None,
    config: Config | None = None,
    sockets: tuple[socket.socket, socket.socket] | None = None,
) -> Pair:
    """A client and a server session over a socketpair (or the given connected sockets)."""
    a, b = sockets if sockets is not None else socket.socketpair()
    with ThreadPoolExecutor(1) as pool:
        server = pool.submit(
            accept,
            b,
            keyring=make_keyring(),
            own_id=SERVER_ID,
            config=config,
            handlers={"echo": echo, "sha": sha, **(server_handlers or {})},
            timeout=TIMEOUT,
        )
        client = connect(
            sock=a,
            pair_key=PAIR_KEY,
            device_id=SERVER_ID,
            own_id=CLIENT_ID,
            config=config,
            handlers=client_handlers,
            timeout=TIMEOUT,
        )
        return client, server.result(TIMEOUT)


@pytest.fixture
def make_pair() -> Iterator[Callable[..., Pair]]:
    """Builds session pairs and closes them all at the end of the test."""
    made: list[SyncSession] = []

    def make(**kw: object) -> Pair:
        pair = sync_pair(**kw)  # type: ignore[arg-type]
        made.extend(pair)
        return pair

    yield make
    for session in made:
        session.close()


def tcp_sockets() -> tuple[socket.socket, socket.socket]:
    """Both ends of a fresh loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT)
        server, _ = listener.accept()
    return client, server


def test_timestamps_strictly_increase_across_threads() -> None:
    """HS_INIT timestamps never repeat, even when four threads take them at once."""
    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: [next_timestamp() for _ in range(500)], range(4)))
    stamps = [s for batch in batches for s in batch]
    assert len(set(stamps)) == len(stamps)
    assert all(batch == sorted(batch) for batch in batches)


def test_handshake_over_socketpair(make_pair: Callable[..., Pair]) -> None:
    """Both sides agree on ids and session id, and session data flows both ways."""
    client, server = make_pair()
    assert client.peer_id == SERVER_ID
    assert server.peer_id == CLIENT_ID
    assert server.connection.peer_stated_id == CLIENT_ID
    assert client.session_id == server.session_id
    client.send(b"ping")
    assert server.recv(TIMEOUT) == b"ping"
    server.send(b"pong")
    assert client.recv(TIMEOUT) == b"pong"


def test_handshake_and_echo_over_tcp() -> None:
    """connect() dials real TCP; the session echoes 50 messages, then ends cleanly."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve_one() -> None:
            sock, _ = listener.accept()
            with accept(sock, keyring=make_keyring(), own_id=SERVER_ID) as session:
                for data in session:
                    session.send(b"echo:" + data)

        with ThreadPoolExecutor(1) as pool:
            served = pool.submit(serve_one)
            host, port = listener.getsockname()[:2]
            with connect(host, port, pair_key=PAIR_KEY, device_id=SERVER_ID) as session:
                assert session.connection.peer_id == SERVER_ID
                for i in range(50):
                    session.send(f"msg {i}".encode())
                    assert session.recv(TIMEOUT) == f"echo:msg {i}".encode()
            served.result(TIMEOUT)  # the server's loop ended: iteration stops on a normal close
    assert session.is_closed
    with pytest.raises(ConnectionClosed) as info:
        session.send(b"late")
    assert info.value.code == ErrorCode.NORMAL


def test_large_session_transfer_over_tcp(make_pair: Callable[..., Pair]) -> None:
    """8 MiB sent in one call over TCP arrives intact, in order."""
    client, server = make_pair(sockets=tcp_sockets())
    blob = os.urandom(8 << 20)
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(client.send, blob)
        got = bytearray()
        while len(got) < len(blob):
            got += server.recv(TIMEOUT)
        sent.result(TIMEOUT)
    assert bytes(got) == blob


def test_wrong_key_fails_on_both_sides() -> None:
    """A wrong pair key raises HandshakeFailed for both peers; the server socket is closed."""
    a, b = socket.socketpair()
    with ThreadPoolExecutor(1) as pool:
        server = pool.submit(accept, b, keyring=make_keyring(), own_id=SERVER_ID, timeout=TIMEOUT)
        with pytest.raises(HandshakeFailed):
            connect(sock=a, pair_key=b"\x01" * 32, timeout=TIMEOUT)
        with pytest.raises(HandshakeFailed):
            server.result(TIMEOUT)
    assert a.fileno() == -1 and b.fileno() == -1


def test_wrong_device_id_fails() -> None:
    """Expecting another device id fails the handshake (the id is bound into the prologue)."""
    a, b = socket.socketpair()
    with ThreadPoolExecutor(1) as pool:
        server = pool.submit(accept, b, keyring=make_keyring(), own_id=SERVER_ID, timeout=TIMEOUT)
        with pytest.raises(HandshakeFailed):
            connect(sock=a, pair_key=PAIR_KEY, device_id="other", timeout=TIMEOUT)
        with pytest.raises(HandshakeFailed):
            server.result(TIMEOUT)


def test_core_handshake_deadline_fires_in_the_io_thread() -> None:
    """A silent responder trips the core's handshake timer: HandshakeFailed, not a hang."""
    a, b = socket.socketpair()
    with b, pytest.raises(HandshakeFailed):
        connect(sock=a, pair_key=PAIR_KEY, config=Config(handshake_timeout=SHORT), timeout=TIMEOUT)


def test_connect_timeout_raises_timeout_error() -> None:
    """connect(timeout=...) shorter than the handshake timeout raises TimeoutError."""
    a, b = socket.socketpair()
    with b, pytest.raises(TimeoutError):
        connect(sock=a, pair_key=PAIR_KEY, timeout=SHORT)
    assert a.fileno() == -1


def test_accept_timeout_raises_handshake_failed() -> None:
    """accept() from a silent initiator raises HandshakeFailed and closes the socket."""
    a, b = socket.socketpair()
    with a, pytest.raises(HandshakeFailed):
        accept(b, keyring=make_keyring(), own_id=SERVER_ID, timeout=SHORT)
    assert b.fileno() == -1


def test_connect_rejects_a_short_key() -> None:
    """A pair key that is not 32 bytes is refused before any I/O."""
    with pytest.raises(ValueError, match="32 bytes"):
        connect("127.0.0.1", 1, pair_key=b"short")


def test_request_response_and_exit_status(make_pair: Callable[..., Pair]) -> None:
    """request() returns the reply; a channel's exit status reaches the opener."""
    client, _ = make_pair()
    assert client.request("echo", b"kettle.on", timeout=TIMEOUT) == b"kettle.on"
    blob = os.urandom(INITIAL_WINDOW * 3 + 123)
    assert client.request("sha", blob, timeout=TIMEOUT) == hashlib.sha256(blob).digest()
    with client.open_channel("echo", timeout=TIMEOUT) as ch:
        ch.write(b"abc")
        ch.write_eof()
        assert ch.read(1, timeout=TIMEOUT) == b"a"
        assert ch.read_all(timeout=TIMEOUT) == b"bc"
        assert ch.wait_closed(timeout=TIMEOUT) == 7
        assert ch.exit_status == 7


def test_unknown_kind_is_rejected(make_pair: Callable[..., Pair]) -> None:
    """Opening a kind the peer does not serve raises ChannelError(UNKNOWN_KIND)."""
    client, _ = make_pair()
    with pytest.raises(ChannelError) as info:
        client.open_channel("teleport", timeout=TIMEOUT)
    assert info.value.code == ChannelCode.UNKNOWN_KIND
    with pytest.raises(ChannelError):
        client.request("teleport", b"x", timeout=TIMEOUT)
    assert client.request("echo", b"still fine", timeout=TIMEOUT) == b"still fine"


def test_failing_handler_closes_its_channel_with_an_error(make_pair: Callable[..., Pair]) -> None:
    """A handler that raises ends its channel with APPLICATION_ERROR; the session lives on."""

    def boom(ch: SyncChannel) -> None:
        raise RuntimeError("boom")

    client, _ = make_pair(server_handlers={"boom": boom})
    with pytest.raises(ChannelError) as info:
        client.request("boom", timeout=TIMEOUT)
    assert info.value.code == ChannelCode.APPLICATION_ERROR
    assert client.request("echo", b"ok", timeout=TIMEOUT) == b"ok"


def test_twenty_channels_in_parallel_from_threads(make_pair: Callable[..., Pair]) -> None:
    """20 threads write interleaved pieces on 20 channels of one session; each echo is intact."""
    client, _ = make_pair(sockets=tcp_sockets())
    blobs = [os.urandom(50_000 + 7919 * i) for i in range(20)]
    start = threading.Barrier(20)

    def one(blob: bytes) -> tuple[bytes, int | None]:
        ch = client.open_channel("echo", wait_accepted=False)
        start.wait(TIMEOUT)  # every thread writes at once, so records interleave
        for off in range(0, len(blob), 4096):
            ch.write(blob[off : off + 4096], timeout=TIMEOUT)
        ch.write_eof()
        return ch.read_all(timeout=TIMEOUT), ch.wait_closed(timeout=TIMEOUT)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, blobs, timeout=TIMEOUT * 4))
    assert [r[0] for r in results] == blobs
    assert {r[1] for r in results} == {7}


def test_server_opens_a_channel_to_the_client(make_pair: Callable[..., Pair]) -> None:
    """Channels work in both directions: the device opens one the client serves."""

    def whoami(ch: SyncChannel) -> int:
        ch.read_all()
        ch.write(b"phone")
        return 0

    client, server = make_pair(client_handlers={"whoami": whoami})
    assert server.request("whoami", b"?", timeout=TIMEOUT) == b"phone"
    client.set_handler("whoami", None)
    with pytest.raises(ChannelError):
        server.request("whoami", b"?", timeout=TIMEOUT)


def test_stalled_reader_bounds_buffered_bytes_to_the_window(
    make_pair: Callable[..., Pair],
) -> None:
    """A reader that stops reading caps what is buffered at its window; the writer blocks."""
    window = 256 * 1024
    held: list[SyncChannel] = []
    entered = threading.Event()
    release = threading.Event()

    def stall(ch: SyncChannel) -> int:
        held.append(ch)
        entered.set()
        release.wait(TIMEOUT * 4)
        return len(ch.read_all(timeout=TIMEOUT))

    client, _ = make_pair(config=Config(channel_window=window), server_handlers={"stall": stall})
    ch = client.open_channel("stall", timeout=TIMEOUT)
    assert entered.wait(TIMEOUT)
    total = 4 * window
    sent = [0]

    def flood() -> None:
        chunk = b"x" * 65536
        while sent[0] < total:
            ch.write(chunk, timeout=TIMEOUT * 4)
            sent[0] += len(chunk)
        ch.write_eof()

    with ThreadPoolExecutor(1) as pool:
        writer = pool.submit(flood)
        peer = held[0]

        def buffered() -> int:
            return sum(len(b) for b in peer._core.inbox)

        with peer._cond:
            assert peer._cond.wait_for(lambda: buffered() >= window, TIMEOUT)
            assert buffered() == window  # never more than the window we granted
        # The writer has used up its window and is blocked waiting for more.
        assert client.connection.channel_send_window(ch.id) == 0
        with pytest.raises(FutureTimeout):
            writer.result(SHORT)
        assert sent[0] <= window
        assert buffered() == window
        release.set()
        writer.result(TIMEOUT)
    assert ch.wait_closed(timeout=TIMEOUT) == total


def test_slow_session_reader_pauses_the_socket(make_pair: Callable[..., Pair]) -> None:
    """Unread session DATA is bounded near high water: the I/O thread stops reading."""
    client, server = make_pair()
    high_water = server._core.high_water
    blob = os.urandom(8 << 20)
    with ThreadPoolExecutor(1) as pool:
        writer = pool.submit(client.send, blob)
        with server._cond:
            assert server._cond.wait_for(lambda: server._core.reading_paused, TIMEOUT)
        with pytest.raises(FutureTimeout):
            writer.result(SHORT)  # the sender is held back by the socket
        # At most one read's worth of records lands after crossing high water.
        assert server._core.inbox_bytes <= high_water + 256 * 1024
        got = bytearray()
        while len(got) < len(blob):
            got += server.recv(TIMEOUT)
        writer.result(TIMEOUT)
    assert bytes(got) == blob
    assert not server._core.reading_paused


def test_recv_timeout_leaves_the_session_usable(make_pair: Callable[..., Pair]) -> None:
    """A timed-out recv or channel read raises TimeoutError; later data still arrives."""
    client, server = make_pair()
    with pytest.raises(TimeoutError):
        client.recv(SHORT)
    server.send(b"late")
    assert client.recv(TIMEOUT) == b"late"
    with client.open_channel("echo", timeout=TIMEOUT) as ch:
        with pytest.raises(TimeoutError):
            ch.read(timeout=SHORT)
        ch.write(b"now")
        assert ch.read(timeout=TIMEOUT) == b"now"


def test_request_timeout_cancels_only_its_channel(make_pair: Callable[..., Pair]) -> None:
    """A request that times out closes its channel with CANCELLED; the session goes on."""
    never = threading.Event()
    seen: list[SyncChannel] = []

    def hang(ch: SyncChannel) -> None:
        seen.append(ch)
        never.wait(TIMEOUT * 4)

    client, _ = make_pair(server_handlers={"hang": hang})
    with pytest.raises(TimeoutError):
        client.request("hang", b"?", timeout=SHORT)
    assert not client.connection._channels.ids()
    assert client.request("echo", b"after timeout", timeout=TIMEOUT) == b"after timeout"
    with pytest.raises(ChannelError) as info:
        seen[0].wait_closed(timeout=TIMEOUT)
    assert info.value.code == ChannelCode.CANCELLED
    never.set()


def test_session_end_fails_blocked_readers(make_pair: Callable[..., Pair]) -> None:
    """When the session ends, blocked channel reads and recv raise ConnectionClosed."""
    never = threading.Event()
    entered = threading.Event()

    def hang(ch: SyncChannel) -> None:
        entered.set()
        never.wait(TIMEOUT * 4)

    client, server = make_pair(server_handlers={"hang": hang})
    ch = client.open_channel("hang", timeout=TIMEOUT)
    assert entered.wait(TIMEOUT)
    with ThreadPoolExecutor(2) as pool:
        reader = pool.submit(ch.read)
        receiver = pool.submit(client.recv)
        server.close(ErrorCode.GOING_AWAY, "bye")
        for blocked in (reader, receiver):
            with pytest.raises(ConnectionClosed) as info:
                blocked.result(TIMEOUT)
            assert info.value.code == ErrorCode.GOING_AWAY
    with pytest.raises(ConnectionClosed):
        ch.write(b"x")
    with pytest.raises(ConnectionClosed):
        client.open_channel("echo")
    client.wait_closed(TIMEOUT)
    never.set()


def test_dropped_transport_reads_as_truncation(make_pair: Callable[..., Pair]) -> None:
    """A peer whose socket vanishes without CLOSE ends the session with TRUNCATED."""
    client, server = make_pair()
    server._sock.shutdown(socket.SHUT_RDWR)
    with pytest.raises(ConnectionClosed) as info:
        client.recv(TIMEOUT)
    assert info.value.code == ErrorCode.TRUNCATED


def test_close_ends_iteration_and_fails_later_calls(make_pair: Callable[..., Pair]) -> None:
    """Leaving ``with`` sends CLOSE: the peer's iteration stops; later sends raise."""
    client, server = make_pair()
    with client:
        client.send(b"a")
        client.send(b"b")
    assert client.is_closed
    assert b"".join(server) == b"ab"
    server.wait_closed(TIMEOUT)
    client.close()  # closing twice does nothing
    with pytest.raises(ConnectionClosed):
        client.request("echo", b"x")


def test_heartbeats_keep_an_idle_session_alive(make_pair: Callable[..., Pair]) -> None:
    """With short heartbeats the I/O thread pings on its timer and the session stays up."""
    cfg = Config(keepalive_interval=SHORT / 4, keepalive_count_max=2)
    client, _ = make_pair(config=cfg)
    with pytest.raises(TimeoutError):
        client.wait_closed(SHORT * 2)
    assert not client.is_closed
    assert client.last_rtt is not None
    assert client.request("echo", b"alive", timeout=TIMEOUT) == b"alive"


# -- interop with the asyncio driver ------------------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a background thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(TIMEOUT)
    loop.close()


async def async_echo(ch: AsyncChannel) -> int:
    """Echo a channel back (asyncio side), exit status 7."""
    async for data in ch:
        await ch.write(data)
    await ch.write_eof()
    return 7


def test_sync_client_against_asyncio_server(loop: asyncio.AbstractEventLoop) -> None:
    """The sync client completes the handshake with the asyncio server and uses it fully."""

    async def handler(session: AsyncSession) -> None:
        async for data in session:
            await session.send(b"echo:" + data)

    server = asyncio.run_coroutine_threadsafe(
        aserve(
            handler,
            "127.0.0.1",
            0,
            keyring=make_keyring(),
            own_id=SERVER_ID,
            handlers={"echo": async_echo},
        ),
        loop,
    ).result(TIMEOUT)
    try:
        with connect("127.0.0.1", server.port, pair_key=PAIR_KEY, device_id=SERVER_ID) as s:
            s.send(b"hello")
            assert s.recv(TIMEOUT) == b"echo:hello"
            blob = os.urandom(512 * 1024)  # below the window: echo replies while we write
            assert s.request("echo", blob, timeout=TIMEOUT) == blob
            with s.open_channel("echo", timeout=TIMEOUT) as ch:
                ch.write(b"x")
                ch.write_eof()
                assert ch.read_all(timeout=TIMEOUT) == b"x"
                assert ch.wait_closed(timeout=TIMEOUT) == 7
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(TIMEOUT)


def test_asyncio_client_against_sync_server() -> None:
    """The asyncio client completes the handshake with the sync server and uses it fully."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve_one() -> None:
            sock, _ = listener.accept()
            with accept(
                sock, keyring=make_keyring(), own_id=SERVER_ID, handlers={"echo": echo}
            ) as session:
                for data in session:
                    session.send(b"echo:" + data)

        async def talk(port: int) -> tuple[bytes, bytes, bytes, int | None]:
            async with await aconnect(
                "127.0.0.1", port, pair_key=PAIR_KEY, device_id=SERVER_ID, timeout=TIMEOUT
            ) as s:
                await s.send(b"hello")
                first = await asyncio.wait_for(s.recv(), TIMEOUT)
                blob = os.urandom(512 * 1024)  # below the window: echo replies while we write
                big = await asyncio.wait_for(s.request("echo", blob), TIMEOUT)
                ch = await s.open_channel("echo")
                await ch.write(b"y")
                await ch.write_eof()
                small = await asyncio.wait_for(ch.read_all(), TIMEOUT)
                status = await asyncio.wait_for(ch.wait_closed(), TIMEOUT)
                return (
                    first,
                    hashlib.sha256(big).digest() + hashlib.sha256(blob).digest(),
                    small,
                    status,
                )

        with ThreadPoolExecutor(1) as pool:
            served = pool.submit(serve_one)
            first, digests, small, status = asyncio.run(talk(listener.getsockname()[1]))
            served.result(TIMEOUT)
    assert first == b"echo:hello"
    assert digests[:32] == digests[32:]
    assert (small, status) == (b"y", 7)


# -- against a peer driven by hand, which can stop reading ----------------------------


class RawPeer:
    """A responder core driven by hand over a socket, so a test decides when it reads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = make_server()
        self.conn.start(time.monotonic())
        self.events: list[Event] = []

    def pump_until(self, done: Callable[[], bool]) -> None:
        """Read, feed the core and answer until ``done()``."""
        deadline = time.monotonic() + TIMEOUT
        self.sock.settimeout(TIMEOUT)
        while not done():
            assert time.monotonic() < deadline
            self.conn.receive_data(self.sock.recv(65536), time.monotonic())
            self.events += self.conn.events_received()
            self.sock.sendall(self.conn.data_to_send())


def raw_pair(
    client_sndbuf: int | None = None, config: Config | None = None
) -> tuple[SyncSession, RawPeer]:
    """A sync client connected over a socketpair to a RawPeer."""
    a, b = socket.socketpair()
    if client_sndbuf is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, client_sndbuf)
    peer = RawPeer(b)
    with ThreadPoolExecutor(1) as pool:
        client = pool.submit(
            connect,
            sock=a,
            pair_key=PAIR_KEY,
            device_id=SERVER_ID,
            timeout=TIMEOUT,
            config=config,
        )
        peer.pump_until(lambda: peer.conn.state is ConnectionState.ESTABLISHED)
        return client.result(TIMEOUT), peer


def test_io_thread_keeps_reading_while_its_output_waits() -> None:
    """With the socket full of unread PONGs, the I/O thread still reads; order is kept."""
    # 2000 PINGs at once would be a heartbeat flood (§6.5): this client allows them.
    client, peer = raw_pair(client_sndbuf=4096, config=Config(ping_burst=4096))
    try:
        for _ in range(2000):  # ~80 KB of PONGs: far more than the socket holds
            peer.conn.send_ping()
        peer.conn.send_data(b"still reading")
        peer.sock.sendall(peer.conn.data_to_send())
        # Had the I/O thread blocked writing PONGs, this would never arrive.
        assert client.recv(TIMEOUT) == b"still reading"
        # One more read means one more loop turn, which took the PONGs to write.
        peer.conn.send_data(b"again")
        peer.sock.sendall(peer.conn.data_to_send())
        assert client.recv(TIMEOUT) == b"again"
        assert client._io_sending and client._pending  # its output waits for the socket
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(client.send, b"after the pongs")
            peer.pump_until(lambda: any(isinstance(e, DataReceived) for e in peer.events))
            sent.result(TIMEOUT)
        assert peer.conn.state is ConnectionState.ESTABLISHED  # every record arrived in order
        assert [e.data for e in peer.events if isinstance(e, DataReceived)] == [b"after the pongs"]
    finally:
        peer.sock.close()
        client.close()


def test_open_channel_timeout_cancels_the_channel() -> None:
    """open_channel(timeout=...) without an answer raises TimeoutError and sends CANCELLED."""
    client, peer = raw_pair()
    try:
        with pytest.raises(TimeoutError):
            client.open_channel("slow", timeout=SHORT)
        peer.pump_until(lambda: any(isinstance(e, ChannelClosed) for e in peer.events))
        opened, closed = peer.events[-2:]
        assert isinstance(opened, ChannelOpenRequested) and opened.kind == "slow"
        assert isinstance(closed, ChannelClosed) and closed.code == ChannelCode.CANCELLED
        assert not client.connection._channels.ids()
    finally:
        peer.sock.close()
        client.close()


def test_channel_closed_by_the_peer_refuses_writes(make_pair: Callable[..., Pair]) -> None:
    """After the handler returns, writes raise ChannelError(CANCELLED); EOF is a no-op."""
    never = threading.Event()

    def quick(ch: SyncChannel) -> int:
        return 3

    def hang(ch: SyncChannel) -> None:
        never.wait(TIMEOUT * 4)

    client, _ = make_pair(server_handlers={"quick": quick, "hang": hang})
    ch = client.open_channel("quick", timeout=TIMEOUT)
    assert ch.wait_closed(timeout=TIMEOUT) == 3
    with pytest.raises(ChannelError) as info:
        ch.write(b"x")
    assert info.value.code == ChannelCode.CANCELLED
    ch.write_eof()
    assert ch.read() == b""
    slow = client.open_channel("hang", timeout=TIMEOUT)
    with pytest.raises(TimeoutError):
        slow.wait_closed(timeout=SHORT)
    slow.close(code=ChannelCode.CANCELLED)
    with pytest.raises(ChannelError):
        slow.wait_closed(timeout=TIMEOUT)
    never.set()


def test_handler_raising_a_pstp_error_fails_its_channel(make_pair: Callable[..., Pair]) -> None:
    """A handler that raises a PSTP error ends its channel with APPLICATION_ERROR."""

    def refuse(ch: SyncChannel) -> None:
        raise ChannelError(ch.id, ChannelCode.REFUSED, "no")

    client, _ = make_pair(server_handlers={"refuse": refuse})
    with pytest.raises(ChannelError) as info:
        client.request("refuse", b"?", timeout=TIMEOUT)
    assert info.value.code == ChannelCode.APPLICATION_ERROR


def test_broken_transport_ends_the_session(make_pair: Callable[..., Pair]) -> None:
    """A write that fails at the socket ends the session; later calls raise ConnectionClosed."""
    client, _ = make_pair()
    client._sock.shutdown(socket.SHUT_WR)
    # The failure surfaces on the next call, as with TCP: the send if the I/O thread
    # has already seen the server hang up, else the recv after it.
    with pytest.raises(ConnectionClosed) as info:
        client.send(b"lost")
        client.recv(TIMEOUT)
    assert info.value.code == ErrorCode.TRUNCATED
    client.wait_closed(TIMEOUT)
