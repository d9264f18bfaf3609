"""Blocking driver: runs a sans-I/O :class:`~pstp.protocol.connection.Connection` with threads.

The driver makes no protocol decisions.  Each session has one background I/O
thread that waits on the socket (with a timeout equal to the core's next
deadline, then calls ``handle_timer``), feeds what arrives to the core, and
dispatches the events into per-channel state.  Callers block in ordinary
threads; there is no hidden event loop.

Locking (STYLE §3: in ``sync/`` one lock guards every call into the core):

* ``_lock`` guards the core and every piece of session and channel state.
  Waiters sleep on :class:`threading.Condition` objects built on it, so a wait
  releases it.  Nothing blocks on I/O while holding it.
* ``_send_lock`` serialises writes to the socket.  The core's output is
  appended to a FIFO while ``_lock`` is held, so records leave in the order
  they were sealed whoever writes them.  A calling thread writes with a
  blocking ``sendall``; the I/O thread only ever writes without blocking, so
  it keeps reading while the socket is full and two peers can never deadlock
  with both I/O threads stuck in ``sendall``.  Lock order is always
  ``_send_lock`` then ``_lock``.

Nothing is buffered without bound: a channel's reader acknowledges what it
consumed, which is what lets the peer send more (flow control), and the I/O
thread stops reading the socket while more than ``high_water`` bytes of
session-level DATA are waiting for :meth:`SyncSession.recv`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from pstp.clock import next_timestamp
from pstp.exceptions import (
    ChannelError,
    ConnectionClosed,
    ErrorCode,
    HandshakeFailed,
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
    "Channel",
    "ChannelHandler",
    "Session",
    "SyncChannel",
    "SyncSession",
    "next_timestamp",
]

_log = logging.getLogger("pstp.sync")

#: Runs in its own thread for each channel of its kind the peer opens; an int is the exit status.
ChannelHandler = Callable[["SyncChannel"], int | None]

# Bytes read from the socket at once.
_READ_SIZE = 256 * 1024
# Bytes sealed per hold of the core lock, so other threads interleave on one session.
_SEND_CHUNK = 256 * 1024
# Seconds the I/O thread spends, after the session ended, flushing the last
# records (the CLOSE) and waiting for the peer's end of stream: closing with
# unread input would reset the connection and could destroy our CLOSE.
_LINGER = 2.0
# Per-call non-blocking I/O for the I/O thread; the socket itself stays blocking
# because calling threads use sendall on it.  (Windows has no such flag.)
_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
_NONBLOCKING_SEND_MAX = _READ_SIZE if _DONTWAIT else 16 * 1024


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class SyncChannel:
    """One channel of a session: a flow-controlled, half-closable byte stream.

    Iterate it (``for chunk in channel``) or call :meth:`read`; write with
    :meth:`write`; :meth:`write_eof` half-closes; :meth:`close` ends it with
    an optional exit status.  Leaving ``with`` closes it.  Every method is
    safe to call from any thread.

    Attributes:
        id: the channel id.
        kind: the channel kind, e.g. ``"exec"``.
        params: the parameters it was opened with.
        close_code: the code it ended with (a ChannelCode value), once ended.
        close_reason: the reason it ended with.
    """

    def __init__(self, session: SyncSession, channel_id: int, kind: str, params: Params) -> None:
        self._session = session
        self.id = channel_id
        self.kind = kind
        self.params = params
        self._cond = threading.Condition(session._lock)
        self._inbox: collections.deque[bytes] = collections.deque()
        self._eof = False
        self._accepted = False
        self._done = False
        self._status: int | None = None
        self._exc: PstpError | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    def __repr__(self) -> str:
        return f"<SyncChannel {self.id} {self.kind!r}>"

    @property
    def exit_status(self) -> int | None:
        """The exit status the channel was closed with (``None`` if none or still open)."""
        with self._cond:
            return self._status if self._done and self._exc is None else None

    # -- reading -------------------------------------------------------------

    def read(self, max_bytes: int = -1, *, timeout: float | None = None) -> bytes:
        """Read up to ``max_bytes`` (default: whatever has arrived); ``b""`` at EOF.

        Reading acknowledges the bytes, which reopens the peer's window.

        Args:
            max_bytes: the most bytes to return; negative for no limit.
            timeout: seconds to wait for data; ``None`` waits as long as it takes.

        Raises:
            ChannelError: the channel was rejected or closed with an error code.
            ConnectionClosed: the session ended.
            TimeoutError: nothing arrived in time (the channel stays usable).
        """
        s = self._session
        with self._cond:
            if not self._cond.wait_for(lambda: self._inbox or self._eof or self._done, timeout):
                raise TimeoutError(f"no data on channel {self.id} within {timeout} s")
            if not self._inbox:
                self._raise_if_failed()
                return b""
            data = self._inbox.popleft()
            if 0 <= max_bytes < len(data):
                data, rest = data[:max_bytes], data[max_bytes:]
                self._inbox.appendleft(rest)
            s._conn.acknowledge_channel_data(self.id, len(data))
            s._pump_locked()
        s._flush()
        return data

    def read_all(self, *, timeout: float | None = None) -> bytes:
        """Read until EOF.

        Args:
            timeout: seconds for the whole read; ``None`` waits as long as it takes.

        Raises:
            ChannelError: the channel was rejected or closed with an error code.
            ConnectionClosed: the session ended.
            TimeoutError: EOF did not come in time (what was read is lost).
        """
        deadline = _deadline(timeout)
        parts = []
        while chunk := self.read(timeout=_remaining(deadline)):
            parts.append(chunk)
        return b"".join(parts)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.read()
        if not data:
            raise StopIteration
        return data

    # -- writing -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview, *, timeout: float | None = None) -> None:
        """Send all of ``data``, blocking while the peer's window is closed.

        Args:
            data: the bytes to send.
            timeout: seconds for the whole write; ``None`` waits as long as it takes.

        Raises:
            ChannelError: the channel was closed or rejected meanwhile.
            ConnectionClosed: the session ended.
            TimeoutError: the window stayed closed too long; part of ``data``
                may have been sent.
        """
        view = memoryview(data).cast("B")
        s = self._session
        deadline = _deadline(timeout)
        while view:
            with self._cond:
                ready = self._cond.wait_for(
                    lambda: self._done or s._conn.channel_send_window(self.id) > 0,
                    _remaining(deadline),
                )
                if not ready:
                    raise TimeoutError(f"channel {self.id}: the peer's window stayed closed")
                if self._done:
                    self._raise_if_failed()
                    raise ChannelError(self.id, ChannelCode.CANCELLED, "channel closed")
                n = min(s._conn.channel_send_window(self.id), len(view), _SEND_CHUNK)
                s._conn.send_channel_data(self.id, view[:n])
                s._pump_locked()
            view = view[n:]
            s._flush()

    def write_eof(self) -> None:
        """Half-close: tell the peer we send no more data.

        Does nothing if the peer already closed the channel normally.

        Raises:
            ChannelError: the channel was rejected or closed with an error code.
            ConnectionClosed: the session ended.
            InvalidState: EOF was already sent.
        """
        s = self._session
        with self._cond:
            if self._done:
                self._raise_if_failed()
                return
            s._conn.send_channel_eof(self.id)
            s._pump_locked()
        s._flush()

    def close(
        self, exit_status: int | None = None, code: int = ChannelCode.OK, reason: str = ""
    ) -> None:
        """Close the channel (does nothing if it is already closed).

        Args:
            exit_status: the exit status of what ran on the channel, if any.
            code: a ChannelCode value; anything but OK is an error for the peer.
            reason: a short human-readable reason.
        """
        s = self._session
        with self._cond:
            if self._done:
                return
            s._conn.close_channel(self.id, code, exit_status, reason)
            s._channels.pop(self.id, None)
            self._finish(code, exit_status, reason)
            s._pump_locked()
        s._flush()

    def wait_closed(self, *, timeout: float | None = None) -> int | None:
        """Wait for the channel to end and return its exit status.

        Args:
            timeout: seconds to wait; ``None`` waits as long as it takes.

        Raises:
            ChannelError: it ended with an error code or was rejected.
            ConnectionClosed: the session ended.
            TimeoutError: it did not end in time.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"channel {self.id} still open after {timeout} s")
            self._raise_if_failed()
            return self._status

    def __enter__(self) -> SyncChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- driven by SyncSession (the session lock is held) --------------------------

    def _wait_accepted(self, timeout: float | None) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._accepted or self._done, timeout):
                raise TimeoutError(f"channel {self.id} not accepted within {timeout} s")
            if not self._accepted:
                self._raise_if_failed()
                raise ChannelError(self.id, ChannelCode.CANCELLED, "channel closed")

    def _raise_if_failed(self) -> None:
        if self._exc is not None:
            raise self._exc

    def _finish(self, code: int, exit_status: int | None, reason: str) -> None:
        if self._done:
            return
        self._done = True
        self.close_code, self.close_reason = code, reason
        if code == ChannelCode.OK:
            self._status = exit_status
        else:
            self._exc = ChannelError(self.id, code, reason)
        self._cond.notify_all()

    def _fail(self, exc: PstpError) -> None:
        if not self._done:
            self._done = True
            self._exc = exc
        self._cond.notify_all()


class SyncSession:
    """An established PSTP/2 session over a blocking socket.

    Made by :func:`pstp.sync.client.connect` or :func:`pstp.sync.server.accept`.
    Use it as a context manager.  Channels carry the real work
    (:meth:`open_channel`, :meth:`request`); :meth:`send` and :meth:`recv`
    carry a plain session-level byte stream.  Every method is safe to call
    from any thread.

    Args:
        conn: the sans-I/O connection (not started).
        sock: a connected stream socket; the session owns it from now on.
        handlers: channel kinds this side serves, and what runs for each.
        high_water: unread session DATA bytes above which socket reading pauses.
    """

    def __init__(
        self,
        conn: Connection,
        sock: socket.socket,
        *,
        handlers: Mapping[str, ChannelHandler] | None = None,
        high_water: int = 1 << 20,
    ) -> None:
        self._conn = conn
        self._sock = sock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._stream_lock = threading.Lock()
        self._outq: collections.deque[bytes] = collections.deque()
        self._sock_closed = False  # guarded by _send_lock
        self._pending = memoryview(b"")  # I/O thread only
        self._io_sending = False  # I/O thread only: it holds _send_lock
        self._handlers: dict[str, ChannelHandler] = dict(handlers or {})
        self._channels: dict[int, SyncChannel] = {}
        self._inbox: collections.deque[bytes] = collections.deque()
        self._inbox_bytes = 0
        self._high_water = high_water
        self._reading_paused = False
        self._established = False
        self._terminated = False
        self._close_code: int | None = None
        self._linger_for_eof = False
        self._finished = threading.Event()
        self.last_rtt: float | None = None
        sock.setblocking(True)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # small records must not wait for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(
            target=self._run, name=f"pstp-io-{conn.role.value}", daemon=True
        )

    def __repr__(self) -> str:
        return f"<SyncSession {self._conn.role.value} peer={self._conn.peer_id!r}>"

    # -- properties ----------------------------------------------------------

    @property
    def peer_id(self) -> str:
        """The peer's device id."""
        return self._conn.peer_id or ""

    @property
    def session_id(self) -> bytes:
        """The handshake hash, unique to this session.

        Raises:
            InvalidState: the session has ended.
        """
        with self._lock:
            return self._conn.session_id

    @property
    def connection(self) -> Connection:
        """The sans-I/O connection underneath (for inspection; do not drive it)."""
        return self._conn

    @property
    def is_closed(self) -> bool:
        """True once the session has ended."""
        return self._terminated

    def set_handler(self, kind: str, handler: ChannelHandler | None) -> None:
        """Serve (or stop serving) channels of ``kind`` that the peer opens.

        The handler runs in a new thread for each channel; when it returns the
        channel is closed, with its int result as the exit status.
        """
        with self._lock:
            if handler is None:
                self._handlers.pop(kind, None)
            else:
                self._handlers[kind] = handler

    # -- channels ------------------------------------------------------------

    def open_channel(
        self,
        kind: str,
        params: Params | None = None,
        *,
        wait_accepted: bool = True,
        timeout: float | None = None,
    ) -> SyncChannel:
        """Open a channel of ``kind``.

        Args:
            kind: the channel kind the peer serves.
            params: parameters for the kind.
            wait_accepted: wait for the peer's ACCEPT (default); otherwise return
                at once, and writes of up to 64 KiB may go out before it.
            timeout: seconds to wait for ACCEPT; on expiry the channel is
                closed with CANCELLED and the session stays usable.

        Raises:
            ChannelError: the peer rejected the channel.
            ConnectionClosed: the session has ended.
            TimeoutError: no ACCEPT in time.
        """
        with self._lock:
            self._check_open()
            cid = self._conn.open_channel(kind, params)
            ch = SyncChannel(self, cid, kind, params or {})
            self._channels[cid] = ch
            self._pump_locked()
        self._flush()
        if wait_accepted:
            try:
                ch._wait_accepted(timeout)
            except TimeoutError:
                ch.close(code=ChannelCode.CANCELLED)
                raise
        return ch

    def request(
        self,
        kind: str,
        data: bytes = b"",
        params: Params | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Run one request/response exchange on a fresh channel.

        The request goes out with the OPEN (no round trip is spent waiting for
        ACCEPT), then the reply is read to EOF.  On a timeout the channel is
        closed with CANCELLED and the session stays usable.

        Args:
            kind: the channel kind the peer serves.
            data: the request body.
            params: parameters for the kind.
            timeout: seconds for the whole exchange.

        Raises:
            ChannelError: rejected, or the peer closed the channel with an error.
            ConnectionClosed: the session has ended.
            TimeoutError: no complete reply in time.
        """
        deadline = _deadline(timeout)
        ch = self.open_channel(kind, params, wait_accepted=False)
        try:
            if data:
                ch.write(data, timeout=_remaining(deadline))
            ch.write_eof()
            reply = ch.read_all(timeout=_remaining(deadline))
            ch.wait_closed(timeout=_remaining(deadline))
            return reply
        except BaseException:
            with contextlib.suppress(PstpError):
                ch.close(code=ChannelCode.CANCELLED)
            raise

    # -- the session-level stream ----------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes on the session-level stream.

        Concurrent sends do not interleave: each one's bytes stay together.

        Raises:
            ConnectionClosed: the session has ended.
        """
        view = memoryview(data).cast("B")
        with self._stream_lock:
            for off in range(0, max(len(view), 1), _SEND_CHUNK):
                with self._lock:
                    self._check_open()
                    self._conn.send_data(bytes(view[off : off + _SEND_CHUNK]))
                    self._pump_locked()
                self._flush()

    def recv(self, timeout: float | None = None) -> bytes:
        """Receive the next chunk of the session-level stream.

        Args:
            timeout: seconds to wait; ``None`` waits as long as it takes.

        Raises:
            ConnectionClosed: the session has ended (``code`` says how).
            TimeoutError: nothing arrived in time (the session stays usable).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._inbox or self._terminated, timeout):
                raise TimeoutError(f"no session data within {timeout} s")
            if not self._inbox:
                raise self._closed_error()
            data = self._inbox.popleft()
            self._inbox_bytes -= len(data)
            if self._reading_paused and self._inbox_bytes <= self._high_water // 2:
                self._reading_paused = False
                self._wake()
            return data

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return self.recv()
        except ConnectionClosed as exc:
            if exc.code == ErrorCode.NORMAL:
                raise StopIteration from None
            raise

    # -- ending --------------------------------------------------------------

    def close(self, code: ErrorCode | int = ErrorCode.NORMAL, reason: str = "") -> None:
        """Close with an authenticated CLOSE record and wait for the socket to close.

        Closing twice does nothing.  The wait is bounded: if the peer does not
        hang up, the socket is closed after a short linger anyway.
        """
        with self._lock:
            self._conn.close(code, reason)
            self._pump_locked()
        self._flush()
        if threading.current_thread() is not self._thread:
            self._finished.wait()

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the session has ended, for whatever reason, and its socket is closed.

        Args:
            timeout: seconds to wait; ``None`` waits as long as it takes.

        Raises:
            TimeoutError: the session is still open (it stays usable).
        """
        if not self._finished.wait(timeout):
            raise TimeoutError(f"session still open after {timeout} s")

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- used by connect() and accept() ------------------------------------------

    def _start(self) -> None:
        """Start the core and the I/O thread (on failure the socket is closed)."""
        try:
            with self._lock:
                self._conn.start(time.monotonic())
                self._pump_locked()
        except BaseException:
            self._sock.close()
            self._wake_r.close()
            self._wake_w.close()
            self._finished.set()
            raise
        self._thread.start()
        self._flush()

    def _wait_established(self, timeout: float | None) -> None:
        """Block until the handshake completes; on failure the session is closed.

        Raises:
            HandshakeFailed: the peer did not prove the key, or the core's
                handshake deadline passed.
            TimeoutError: ``timeout`` passed first.
        """
        with self._cond:
            done = self._cond.wait_for(lambda: self._established or self._terminated, timeout)
            established = self._established
        if established:
            return
        self.close()
        if not done:
            raise TimeoutError("the handshake did not complete in time")
        exc = self._conn.close_exc
        if isinstance(exc, HandshakeFailed):
            raise exc
        raise HandshakeFailed(str(exc) if exc else "handshake failed") from exc

    # -- the loop: feed, drain events, flush, dispatch (STYLE §3) ------------------

    def _check_open(self) -> None:
        if self._conn.state is not ConnectionState.ESTABLISHED:
            raise self._closed_error()

    def _pump_locked(self) -> None:
        """Drain events, queue output, dispatch.  ``_lock`` is held; call ``_flush`` after."""
        events = self._conn.events_received()
        self._queue_output()
        for event in events:
            self._dispatch(event)
        # Dispatching may have acted on the core (accept or reject a channel).
        self._queue_output()
        if not self._reading_paused and self._inbox_bytes > self._high_water:
            self._reading_paused = True

    def _queue_output(self) -> None:
        out = self._conn.data_to_send()
        if out:
            self._outq.append(out)

    def _flush(self) -> None:
        """Write the queued output from a calling thread (blocking, never under ``_lock``)."""
        while self._outq:
            with self._send_lock:
                while self._outq:
                    try:
                        chunk = self._outq.popleft()
                    except IndexError:  # cleared by a transport failure meanwhile
                        break
                    if self._sock_closed:
                        continue
                    try:
                        self._sock.sendall(chunk)
                    except OSError as exc:
                        self._transport_failed(exc)

    def _transport_failed(self, exc: OSError) -> None:
        """The socket failed under a write: the session ends (``_send_lock`` is held)."""
        _log.debug("transport failed: %s", exc)
        self._outq.clear()
        with self._lock:
            if self._conn.state is not ConnectionState.CLOSED:
                self._conn.receive_eof(time.monotonic())
            self._pump_locked()

    def _wake(self) -> None:
        """Interrupt the I/O thread's wait (``_lock`` is held)."""
        if not self._finished.is_set():
            with contextlib.suppress(OSError):  # a full pipe already wakes it
                self._wake_w.send(b"\0")

    def _dispatch(self, event: Event) -> None:
        match event:
            case ChannelDataReceived(channel_id=cid, data=data):
                ch = self._channels.get(cid)
                if ch is not None:
                    ch._inbox.append(data)
                    ch._cond.notify_all()
            case ChannelWindowUpdated(channel_id=cid) | ChannelAccepted(channel_id=cid):
                ch = self._channels.get(cid)
                if ch is not None:
                    ch._accepted = ch._accepted or isinstance(event, ChannelAccepted)
                    ch._cond.notify_all()
            case ChannelEofReceived(channel_id=cid):
                ch = self._channels.get(cid)
                if ch is not None:
                    ch._eof = True
                    ch._cond.notify_all()
            case ChannelRejected(channel_id=cid, code=code, reason=reason):
                ch = self._channels.pop(cid, None)
                if ch is not None:
                    ch._finish(code or ChannelCode.REFUSED, None, reason)
            case ChannelClosed(channel_id=cid, code=code, exit_status=status, reason=reason):
                ch = self._channels.pop(cid, None)
                if ch is not None:
                    ch._finish(code, status, reason)
            case ChannelOpenRequested():
                self._on_open_requested(event)
            case DataReceived(data=data):
                self._inbox.append(data)
                self._inbox_bytes += len(data)
                self._cond.notify_all()
            case HeartbeatAcknowledged(rtt=rtt):
                self.last_rtt = rtt
            case HandshakeCompleted():
                self._established = True
                self._cond.notify_all()
            case ConnectionTerminated(code=code, by_peer=by_peer):
                # Only a CLOSE record we sent needs the linger: it must not be
                # destroyed by a reset (a failed handshake or a truncation sent nothing).
                self._linger_for_eof = (
                    self._established and not by_peer and code != ErrorCode.TRUNCATED
                )
                self._on_terminated(code)
            case _:
                _log.debug("ignored event %r", event)

    def _on_open_requested(self, event: ChannelOpenRequested) -> None:
        handler = self._handlers.get(event.kind)
        if handler is None:
            self._conn.reject_channel(
                event.channel_id, ChannelCode.UNKNOWN_KIND, f"no handler for {event.kind!r}"
            )
            return
        ch = SyncChannel(self, event.channel_id, event.kind, event.params)
        ch._accepted = True
        self._channels[ch.id] = ch
        self._conn.accept_channel(ch.id)
        threading.Thread(
            target=self._run_handler,
            args=(handler, ch),
            name=f"pstp-channel-{ch.id}-{ch.kind}",
            daemon=True,
        ).start()

    def _run_handler(self, handler: ChannelHandler, ch: SyncChannel) -> None:
        try:
            status = handler(ch)
        except PstpError as exc:
            _log.info("channel %s (%s) ended: %s", ch.id, ch.kind, exc)
            ch.close(code=ChannelCode.APPLICATION_ERROR)
        except Exception:
            _log.exception("handler for channel kind %r failed", ch.kind)
            ch.close(code=ChannelCode.APPLICATION_ERROR, reason="handler failed")
        else:
            ch.close(exit_status=status if isinstance(status, int) else None)

    def _on_terminated(self, code: int) -> None:
        self._terminated = True
        self._close_code = code
        closed = self._closed_error()
        for ch in self._channels.values():
            ch._fail(closed)
        self._channels.clear()
        self._cond.notify_all()
        self._wake()

    def _closed_error(self) -> ConnectionClosed:
        exc = self._conn.close_exc
        if isinstance(exc, ConnectionClosed):
            return exc
        # Fall back on the ConnectionTerminated event's code if the core left close_code unset.
        code = self._conn.close_code if self._conn.close_code is not None else self._close_code
        return ConnectionClosed(
            code if code is not None else ErrorCode.INTERNAL_ERROR, str(exc) if exc else ""
        )

    # -- the I/O thread ------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._wake_r, selectors.EVENT_READ)
            mask = 0
            while True:
                with self._lock:
                    if self._terminated:
                        break
                    reading = not self._reading_paused
                    # While paused, input waits in the socket: the peer is not
                    # silent, so heartbeat deadlines must not run (§6.5).
                    deadline = self._conn.next_deadline() if reading else None
                if self._own_output():
                    self._write_some()
                want = (selectors.EVENT_READ if reading else 0) | (
                    selectors.EVENT_WRITE if self._io_sending else 0
                )
                if want != mask:
                    if not mask:
                        sel.register(self._sock, want)
                    elif not want:
                        sel.unregister(self._sock)
                    else:
                        sel.modify(self._sock, want)
                    mask = want
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                for key, events in sel.select(timeout):
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                        continue
                    if events & selectors.EVENT_WRITE:
                        self._write_some()
                    if events & selectors.EVENT_READ:
                        self._read_some()
                if reading:
                    with self._lock:
                        self._conn.handle_timer(time.monotonic())
                        self._pump_locked()
        except Exception:
            _log.exception("the I/O thread of %r failed", self)
            with self._lock:
                self._conn.close(ErrorCode.INTERNAL_ERROR)
                self._pump_locked()
        finally:
            sel.close()
            self._teardown()

    def _read_some(self) -> None:
        try:
            data = self._sock.recv(_READ_SIZE, _DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # a reset reads as the end of the stream
        with self._lock:
            now = time.monotonic()
            if data:
                self._conn.receive_data(data, now)
            elif self._conn.state is not ConnectionState.CLOSED:
                self._conn.receive_eof(now)
            self._pump_locked()

    def _own_output(self) -> bool:
        """Take the send lock if output waits and no thread is writing; true while held."""
        if not self._io_sending and self._outq and self._send_lock.acquire(blocking=False):
            self._io_sending = True
        return self._io_sending

    def _send_pending(self) -> bool:
        """Write without blocking; true once everything queued is out.

        Raises:
            OSError: the transport failed.
        """
        while True:
            if not self._pending:
                chunks = []
                while self._outq:
                    chunks.append(self._outq.popleft())
                if not chunks:
                    return True
                self._pending = memoryview(b"".join(chunks))
            try:
                n = self._sock.send(self._pending[:_NONBLOCKING_SEND_MAX], _DONTWAIT)
            except BlockingIOError:
                return False
            self._pending = self._pending[n:]

    def _write_some(self) -> None:
        try:
            done = self._send_pending()
        except OSError as exc:
            self._pending = memoryview(b"")
            self._transport_failed(exc)  # clears the queue, so still under the send lock
            self._release_send()
            return
        if done:
            # Released here; the loop's next _own_output() catches anything
            # queued meanwhile by a thread that found the lock taken.
            self._release_send()

    def _release_send(self) -> None:
        if self._io_sending:
            self._io_sending = False
            self._send_lock.release()

    def _teardown(self) -> None:
        """Flush the last records, half-close, linger for the peer's EOF, close."""
        end = time.monotonic() + _LINGER
        try:
            if not self._io_sending:
                self._io_sending = self._send_lock.acquire(timeout=_LINGER)
            if self._io_sending:
                self._linger(end, selectors.EVENT_WRITE)
            else:
                # A caller is stuck in sendall (the peer stopped reading); a
                # shutdown wakes it with an error so the lock comes free.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
                self._send_lock.acquire()
                self._io_sending = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
            if self._linger_for_eof:
                self._linger(end, selectors.EVENT_READ)
        except Exception:
            _log.exception("closing the socket of %r failed", self)
        finally:
            self._outq.clear()
            self._pending = memoryview(b"")
            self._sock_closed = True
            self._sock.close()
            self._release_send()
            with self._lock:
                self._finished.set()
                self._wake_r.close()
                self._wake_w.close()
                self._cond.notify_all()

    def _linger(self, end: float, event: int) -> None:
        """Until ``end``: send what is queued (EVENT_WRITE) or discard input to EOF (EVENT_READ)."""
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, event)
            while (left := end - time.monotonic()) > 0:
                try:
                    if event == selectors.EVENT_WRITE and self._send_pending():
                        return
                    if not sel.select(left):
                        return
                    if event == selectors.EVENT_READ and not self._sock.recv(_READ_SIZE, _DONTWAIT):
                        return
                except BlockingIOError:
                    continue
                except OSError:
                    return


#: The names the asyncio driver uses (STYLE §2: drivers share names).
Session = SyncSession
Channel = SyncChannel
