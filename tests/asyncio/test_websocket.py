"""Tests for pstp.asyncio.websocket: PSTP/2 over WebSocket (docs/protocol.md §19.2).

The session behaviours themselves run over WebSocket in tests/drivers/ (the
``websocket`` driver); here, what is WebSocket's own: the upgrade and its
refusals, one frame per binary message, text, fragmented and oversized
messages, a stranger who never upgrades, and proxies.  The peer on the other
end is a real socket speaking through websockets' sans-I/O protocol, so each
byte on the wire is the test's choice.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from pstp.asyncio.client import connect
from pstp.asyncio.server import Server, serve
from pstp.asyncio.websocket import SUBPROTOCOL, max_message
from pstp.exceptions import HandshakeFailed
from pstp.protocol.config import Config
from pstp.protocol.connection import Connection, ConnectionState
from pstp.wire.frames import FRAME_HEADER_LEN
from tests.helpers import PAIR_KEY, SERVER_ID, TIMEOUT, make_client, make_keyring

PATH = "/pstp"


async def echo(ch: object) -> int:
    data = await ch.read_all()  # type: ignore[attr-defined]
    await ch.write(data)  # type: ignore[attr-defined]
    return 0


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = await serve(
        None,
        "127.0.0.1",
        0,
        keyring=make_keyring(),
        own_id=SERVER_ID,
        handlers={"echo": echo},
        websocket=PATH,
        config=Config(handshake_timeout=TIMEOUT),
    )
    try:
        yield srv
    finally:
        await srv.close()


class RawWs:
    """A WebSocket client on a real socket, frame by frame (websockets' sans-I/O)."""

    def __init__(self, port: int, path: str = PATH, subprotocols: list[str] | None = None) -> None:
        self.ws = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{port}{path}"),
            subprotocols=[SUBPROTOCOL] if subprotocols is None else subprotocols,  # type: ignore[misc]
            max_size=None,
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.port = port

    async def open(self) -> Response:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.ws.send_request(self.ws.connect())
        await self.flush()
        while True:
            for event in await self.events():
                assert isinstance(event, Response)
                return event

    async def flush(self) -> None:
        assert self.writer is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.writer.write(chunk)
        await self.writer.drain()

    async def events(self) -> list[object]:
        """Read once (EOF counts) and return what it made."""
        assert self.reader is not None
        data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
        if data:
            self.ws.receive_data(data)
        else:
            self.ws.receive_eof()
        await self.flush()
        return list(self.ws.events_received())

    async def frames_until_closed(self) -> list[Frame]:
        """Every frame until the server ends the TCP connection."""
        got: list[Frame] = []
        assert self.reader is not None
        while not self.reader.at_eof():
            got += [e for e in await self.events() if isinstance(e, Frame)]
        return got

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def test_a_session_runs_over_ws(server: Server) -> None:
    """connect(ws://...) gives a session whose channels work, end to end."""
    async with await connect(
        f"ws://127.0.0.1:{server.port}{PATH}", pair_key=PAIR_KEY, device_id=SERVER_ID
    ) as s:
        assert await s.request("echo", b"kettle.on") == b"kettle.on"
        big = bytes(range(256)) * 4096  # 1 MiB: many records, each its own message
        assert await s.request("echo", big) == big


async def test_the_upgrade_names_the_subprotocol_and_no_server_banner(server: Server) -> None:
    """101 with Sec-WebSocket-Protocol: pstp.v2 and no Server header."""
    raw = RawWs(server.port)
    try:
        response = await raw.open()
        assert response.status_code == 101
        assert response.headers["Sec-WebSocket-Protocol"] == SUBPROTOCOL
        assert "Server" not in response.headers
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("path", "subprotocols", "status"),
    [("/other", None, 404), (PATH, [], 400), (PATH, ["chat"], 400)],
    ids=["wrong-path", "no-subprotocol", "other-subprotocol"],
)
async def test_a_wrong_upgrade_is_refused_with_its_status(
    server: Server, path: str, subprotocols: list[str] | None, status: int
) -> None:
    """A wrong path is 404, a missing or foreign subprotocol 400; then the connection ends."""
    raw = RawWs(server.port, path, subprotocols)
    try:
        response = await raw.open()
        assert response.status_code == status
        assert "Server" not in response.headers
        await raw.frames_until_closed()
    finally:
        raw.close()


async def test_a_client_is_told_the_http_status_of_a_refusal(server: Server) -> None:
    """connect() to a wrong path fails at once with the status, not after a timeout."""
    with pytest.raises(ConnectionRefusedError, match=r"refused \(HTTP 404 Not Found\)"):
        await connect(f"ws://127.0.0.1:{server.port}/nope", pair_key=PAIR_KEY, timeout=TIMEOUT)


async def test_a_ws_client_to_a_plain_tcp_server_fails_cleanly() -> None:
    """A PSTP TCP server does not speak HTTP: it hangs up and the client says so."""
    srv = await serve(None, "127.0.0.1", 0, keyring=make_keyring(), own_id=SERVER_ID)
    try:
        with pytest.raises(ConnectionError):
            await connect(f"ws://127.0.0.1:{srv.port}{PATH}", pair_key=PAIR_KEY, timeout=TIMEOUT)
    finally:
        await srv.close()


async def test_a_plain_http_get_is_told_to_upgrade(server: Server) -> None:
    """A browser opening the URL gets 426 Upgrade Required, and the device goes on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 426 ")
    finally:
        writer.close()


async def _establish(raw: RawWs, conn: Connection) -> None:
    """Run the rest of the PSTP handshake as the initiator over ``raw``, a frame per message."""
    while conn.state is not ConnectionState.ESTABLISHED:
        for event in await raw.events():
            assert isinstance(event, Frame) and event.opcode is Opcode.BINARY
            conn.receive_message(event.data, 0.0)
    for frame in conn.messages_to_send():  # confirm_I
        raw.ws.send_binary(frame)
    await raw.flush()


async def _upgraded(raw: RawWs) -> tuple[Connection, bytes]:
    """Upgrade ``raw``; a fresh initiator and its HS_INIT frame, not sent yet."""
    assert (await raw.open()).status_code == 101
    conn = make_client()
    conn.start(0.0)
    (hs_init,) = conn.messages_to_send()
    return conn, hs_init


async def test_a_fragmented_message_is_one_frame(server: Server) -> None:
    """HS_INIT sent in three WebSocket fragments is reassembled into one frame."""
    raw = RawWs(server.port)
    try:
        conn, hs_init = await _upgraded(raw)
        raw.ws.send_binary(hs_init[:5], fin=False)
        raw.ws.send_continuation(hs_init[5:40], fin=False)
        raw.ws.send_continuation(hs_init[40:], fin=True)
        await raw.flush()
        await _establish(raw, conn)
    finally:
        raw.close()


@pytest.mark.parametrize(
    "send",
    ["text", "two-frames", "trailing-byte", "truncated"],
)
async def test_a_message_that_is_not_one_binary_frame_ends_the_connection(
    server: Server, send: str
) -> None:
    """Text, two frames in a message, a byte too many or too few: closed, device unhurt."""
    raw = RawWs(server.port)
    try:
        _, hs_init = await _upgraded(raw)
        if send == "text":
            raw.ws.send_text(b"hello")
        elif send == "two-frames":
            raw.ws.send_binary(hs_init + hs_init)
        elif send == "trailing-byte":
            raw.ws.send_binary(hs_init + b"\x00")
        else:
            raw.ws.send_binary(hs_init[:-1])
        await raw.flush()
        frames = await raw.frames_until_closed()
        assert all(f.opcode is not Opcode.BINARY for f in frames)  # nothing answered
        if send == "text":
            assert any(f.opcode is Opcode.CLOSE and f.data[:2] == b"\x03\xeb" for f in frames)
    finally:
        raw.close()
    # Others are still served.
    async with await connect(
        f"ws://127.0.0.1:{server.port}{PATH}", pair_key=PAIR_KEY, device_id=SERVER_ID
    ) as s:
        assert await s.request("echo", b"ok") == b"ok"


async def test_an_oversized_message_is_refused_from_its_header(server: Server) -> None:
    """A message longer than one frame may be is closed with 1009 before it is buffered."""
    raw = RawWs(server.port)
    try:
        assert (await raw.open()).status_code == 101
        size = max_message(Config()) + 1
        # Only the frame header and a little: the device must not wait for the rest.
        raw.ws.send_binary(b"\x01" * size)
        chunk = raw.ws.data_to_send()[0]
        assert raw.writer is not None
        raw.writer.write(chunk[:64])
        await raw.writer.drain()
        frames = await raw.frames_until_closed()
        assert any(f.opcode is Opcode.CLOSE and f.data[:2] == b"\x03\xf1" for f in frames)
    finally:
        raw.close()


async def test_a_stranger_who_never_upgrades_counts_and_is_timed_out() -> None:
    """A silent TCP connection is unauthenticated from accept on and dropped at the deadline."""
    srv = await serve(
        None,
        "127.0.0.1",
        0,
        keyring=make_keyring(),
        own_id=SERVER_ID,
        websocket=PATH,
        config=Config(handshake_timeout=0.5),
    )
    try:
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        for _ in range(int(TIMEOUT * 100)):
            if srv.unauthenticated == 1:
                break
            await asyncio.sleep(0.01)
        assert srv.unauthenticated == 1
        assert await asyncio.wait_for(loop.sock_recv(sock, 100), TIMEOUT) == b""
        assert srv.unauthenticated == 0
        sock.close()
    finally:
        await srv.close()


async def test_a_wrong_key_fails_the_handshake_over_ws(server: Server) -> None:
    """The device stays silent to a wrong key, as on TCP (§5.1)."""
    with pytest.raises(HandshakeFailed):
        await connect(
            f"ws://127.0.0.1:{server.port}{PATH}",
            pair_key=bytes(32),
            device_id=SERVER_ID,
            timeout=TIMEOUT,
        )


async def test_proxy_variables_are_not_used(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every proxy variable aimed at a dead port, ws:// still goes straight to the device."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with await connect(
        f"ws://127.0.0.1:{server.port}{PATH}", pair_key=PAIR_KEY, device_id=SERVER_ID
    ) as s:
        assert await s.request("echo", b"direct") == b"direct"


def test_max_message_is_one_frame_of_the_largest_kind() -> None:
    """The limit is the record bound plus its header, or the handshake bound (§3 rule 3)."""
    assert max_message(Config()) == FRAME_HEADER_LEN + 65536 + 26
    assert max_message(Config(max_record_size=1024)) == 4 + 1024 + 26
