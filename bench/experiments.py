"""What-if patches of the driver, applied only inside benchmark processes.

These are not fixes (src/ is not changed by the benchmarks); they show what a
proposed change is worth, so the numbers in docs/benchmarks.md can say so.
"""

from __future__ import annotations


def coalesce_writes() -> None:
    """Hand the transport one write per event-loop iteration instead of one per verb.

    Today every driver call (``open_channel``, ``write``, ``write_eof``,
    ``accept``, ``close``...) flushes its records to the socket at once, so one
    ``Session.request`` costs three ``send`` calls each way and the peer may
    wake up once per record.  Patched: while the session is established, the
    flush is deferred with ``loop.call_soon`` so that every record queued in
    the same iteration leaves in one ``send``.  The handshake and CLOSE still
    flush at once.
    """
    from pstp.asyncio.connection import SessionProtocol
    from pstp.protocol.connection import ConnectionState

    real_flush = SessionProtocol._flush
    pending: set[int] = set()

    def _flush(self: SessionProtocol) -> None:
        if self.conn.state is not ConnectionState.ESTABLISHED:
            real_flush(self)
            return
        if id(self) in pending:
            return
        pending.add(id(self))

        def run() -> None:
            pending.discard(id(self))
            real_flush(self)

        self.loop.call_soon(run)

    SessionProtocol._flush = _flush  # type: ignore[method-assign]


def batch_websocket_writes() -> None:
    """Send a session's WebSocket messages of one event-loop iteration in one TCP write.

    Today :class:`pstp.asyncio.websocket.WebSocketTransport` hands every message
    (one PSTP record, up to 64 KiB) to the TCP transport as soon as the session
    writes it: one ``send`` per record, and one short-lived 64 KiB buffer after
    another, which glibc's malloc returns to the kernel (heap trimming) and faults
    in again each time.  Patched: messages are framed at once but the frames are
    joined and written once per loop iteration (``loop.call_soon``), as the TCP
    path joins the records of one flush.  Close frames and EOF are unchanged.
    """
    from websockets.protocol import OPEN

    from pstp.asyncio import websocket

    transport = websocket.WebSocketTransport
    real_flush = transport._flush
    pending: set[int] = set()

    def write(self: websocket.WebSocketTransport, data: bytes | bytearray | memoryview) -> None:
        ws = self._ws
        if self._closing or ws.state is not OPEN:
            return
        ws.send_binary(data)
        if id(self) not in pending:
            pending.add(id(self))
            self._session.loop.call_soon(joined, self)

    def joined(self: websocket.WebSocketTransport) -> None:
        pending.discard(id(self))
        tcp = self._tcp
        chunks = self._ws.data_to_send()
        frames = [c for c in chunks if c]
        eof = len(frames) < len(chunks)  # websockets asks for the end of the TCP stream
        if tcp is None or tcp.is_closing():
            return
        if frames:
            tcp.write(frames[0] if len(frames) == 1 else b"".join(frames))
        if eof and tcp.can_write_eof():
            tcp.write_eof()

    def flush(self: websocket.WebSocketTransport) -> None:
        if id(self) in pending:  # keep the order: queued messages go first
            pending.discard(id(self))
            joined(self)
        real_flush(self)

    transport.write = write  # type: ignore[method-assign]
    transport._flush = flush  # type: ignore[method-assign]


def buffered_paho_reads() -> None:
    """Let paho read its broker connection 64 KiB at a time instead of a byte at a time.

    paho-mqtt 2 reads each MQTT packet with one ``recv(1)`` for the packet type,
    one ``recv(1)`` per byte of the remaining length (1 to 4), then ``recv`` of the
    rest: three to six system calls per packet, a 4-byte PUBACK included.
    Patched: ``Client._sock_recv`` serves those reads from a buffer that one
    ``recv(65536)`` fills, and :class:`pstp.asyncio.mqtt.BrokerLink` keeps calling
    ``loop_read`` while the buffer holds bytes (the socket no longer signals them).
    For TLS nothing changes (``SSLSocket.pending`` already covers it).
    """
    from paho.mqtt.client import Client

    from pstp.asyncio import mqtt

    buffers: dict[int, bytearray] = {}
    real_recv = Client._sock_recv

    def _sock_recv(self: Client, bufsize: int) -> bytes:
        buf = buffers.setdefault(id(self), bytearray())
        if not buf:
            data = real_recv(self, 65536)  # BlockingIOError when there is nothing
            if not data:
                return data  # the broker closed the connection
            buf += data
        out = bytes(buf[:bufsize])
        del buf[:bufsize]
        return out

    real_readable = mqtt.BrokerLink._readable

    def _readable(self: mqtt.BrokerLink) -> None:
        real_readable(self)
        client = self._client
        while buffers.get(id(client)) and self._sock is not None:
            client.loop_read()
            self._flush()

    Client._sock_recv = _sock_recv  # type: ignore[method-assign]
    mqtt.BrokerLink._readable = _readable  # type: ignore[method-assign]


def quickack_after_reads() -> None:
    """Re-arm ``TCP_QUICKACK`` on paho's broker socket after every read (Linux).

    A broker that leaves Nagle's algorithm on (mosquitto's default,
    ``set_tcp_nodelay false``) holds a PUBLISH to a client while its previous small
    packet to that client (a PUBACK) is unacknowledged, and the client's kernel
    delays that acknowledgement by 40 ms or more: every QoS 1 round trip then
    costs over 40 ms whatever the client does with TCP_NODELAY.  Patched:
    ``Client.loop_read`` (which :class:`pstp.asyncio.mqtt.BrokerLink` calls when the
    socket is readable) sets ``TCP_QUICKACK`` again afterwards (the kernel clears
    it), so the client acknowledges at once and the broker's Nagle wait ends.
    """
    import contextlib
    import socket

    from paho.mqtt.client import Client
    from paho.mqtt.enums import MQTTErrorCode

    real_loop_read = Client.loop_read

    def loop_read(self: Client, max_packets: int = 1) -> MQTTErrorCode:
        rc = real_loop_read(self, max_packets)
        sock = self._sock
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # closed meanwhile
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return rc

    Client.loop_read = loop_read  # type: ignore[method-assign]


def coalesce_paho_writes() -> None:
    """Send what paho queues in one event-loop iteration in one ``send``.

    paho-mqtt writes every MQTT packet with its own ``send``: a PUBLISH, and the
    PUBACK for each PUBLISH received, one system call each.  Over loopback a
    ``send`` also runs the receiving side's TCP input and wakes the broker, so on
    this VM the sends are a quarter to a third of a PSTP process's CPU through a
    broker.  Patched (for connections made on a running event loop, i.e. those of
    :class:`pstp.asyncio.mqtt.BrokerLink`): ``Client._sock_send`` appends to a
    per-connection buffer and reports the bytes as sent; one ``loop.call_soon``
    per iteration sends the buffer, waiting for writability if the socket is full.
    ``BrokerLink.close`` sends what is left first.  Pacing by the broker's PUBACKs
    (HIGH_WATER) is unchanged.
    """
    import asyncio

    from paho.mqtt.client import Client

    from pstp.asyncio import mqtt

    buffers: dict[int, bytearray] = {}
    scheduled: set[int] = set()
    blocked: set[int] = set()
    real_send = Client._sock_send

    def flush(client: Client) -> None:
        key = id(client)
        scheduled.discard(key)
        buf = buffers.get(key)
        sock = client._sock
        if not buf or sock is None:
            return
        try:
            sent = sock.send(buf)
        except BlockingIOError:
            sent = 0
        except OSError:
            buf.clear()
            return
        del buf[:sent]
        loop = asyncio.get_running_loop()
        if buf and key not in blocked:
            blocked.add(key)
            loop.add_writer(sock, flush, client)
        elif not buf and key in blocked:
            blocked.discard(key)
            loop.remove_writer(sock)

    def _sock_send(self: Client, buf: bytes | bytearray) -> int:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # paho's connect() in an executor thread: CONNECT
            return real_send(self, buf)
        key = id(self)
        buffers.setdefault(key, bytearray()).extend(buf)
        if key not in scheduled and key not in blocked:
            scheduled.add(key)
            loop.call_soon(flush, self)
        return len(buf)

    real_close = mqtt.BrokerLink.close

    def close(self: mqtt.BrokerLink) -> None:
        if not self._busy:
            self._client.loop_write()  # DISCONNECT (or anything queued) into the buffer
            flush(self._client)
        real_close(self)

    Client._sock_send = _sock_send  # type: ignore[method-assign]
    mqtt.BrokerLink.close = close  # type: ignore[method-assign]


def buffered_splice_reads() -> None:
    """Read the forwarded TCP side into one reused buffer instead of a StreamReader.

    Today :func:`pstp.asyncio.splice.splice` reads the TCP connection with
    ``StreamReader.read(CHUNK)`` (256 KiB): each chunk arrives as a fresh ``bytes``
    from the event loop, is appended to the reader's ``bytearray`` (a copy), and
    read out as another fresh ``bytes`` (a copy) while the rest of the buffer moves
    down.  Chunks of 256 KiB are above glibc's 128 KiB ``mmap`` threshold, so those
    buffers are often new memory that page-faults in.  Patched: ``splice`` is handed,
    instead of the StreamReader, a reader whose transport now has an
    :class:`asyncio.BufferedProtocol`: the loop reads (``recv_into``) into a 256 KiB buffer made
    once per connection, and ``read`` returns a memoryview of it, which the channel
    seals from (``Channel.write``); the next ``read`` reuses the space.  Writing-side
    pause/resume and the connection's end still reach the StreamReaderProtocol, so
    ``StreamWriter.drain`` and ``wait_closed`` behave as before.  The rest of
    ``splice`` (the channel-to-TCP direction, ends, errors) is the real one.
    """
    import asyncio
    from typing import Any, cast

    from pstp.asyncio import splice as module
    from pstp.client import forward as client_forward
    from pstp.daemon import forward as daemon_forward

    class Reads(asyncio.BufferedProtocol):
        def __init__(self, inner: asyncio.BaseProtocol, transport: asyncio.Transport) -> None:
            self.inner = inner
            self.transport = transport
            self.buf = bytearray(module.CHUNK)
            self.view = memoryview(self.buf)
            self.filled = 0  # bytes in buf
            self.lent = 0  # of which the last read() returned (in use until the next)
            self.paused = False
            self.eof = False
            self.error: BaseException | None = None
            self.wake = asyncio.Event()
            self.held = b""

        def get_buffer(self, sizehint: int) -> memoryview:
            return self.view[self.filled :]

        def buffer_updated(self, nbytes: int) -> None:
            self.filled += nbytes
            if self.filled > len(self.buf) - (16 << 10) and not self.paused:
                self.paused = True
                self.transport.pause_reading()
            self.wake.set()

        def eof_received(self) -> bool:
            self.eof = True
            self.wake.set()
            return True  # keep the writing side open (half-close)

        def connection_lost(self, exc: Exception | None) -> None:
            self.error = exc
            self.eof = True
            self.wake.set()
            self.inner.connection_lost(exc)

        def pause_writing(self) -> None:
            self.inner.pause_writing()

        def resume_writing(self) -> None:
            self.inner.resume_writing()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            pass

        async def read(self, n: int = -1) -> bytes | memoryview:
            if self.held:
                held, self.held = self.held, b""
                return held
            if self.lent:  # the caller is done with it: reuse the space
                rest = self.filled - self.lent
                if rest:
                    self.buf[:rest] = self.buf[self.lent : self.filled]
                self.filled, self.lent = rest, 0
                if self.paused and not self.transport.is_closing():
                    self.paused = False
                    self.transport.resume_reading()
            while not self.filled and not self.eof:
                self.wake.clear()
                await self.wake.wait()
            if self.filled:
                self.lent = self.filled
                return self.view[: self.filled]
            if self.error is not None:
                raise self.error
            return b""

    real = module.splice

    async def splice(
        ch: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *args: Any
    ) -> Any:
        transport = cast(asyncio.Transport, writer.transport)
        reads = Reads(transport.get_protocol(), transport)
        transport.pause_reading()
        transport.set_protocol(reads)
        reads.held = bytes(reader._buffer)  # type: ignore[attr-defined]  # already read
        reader._buffer.clear()  # type: ignore[attr-defined]
        reads.eof = reader._eof  # type: ignore[attr-defined]
        if not reads.eof:
            transport.resume_reading()
        return await real(ch, cast(asyncio.StreamReader, reads), writer, *args)

    for where in (module, client_forward, daemon_forward):
        setattr(where, "splice", splice)  # noqa: B010
