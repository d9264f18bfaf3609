"""asyncio driver: runs a sans-I/O :class:`~pstp.protocol.connection.Connection` over a transport.

The driver makes no protocol decisions.  Each callback runs the same loop:
feed the core, drain its events, flush its output, then dispatch the events
(wake readers, resolve the handshake future).  Reading is paused while the
application holds more than ``high_water`` unread bytes, so a slow reader
slows the sender instead of growing a buffer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from pstp.exceptions import ConnectionClosed, ErrorCode, PstpError
from pstp.protocol.connection import Connection, ConnectionState
from pstp.protocol.events import (
    ConnectionTerminated,
    DataReceived,
    HandshakeCompleted,
)

__all__ = ["Session", "SessionProtocol", "next_timestamp"]

_log = logging.getLogger("pstp.asyncio")

_last_timestamp = 0


def next_timestamp() -> int:
    """Wall-clock nanoseconds for HS_INIT, strictly increasing within this process."""
    global _last_timestamp
    _last_timestamp = max(time.time_ns(), _last_timestamp + 1)
    return _last_timestamp


class SessionProtocol(asyncio.Protocol):
    """An :class:`asyncio.Protocol` that drives one connection.

    Args:
        conn: the sans-I/O connection (not started).
        high_water: unread bytes above which reading from the socket pauses.
    """

    def __init__(self, conn: Connection, *, high_water: int = 1 << 20) -> None:
        self.conn = conn
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._inbox: collections.deque[bytes] = collections.deque()
        self._inbox_bytes = 0
        self._high_water = high_water
        self._reading_paused = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.conn.start(self._loop.time())
        self._pump()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data, self._loop.time())
        self._pump()

    def eof_received(self) -> bool:
        self.conn.receive_eof(self._loop.time())
        self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn.state is not ConnectionState.CLOSED:
            self.conn.receive_eof(self._loop.time())
        self._transport = None
        self._pump()
        if self._timer is not None:
            self._timer.cancel()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- the loop: feed (done by the caller), drain, flush, dispatch ----------

    def _pump(self) -> None:
        events = self.conn.events_received()
        self._flush()
        for event in events:
            if isinstance(event, DataReceived):
                self._inbox.append(event.data)
                self._inbox_bytes += len(event.data)
                self._readable.set()
            elif isinstance(event, HandshakeCompleted):
                if not self.handshake.done():
                    self.handshake.set_result(None)
            elif isinstance(event, ConnectionTerminated):
                self._on_terminated(event)
        if (
            self._transport is not None
            and not self._reading_paused
            and self._inbox_bytes > self._high_water
        ):
            self._reading_paused = True
            self._transport.pause_reading()
        self._schedule_timer()

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        exc = self.conn.close_exc or ConnectionClosed(event.code, event.reason)
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            self.handshake.exception()  # retrieved: a failed handshake is reported elsewhere
        if not self.closed.done():
            self.closed.set_result(None)
        self._readable.set()
        self._writable.set()
        if self._transport is not None:
            self._transport.close()

    def _schedule_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.conn.next_deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.conn.handle_timer(self._loop.time())
        self._pump()

    # -- used by Session -----------------------------------------------------

    async def read(self) -> bytes:
        """Wait for the next chunk of application data.

        Raises:
            ConnectionClosed: the connection ended (``code`` says how).
        """
        while not self._inbox:
            if self.conn.state is ConnectionState.CLOSED:
                raise self._closed_error()
            self._readable.clear()
            await self._readable.wait()
        data = self._inbox.popleft()
        self._inbox_bytes -= len(data)
        if (
            self._reading_paused
            and self._inbox_bytes <= self._high_water // 2
            and self._transport is not None
        ):
            self._reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        """Send application data, waiting while the socket buffer is full.

        Raises:
            ConnectionClosed: the connection ended.
        """
        await self._writable.wait()
        if self.conn.state is not ConnectionState.ESTABLISHED:
            raise self._closed_error()
        self.conn.send_data(data)
        self._pump()

    def close(self, code: ErrorCode | int = ErrorCode.NORMAL, reason: str = "") -> None:
        """Send CLOSE and close the transport."""
        self.conn.close(code, reason)
        self._pump()

    def _closed_error(self) -> PstpError:
        exc = self.conn.close_exc
        if isinstance(exc, ConnectionClosed) and exc.code == ErrorCode.NORMAL:
            return exc
        return ConnectionClosed(
            getattr(exc, "code", ErrorCode.INTERNAL_ERROR), str(exc) if exc else ""
        )


class Session:
    """An established PSTP/2 session over asyncio.

    Use it as an async context manager; iterate it to receive data.
    """

    def __init__(self, protocol: SessionProtocol) -> None:
        self._protocol = protocol

    @property
    def peer_id(self) -> str:
        """The peer's device id."""
        return self._protocol.conn.peer_id or ""

    @property
    def session_id(self) -> bytes:
        """The handshake hash, unique to this session."""
        return self._protocol.conn.session_id

    @property
    def connection(self) -> Connection:
        """The sans-I/O connection underneath (for inspection)."""
        return self._protocol.conn

    async def send(self, data: bytes) -> None:
        """Send bytes in one or more DATA records.

        Raises:
            ConnectionClosed: the session has ended.
        """
        await self._protocol.write(data)

    async def recv(self) -> bytes:
        """Receive the next chunk of bytes.

        Raises:
            ConnectionClosed: the session has ended.
        """
        return await self._protocol.read()

    async def close(self, code: ErrorCode | int = ErrorCode.NORMAL, reason: str = "") -> None:
        """Close with an authenticated CLOSE record and wait for the transport to end."""
        self._protocol.close(code, reason)
        await self._protocol.closed

    async def wait_closed(self) -> None:
        """Wait until the session has ended, for whatever reason."""
        await self._protocol.closed

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed as exc:
            if exc.code == ErrorCode.NORMAL:
                raise StopAsyncIteration from None
            raise

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
