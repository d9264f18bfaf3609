"""asyncio driver: runs the sans-I/O session core over an asyncio transport.

The driver makes no protocol decisions: :class:`~pstp.protocol.session.SessionCore`
keeps every channel's state and decides what the peer may open.  Each callback
runs the same loop: feed the core, apply its events, flush its output, then
wake readers and writers and start the handlers it hands back.

The transport seam: any :class:`asyncio.Transport` that delivers an ordered
byte stream (TCP) plugs in as it is; a transport of discrete messages
(WebSocket, :mod:`pstp.asyncio.websocket`) calls
:meth:`SessionProtocol.message_received` and takes one record per ``write``
(``messages=True``, docs/protocol.md §3 rule 2a, §19.2).

Nothing is buffered without bound: channel data is limited by the window the
core grants (a reader acknowledges what it consumed), and session-level DATA
pauses reading from the transport above ``high_water`` unread bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

from pstp.clock import next_timestamp
from pstp.exceptions import ChannelError, ConnectionClosed, ErrorCode, PstpError, TooMuchData
from pstp.protocol.connection import Connection, ConnectionState
from pstp.protocol.session import (
    READ_ALL_LIMIT,
    Admitter,
    Authorizer,
    ChannelCore,
    ChannelFacts,
    SessionCore,
    SessionFacts,
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
# Bytes sealed per call into the core, so other channels interleave on one session.
_SEND_CHUNK = 256 * 1024


class Channel(ChannelFacts):
    """One channel of a session: a flow-controlled, half-closable byte stream.

    Iterate it (``async for chunk in channel``) or call :meth:`read`; write
    with :meth:`write`; :meth:`write_eof` half-closes; :meth:`close` ends it
    with an optional exit status.  Leaving ``async with`` closes it.

    Attributes:
        accepted: resolves when the channel is accepted (fails if rejected).
        closed: resolves with the exit status when it ends (fails on an error).
    """

    def __init__(self, proto: SessionProtocol, core: ChannelCore) -> None:
        self._proto = proto
        self._core = core
        #: What the channel's handler wants its audit row to say beyond its exit
        #: status (a forward's bytes each way, how it ended).
        self.audit: dict[str, object] = {}
        self._changed = asyncio.Event()
        self.accepted: asyncio.Future[None] = proto.loop.create_future()
        self.closed: asyncio.Future[int | None] = proto.loop.create_future()
        core.wake = self._wake
        self._wake()

    @property
    def connection(self) -> Connection:
        """The session's sans-I/O connection (peer id, how it was keyed, exporter)."""
        return self._proto.conn

    @property
    def session(self) -> Session:
        """The session the channel belongs to (to open more channels on it)."""
        return Session(self._proto)

    @property
    def exit_status(self) -> int | None:
        """The exit status the channel was closed with (``None`` if none or still open)."""
        core = self._core
        return core.exit_status if core.done and core.error is None else None

    async def _wait(self, ready: Callable[[], bool]) -> None:
        while not ready():
            self._changed.clear()
            await self._changed.wait()

    # -- reading -------------------------------------------------------------

    async def read(self, max_bytes: int = -1) -> bytes:
        """Read up to ``max_bytes`` (default: whatever has arrived); ``b""`` at EOF.

        Raises:
            ChannelError: the channel was rejected or closed with an error code.
            ConnectionClosed: the session ended.
        """
        await self._wait(lambda: self._core.readable)
        data = self._proto.core.read(self._core, max_bytes)
        assert data is not None  # readable
        if data:
            self._proto.pump()  # the acknowledgement may grant window
        return data

    async def read_all(self, limit: int | None = READ_ALL_LIMIT) -> bytes:
        """Read until EOF, at most ``limit`` bytes.

        Args:
            limit: the most bytes to accept (16 MiB unless told); more is an error.
                ``None`` removes the bound: only for a peer you trust.

        Raises:
            ChannelError: the channel was rejected or closed with an error code.
            ConnectionClosed: the session ended.
            TooMuchData: more than ``limit`` bytes arrived (a ValueError; the
                channel stays open, and a handler that lets it go closes the channel
                with RESOURCE_LIMIT).
        """
        parts = []
        size = 0
        while chunk := await self.read():
            size += len(chunk)
            if limit is not None and size > limit:
                raise TooMuchData(self.id, limit)
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
        """Send all of ``data``, waiting for window and transport buffer as needed.

        Raises:
            ChannelError: the channel was closed or rejected meanwhile.
            ConnectionClosed: the session ended.
        """
        view = memoryview(data).cast("B")
        proto, core = self._proto, self._core
        while view:
            await proto.writable()
            await self._wait(lambda: proto.core.writable(core))
            n = proto.core.write(core, view, _SEND_CHUNK)
            proto.pump()
            view = view[n:]

    async def write_eof(self) -> None:
        """Half-close: tell the peer we send no more data.

        Does nothing if the peer already closed the channel normally.

        Raises:
            ChannelError: the channel was rejected or closed with an error code.
            ConnectionClosed: the session ended.
            InvalidState: EOF was already sent.
        """
        await self._proto.writable()
        self._proto.core.write_eof(self._core)
        self._proto.pump()

    async def close(
        self, exit_status: int | None = None, code: int = ChannelCode.OK, reason: str = ""
    ) -> None:
        """Close the channel (does nothing if it is already closed)."""
        self._proto.core.close_channel(self._core, exit_status, code, reason)
        self._proto.pump()

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

    # -- woken by the core -----------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()
        core = self._core
        if core.accepted and not self.accepted.done():
            self.accepted.set_result(None)
        if core.done and not self.closed.done():
            if core.error is None:
                self.closed.set_result(core.exit_status)
            else:
                _set_error(self.closed, core.error)
            if not self.accepted.done():
                _set_error(self.accepted, core.error or ChannelError(self.id, ChannelCode.OK))


def _set_error(
    future: asyncio.Future[object] | asyncio.Future[None] | asyncio.Future[int | None],
    exc: BaseException,
) -> None:
    future.set_exception(exc)
    future.exception()  # retrieved: callers see it through read, wait_closed, accepted


#: Seconds a closing transport may spend flushing to a peer that does not read.
_LINGER = 2.0


def _abort_if_unsent(transport: asyncio.Transport) -> None:
    if transport.get_write_buffer_size():
        transport.abort()


class SessionProtocol(asyncio.Protocol):
    """An :class:`asyncio.Protocol` that drives one session core over a transport.

    Args:
        conn: the sans-I/O connection (not started).
        handlers: channel kinds this side serves, and what runs for each.
        high_water: unread session DATA bytes above which transport reading pauses.
        authorize: asked before any channel the peer opens is accepted (policy);
            what it returns travels with the channel as :attr:`Channel.verdict`.
        admit: asked once, the moment the handshake completes and before any
            channel opened in the same flight is looked at; a returned reason
            closes the session with REFUSED (session policy: caps, windows).
        messages: the transport carries discrete messages (one record each,
            :meth:`message_received`) instead of a byte stream.
        session_data: this side reads session-level DATA (false: DATA from the
            peer ends the session with REFUSED, see :class:`SessionCore`).
    """

    def __init__(
        self,
        conn: Connection,
        *,
        handlers: Mapping[str, ChannelHandler] | None = None,
        high_water: int = 1 << 20,
        authorize: Authorizer | None = None,
        admit: Admitter | None = None,
        messages: bool = False,
        session_data: bool = True,
    ) -> None:
        self.conn = conn
        self.core: SessionCore[ChannelHandler] = SessionCore(
            conn,
            handlers=handlers,
            authorize=authorize,
            admit=admit,
            high_water=high_water,
            session_data=session_data,
        )
        self.core.wake = self._wake
        self._messages = messages
        #: "host:port" of the other end, once connected (for logs and audit).
        self.peer_address = "?"
        self.loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.handshake: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reading_paused = False
        self._write_paused = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def last_rtt(self) -> float | None:
        """Round-trip time of the last answered heartbeat, in seconds."""
        return self.core.last_rtt

    # -- transport callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer_address = f"{peer[0]}:{peer[1]}"
        self.conn.start(self.loop.time())
        self.pump()

    def data_received(self, data: bytes) -> None:
        if not self._write_paused:
            self.conn.receive_data(data, self.loop.time())
            self.pump()
            return
        before = self._queued()
        self.conn.receive_data(data, self.loop.time())
        self.pump()
        self._count_replies(before)

    def message_received(self, message: bytes) -> None:
        """A message transport delivered one record (or handshake frame)."""
        before = self._queued() if self._write_paused else 0
        self.conn.receive_message(message, self.loop.time())
        self.pump()
        if self._write_paused:
            self._count_replies(before)

    def _queued(self) -> int:
        transport = self._transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def _count_replies(self, before: int) -> None:
        # What this input made us queue while the peer reads nothing (PONGs,
        # WINDOW credit, REJECTs) is bounded (SessionCore.queued_replies).
        if (grown := self._queued() - before) > 0:
            self.core.queued_replies(grown)
            self.pump()

    def eof_received(self) -> bool:
        self.conn.receive_eof(self.loop.time())
        self.pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn.state is not ConnectionState.CLOSED:
            self.conn.receive_eof(self.loop.time())
        self._transport = None
        self.pump()
        if self._timer is not None:
            self._timer.cancel()
        self._writable.set()

    def pause_writing(self) -> None:
        # The peer is not reading what we send.  Reading goes on (two peers that
        # both send would deadlock otherwise); what its input makes us queue
        # meanwhile is counted (data_received) and the stall deadline runs.
        self._writable.clear()
        self._write_paused = True
        self._update_reading()
        self._schedule_timer()

    def resume_writing(self) -> None:
        self._writable.set()
        self._write_paused = False
        self._update_reading()
        self._schedule_timer()

    # -- the loop: feed (done by the caller), apply events, flush, dispatch ----

    def pump(self) -> None:
        """Apply the core's events, flush its output, then wake and start what they call for."""
        started = self.core.pump()
        self._flush()
        core = self.core
        if core.established and not self.handshake.done():
            self.handshake.set_result(None)
        if core.terminated:
            if not self.closed.done():
                self._on_terminated()
            return
        for ch, handler in started:
            self._start_handler(handler, Channel(self, ch))
        self._update_reading()
        self._schedule_timer()

    def _update_reading(self) -> None:
        """Pause or resume reading the transport as the core says (unread session data)."""
        paused = not self.core.flow(self._write_paused, self.loop.time())
        transport = self._transport
        if transport is None or paused == self._reading_paused or transport.is_closing():
            return
        self._reading_paused = paused
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _flush(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self.conn.data_to_send()  # nowhere to go: drop it
            return
        if self._messages:
            for message in self.conn.messages_to_send():
                transport.write(message)
        elif out := self.conn.data_to_send():
            transport.write(out)

    def _start_handler(self, handler: ChannelHandler, ch: Channel) -> None:
        task = self.loop.create_task(self._run_handler(handler, ch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, handler: ChannelHandler, ch: Channel) -> None:
        try:
            status = await handler(ch)
        except asyncio.CancelledError:
            await ch.close(code=ChannelCode.GOING_AWAY, reason="shutting down")
            raise
        except Exception as exc:
            if isinstance(exc, PstpError):
                _log.info("channel %s (%s) ended: %s", ch.id, ch.kind, exc)
            else:
                _log.exception("handler for channel kind %r failed", ch.kind)
            self.core.handler_done(ch._core, exc=exc)
        else:
            self.core.handler_done(ch._core, status)
        self.pump()

    def _wake(self) -> None:
        self._readable.set()

    def _on_terminated(self) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(self.conn.close_exc or self.core.closed_error())
            self.handshake.exception()  # retrieved: a failed handshake is reported elsewhere
        for task in list(self._tasks):
            task.cancel()
        self.closed.set_result(None)
        self._writable.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        if transport is not None:
            if self.core.stalled:
                transport.abort()  # what is queued would never be read
                return
            transport.close()
            if transport.get_write_buffer_size():
                # close() waits for the buffer to drain; a peer that never reads
                # would keep the descriptor for ever.
                self.loop.call_later(_LINGER, _abort_if_unsent, transport)

    def _schedule_timer(self) -> None:
        # While reading is paused (unread session data) the peer's records sit
        # unread: counting that silence as a dead peer would be wrong.  The
        # stall deadline runs instead, and also while the peer reads nothing.
        deadline = None if self._reading_paused else self.conn.next_deadline()
        if (stall := self.core.stall_deadline()) is not None:
            deadline = stall if deadline is None else min(deadline, stall)
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
        now = self.loop.time()
        if not self._reading_paused:
            self.conn.handle_timer(now)
        self.core.check_stall(now)
        self.pump()

    # -- used by Session and Channel ----------------------------------------------

    async def writable(self) -> None:
        """Wait while the transport's write buffer is full.

        Raises:
            ConnectionClosed: the session has ended.
        """
        await self._writable.wait()
        self.core.check_open()

    async def read(self) -> bytes:
        """Wait for the next chunk of session-level data.

        Raises:
            ConnectionClosed: the connection ended (``code`` says how).
        """
        while (data := self.core.recv_data()) is None:
            self._readable.clear()
            await self._readable.wait()
        if self._reading_paused and not self.core.reading_paused:
            self.pump()  # resumes reading
        return data

    async def write(self, data: bytes) -> None:
        """Send session-level data, waiting while the transport buffer is full.

        Raises:
            ConnectionClosed: the connection ended.
        """
        await self.writable()
        self.core.send_data(data)
        self.pump()

    def open_channel(self, kind: str, params: Params | None) -> Channel:
        """Open a channel now; the caller may write before it is accepted.

        Raises:
            ConnectionClosed: the session has ended.
        """
        ch = Channel(self, self.core.open_channel(kind, params))
        self.pump()
        return ch

    def close(self, code: ErrorCode | int = ErrorCode.NORMAL, reason: str = "") -> None:
        """Send CLOSE and close the transport."""
        self.conn.close(code, reason)
        self.pump()


class Session(SessionFacts[ChannelHandler]):
    """An established PSTP/2 session over asyncio.

    Use it as an async context manager.  Channels carry the real work
    (:meth:`open_channel`, :meth:`request`); :meth:`send` and :meth:`recv`
    carry a plain session-level byte stream.
    """

    def __init__(self, protocol: SessionProtocol) -> None:
        self._protocol = protocol
        self._core = protocol.core

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
