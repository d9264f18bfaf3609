"""asyncio driver: runs a sans-I/O :class:`~pstp.protocol.connection.Connection` over a transport.

The driver makes no protocol decisions.  Each callback runs the same loop:
feed the core, drain its events, flush its output, then dispatch the events
(wake readers and writers, resolve futures, start channel handlers).

Nothing is buffered without bound: channel data is limited by the window the
core grants (a channel's reader acknowledges what it consumed, which is what
lets the peer send more), and session-level DATA pauses reading from the
socket when the application holds more than ``high_water`` unread bytes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

from pstp.clock import next_timestamp
from pstp.exceptions import (
    ChannelError,
    ConnectionClosed,
    ErrorCode,
    ChannelFailure,
    PermissionDenied,
    PstpError,
)
from pstp.protocol.connection import Connection, ConnectionState
from pstp.protocol.events import (
    ChannelAccepted,
    ChannelClosed,
    ChannelDataReceived,
    ChannelEofReceived,
    ChannelOpenRequested,
    ChannelRejected,
    ChannelWindowUpdated,
    ConnectionTerminated,
    DataReceived,
    Event,
    HandshakeCompleted,
    HeartbeatAcknowledged,
)
from pstp.wire.messages import ChannelCode, Params

__all__ = [
    "Authorizer",
    "Channel",
    "ChannelHandler",
    "Session",
    "SessionProtocol",
    "next_timestamp",
]

_log = logging.getLogger("pstp.asyncio")

#: Runs for each channel of its kind that the peer opens; an int result is the exit status.
ChannelHandler = Callable[["Channel"], Awaitable[int | None]]
#: Decides, before a channel is accepted, whether the peer may open it: returns
#: ``None`` to allow, or the reason for refusing (sent to the peer with REFUSED).
Authorizer = Callable[[Connection, str, Params], str | None]


class Channel:
    """One channel of a session: a flow-controlled, half-closable byte stream.

    Iterate it (``async for chunk in channel``) or call :meth:`read`; write
    with :meth:`write`; :meth:`write_eof` half-closes; :meth:`close` ends it
    with an optional exit status.  Leaving ``async with`` closes it.
    """

    def __init__(self, proto: SessionProtocol, channel_id: int, kind: str, params: Params) -> None:
        self._proto = proto
        self.id = channel_id
        self.kind = kind
        self.params = params
        self._inbox: collections.deque[bytes] = collections.deque()
        self._eof = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self.accepted: asyncio.Future[None] = proto.loop.create_future()
        self.closed: asyncio.Future[int | None] = proto.loop.create_future()
        self.close_code: int | None = None
        self.close_reason = ""

    def __repr__(self) -> str:
        return f"<Channel {self.id} {self.kind!r}>"

    @property
    def connection(self) -> Connection:
        """The session's sans-I/O connection (peer id, how it was keyed, exporter)."""
        return self._proto.conn

    @property
    def exit_status(self) -> int | None:
        """The exit status the channel was closed with (``None`` if none or still open)."""
        return self.closed.result() if self.closed.done() and not self.closed.exception() else None

    # -- reading -------------------------------------------------------------

    async def read(self, max_bytes: int = -1) -> bytes:
        """Read up to ``max_bytes`` (default: whatever has arrived); ``b""`` at EOF.

        Raises:
            ChannelError: the channel was rejected or closed with an error code.
            ConnectionClosed: the session ended.
        """
        while not self._inbox:
            if self._eof or self.closed.done():
                self._raise_if_failed()
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._inbox.popleft()
        if 0 <= max_bytes < len(data):
            data, rest = data[:max_bytes], data[max_bytes:]
            self._inbox.appendleft(rest)
        self._proto.acknowledge(self.id, len(data))
        return data

    async def read_all(self) -> bytes:
        """Read until EOF.

        Raises:
            ChannelError: the channel was rejected or closed with an error code.
            ConnectionClosed: the session ended.
        """
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data

    # -- writing -------------------------------------------------------------

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``, waiting for window and socket buffer as needed.

        Raises:
            ChannelError: the channel was closed or rejected meanwhile.
            ConnectionClosed: the session ended.
        """
        view = memoryview(data)
        if not view:
            return
        conn = self._proto.conn
        while True:
            await self._proto.writable()
            window = conn.channel_send_window(self.id)
            if window > 0:
                n = min(window, len(view))
                self._proto.call(conn.send_channel_data, self.id, view[:n])
                view = view[n:]
                if not view:
                    return
                continue
            if self.closed.done():
                self._raise_if_failed()
                raise ChannelError(self.id, ChannelCode.CANCELLED, "channel closed")
            self._writable.clear()
            await self._writable.wait()

    async def write_eof(self) -> None:
        """Half-close: tell the peer we send no more data."""
        await self._proto.writable()
        self._proto.call(self._proto.conn.send_channel_eof, self.id)

    async def close(
        self, exit_status: int | None = None, code: int = ChannelCode.OK, reason: str = ""
    ) -> None:
        """Close the channel (does nothing if it is already closed)."""
        if not self.closed.done():
            self._proto.channels.pop(self.id, None)
            self._proto.call(self._proto.conn.close_channel, self.id, code, exit_status, reason)
            self._finish(code, exit_status, reason)

    async def wait_closed(self) -> int | None:
        """Wait for the channel to end and return its exit status.

        Raises:
            ChannelError: it ended with an error code or was rejected.
            ConnectionClosed: the session ended.
        """
        return await asyncio.shield(self.closed)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- driven by SessionProtocol ----------------------------------------------

    def _raise_if_failed(self) -> None:
        if self.closed.done() and self.closed.exception() is not None:
            raise self.closed.exception()  # type: ignore[misc]

    def _finish(self, code: int, exit_status: int | None, reason: str) -> None:
        if self.closed.done():
            return
        self.close_code, self.close_reason = code, reason
        if code == ChannelCode.OK:
            self.closed.set_result(exit_status)
        else:
            self.closed.set_exception(ChannelError(self.id, code, reason))
            self.closed.exception()  # mark retrieved; callers see it via read/wait_closed
        if not self.accepted.done():
            self.accepted.set_exception(ChannelError(self.id, code, reason))
            self.accepted.exception()
        self._readable.set()
        self._writable.set()

    def _fail(self, exc: BaseException) -> None:
        if not self.closed.done():
            self.closed.set_exception(exc)
            self.closed.exception()
        if not self.accepted.done():
            self.accepted.set_exception(exc)
            self.accepted.exception()
        self._readable.set()
        self._writable.set()


class SessionProtocol(asyncio.Protocol):
    """An :class:`asyncio.Protocol` that drives one connection.

    Args:
        conn: the sans-I/O connection (not started).
        handlers: channel kinds this side serves, and what runs for each.
        high_water: unread session DATA bytes above which socket reading pauses.
        authorize: asked before any channel the peer opens is accepted (policy).
        admit: asked once, the moment the handshake completes and before any
            channel opened in the same flight is looked at; a returned reason
            closes the session with REFUSED (session policy: caps, windows).
    """

    def __init__(
        self,
        conn: Connection,
        *,
        handlers: Mapping[str, ChannelHandler] | None = None,
        high_water: int = 1 << 20,
        authorize: Authorizer | None = None,
        admit: Callable[[Connection], str | None] | None = None,
    ) -> None:
        self.conn = conn
        self.authorize = authorize
        self.admit = admit
        #: "host:port" of the other end, once connected (for logs and audit).
        self.peer_address = "?"
        self.loop = asyncio.get_running_loop()
        self.handlers: dict[str, ChannelHandler] = dict(handlers or {})
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.handshake: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.channels: dict[int, Channel] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inbox: collections.deque[bytes] = collections.deque()
        self._inbox_bytes = 0
        self._high_water = high_water
        self._reading_paused = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.last_rtt: float | None = None

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer_address = f"{peer[0]}:{peer[1]}"
        self.conn.start(self.loop.time())
        self._pump()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data, self.loop.time())
        self._pump()

    def eof_received(self) -> bool:
        self.conn.receive_eof(self.loop.time())
        self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn.state is not ConnectionState.CLOSED:
            self.conn.receive_eof(self.loop.time())
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

    def call(self, verb: Callable[..., object], *args: object) -> None:
        """Run a core verb, then flush and dispatch (the driver loop for local actions)."""
        verb(*args)
        self._pump()

    def acknowledge(self, channel_id: int, size: int) -> None:
        """The application consumed ``size`` bytes of a channel."""
        self.call(self.conn.acknowledge_channel_data, channel_id, size)

    def _pump(self) -> None:
        events = self.conn.events_received()
        self._flush()
        for event in events:
            self._dispatch(event)
        # Dispatching may have acted on the core (accept or reject a channel).
        self._flush()
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

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, ChannelDataReceived):
            ch = self.channels.get(event.channel_id)
            if ch is not None:
                ch._inbox.append(event.data)
                ch._readable.set()
        elif isinstance(event, ChannelWindowUpdated):
            ch = self.channels.get(event.channel_id)
            if ch is not None:
                ch._writable.set()
        elif isinstance(event, ChannelEofReceived):
            ch = self.channels.get(event.channel_id)
            if ch is not None:
                ch._eof = True
                ch._readable.set()
        elif isinstance(event, ChannelAccepted):
            ch = self.channels.get(event.channel_id)
            if ch is not None and not ch.accepted.done():
                ch.accepted.set_result(None)
        elif isinstance(event, (ChannelRejected, ChannelClosed)):
            ch = self.channels.pop(event.channel_id, None)
            if ch is not None:
                status = event.exit_status if isinstance(event, ChannelClosed) else None
                ch._finish(event.code, status, event.reason)
        elif isinstance(event, ChannelOpenRequested):
            self._on_open_requested(event)
        elif isinstance(event, DataReceived):
            self._inbox.append(event.data)
            self._inbox_bytes += len(event.data)
            self._readable.set()
        elif isinstance(event, HeartbeatAcknowledged):
            self.last_rtt = event.rtt
        elif isinstance(event, HandshakeCompleted):
            if self.admit is not None:
                refusal = self.admit(self.conn)
                if refusal is not None:
                    self.conn.close(ErrorCode.REFUSED, refusal[:200])
            if not self.handshake.done():
                self.handshake.set_result(None)
        elif isinstance(event, ConnectionTerminated):
            self._on_terminated(event)

    def _on_open_requested(self, event: ChannelOpenRequested) -> None:
        if self.conn.state is not ConnectionState.ESTABLISHED:
            return  # the session was refused or ended in this same batch of events
        handler = self.handlers.get(event.kind)
        if handler is None:
            self.conn.reject_channel(
                event.channel_id, ChannelCode.UNKNOWN_KIND, f"no handler for {event.kind!r}"
            )
            return
        if self.authorize is not None:
            refusal = self.authorize(self.conn, event.kind, event.params)
            if refusal is not None:
                self.conn.reject_channel(event.channel_id, ChannelCode.REFUSED, refusal)
                return
        ch = Channel(self, event.channel_id, event.kind, event.params)
        self.channels[ch.id] = ch
        self.conn.accept_channel(ch.id)
        ch.accepted.set_result(None)
        task = self.loop.create_task(self._run_handler(handler, ch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, handler: ChannelHandler, ch: Channel) -> None:
        try:
            status = await handler(ch)
        except asyncio.CancelledError:
            await ch.close(code=ChannelCode.GOING_AWAY, reason="shutting down")
            raise
        except ChannelFailure as exc:
            await ch.close(code=exc.code, reason=exc.reason)
        except PermissionDenied as exc:
            # A refusal's text is written for the peer (a policy reason), unlike
            # other errors, whose text stays local (§9).
            await ch.close(code=ChannelCode.REFUSED, reason=str(exc)[:200])
        except PstpError as exc:
            _log.info("channel %s (%s) ended: %s", ch.id, ch.kind, exc)
            await ch.close(code=ChannelCode.APPLICATION_ERROR)
        except Exception:
            _log.exception("handler for channel kind %r failed", ch.kind)
            await ch.close(code=ChannelCode.APPLICATION_ERROR, reason="handler failed")
        else:
            await ch.close(exit_status=status)

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        exc = self.conn.close_exc or ConnectionClosed(event.code, event.reason)
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            self.handshake.exception()  # retrieved: a failed handshake is reported elsewhere
        closed = self._closed_error()
        for ch in list(self.channels.values()):
            ch._fail(closed)
        self.channels.clear()
        for task in list(self._tasks):
            task.cancel()
        if not self.closed.done():
            self.closed.set_result(None)
        self._readable.set()
        self._writable.set()
        if self._transport is not None:
            self._transport.close()

    def _schedule_timer(self) -> None:
        # While reading is paused (the application is not draining session data),
        # the peer's records sit unread: counting that silence as a dead peer
        # would be wrong, so timers wait until reading resumes.
        deadline = None if self._reading_paused else self.conn.next_deadline()
        timer = self._timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        if timer is not None:
            # The heartbeat deadline moves later with every record received; a
            # timer that fires early costs one look (handle_timer does nothing
            # before the deadline, and _on_timer re-arms), far less than
            # cancelling and re-arming on every record.
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.conn.handle_timer(self.loop.time())
        self._pump()

    # -- used by Session and Channel ----------------------------------------------

    async def writable(self) -> None:
        """Wait while the socket's write buffer is full.

        Raises:
            ConnectionClosed: the session has ended.
        """
        await self._writable.wait()
        if self.conn.state is not ConnectionState.ESTABLISHED:
            raise self._closed_error()

    async def read(self) -> bytes:
        """Wait for the next chunk of session-level data.

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
            self._schedule_timer()
        return data

    async def write(self, data: bytes) -> None:
        """Send session-level data, waiting while the socket buffer is full.

        Raises:
            ConnectionClosed: the connection ended.
        """
        await self.writable()
        self.call(self.conn.send_data, data)

    def open_channel(self, kind: str, params: Params | None) -> Channel:
        """Open a channel now; the caller may write before it is accepted."""
        cid = self.conn.open_channel(kind, params)
        ch = Channel(self, cid, kind, params or {})
        self.channels[cid] = ch
        self._pump()
        return ch

    def close(self, code: ErrorCode | int = ErrorCode.NORMAL, reason: str = "") -> None:
        """Send CLOSE and close the transport."""
        self.conn.close(code, reason)
        self._pump()

    def _closed_error(self) -> ConnectionClosed:
        exc = self.conn.close_exc
        if isinstance(exc, ConnectionClosed):
            return exc
        code = self.conn.close_code
        return ConnectionClosed(
            code if code is not None else ErrorCode.INTERNAL_ERROR, str(exc) if exc else ""
        )


class Session:
    """An established PSTP/2 session over asyncio.

    Use it as an async context manager.  Channels carry the real work
    (:meth:`open_channel`, :meth:`request`); :meth:`send` and :meth:`recv`
    carry a plain session-level byte stream.
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

    @property
    def last_rtt(self) -> float | None:
        """Round-trip time of the last answered heartbeat, in seconds."""
        return self._protocol.last_rtt

    @property
    def is_closed(self) -> bool:
        """True once the session has ended."""
        return self._protocol.closed.done()

    def set_handler(self, kind: str, handler: ChannelHandler | None) -> None:
        """Serve (or stop serving) channels of ``kind`` that the peer opens."""
        if handler is None:
            self._protocol.handlers.pop(kind, None)
        else:
            self._protocol.handlers[kind] = handler

    async def open_channel(
        self, kind: str, params: Params | None = None, *, wait_accepted: bool = True
    ) -> Channel:
        """Open a channel of ``kind``.

        Args:
            kind: the channel kind the peer serves.
            params: parameters for the kind.
            wait_accepted: wait for the peer's ACCEPT (default); otherwise return
                at once, and writes of up to 64 KiB may go out before it.

        Raises:
            ChannelError: the peer rejected the channel.
            ConnectionClosed: the session has ended.
        """
        await self._protocol.writable()
        ch = self._protocol.open_channel(kind, params)
        if wait_accepted:
            try:
                await asyncio.shield(ch.accepted)
            except asyncio.CancelledError:
                await ch.close(code=ChannelCode.CANCELLED)
                raise
        return ch

    async def request(self, kind: str, data: bytes = b"", params: Params | None = None) -> bytes:
        """Run one request/response exchange on a fresh channel.

        The request goes out with the OPEN (no round trip is spent waiting for
        ACCEPT), then the reply is read to EOF.  Cancelling it closes the
        channel with CANCELLED and leaves the session usable.

        Raises:
            ChannelError: rejected, or the peer closed the channel with an error.
            ConnectionClosed: the session has ended.
        """
        ch = await self.open_channel(kind, params, wait_accepted=False)
        try:
            if data:
                await ch.write(data)
            await ch.write_eof()
            reply = await ch.read_all()
            await ch.wait_closed()
            return reply
        except BaseException:
            with contextlib.suppress(PstpError):
                await ch.close(code=ChannelCode.CANCELLED)
            raise

    async def send(self, data: bytes) -> None:
        """Send bytes on the session-level stream.

        Raises:
            ConnectionClosed: the session has ended.
        """
        await self._protocol.write(data)

    async def recv(self) -> bytes:
        """Receive the next chunk of the session-level stream.

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
