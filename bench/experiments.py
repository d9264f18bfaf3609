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
