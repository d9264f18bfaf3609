"""Blocking driver: runs the sans-I/O session core with threads.

The driver makes no protocol decisions: :class:`~pstp.protocol.session.SessionCore`
keeps every channel's state and decides what the peer may open.  Each session
has one background I/O thread that waits on the socket (with a timeout equal
to the core's next deadline, then calls ``handle_timer``), feeds what arrives
to the core and wakes the waiters.  Channel handlers run on a small pool of
worker threads that is reused from channel to channel.  Callers block in
ordinary threads; there is no hidden event loop.

Locking (one lock guards every call into the core):

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
import itertools
import logging
import queue
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
    TooMuchData,
)
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


class SyncChannel(ChannelFacts):
    """One channel of a session: a flow-controlled, half-closable byte stream.

    Iterate it (``for chunk in channel``) or call :meth:`read`; write with
    :meth:`write`; :meth:`write_eof` half-closes; :meth:`close` ends it with
    an optional exit status.  Leaving ``with`` closes it.  Every method is
    safe to call from any thread.
    """

    def __init__(self, session: SyncSession, core: ChannelCore) -> None:
        self._session = session
        self._core = core
        self._cond = threading.Condition(session._lock)
        core.wake = self._cond.notify_all

    @property
    def exit_status(self) -> int | None:
        """The exit status the channel was closed with (``None`` if none or still open)."""
        with self._cond:
            core = self._core
            return core.exit_status if core.done and core.error is None else None

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
            if not self._cond.wait_for(lambda: self._core.readable, timeout):
                raise TimeoutError(f"no data on channel {self.id} within {timeout} s")
            data = s._core.read(self._core, max_bytes)
            assert data is not None  # readable
            s._pump_locked()
        s._flush()
        return data

    def read_all(
        self, *, timeout: float | None = None, limit: int | None = READ_ALL_LIMIT
    ) -> bytes:
        """Read until EOF, at most ``limit`` bytes.

        Args:
            timeout: seconds for the whole read; ``None`` waits as long as it takes.
            limit: the most bytes to accept (16 MiB unless told); more is an error.
                ``None`` removes the bound: only for a peer you trust.

        Raises:
            ChannelError: the channel was rejected or closed with an error code.
            ConnectionClosed: the session ended.
            TimeoutError: EOF did not come in time (what was read is lost).
            TooMuchData: more than ``limit`` bytes arrived (a ValueError; the
                channel stays open, and a handler that lets it go closes the channel
                with RESOURCE_LIMIT).
        """
        deadline = _deadline(timeout)
        parts = []
        size = 0
        while chunk := self.read(timeout=_remaining(deadline)):
            size += len(chunk)
            if limit is not None and size > limit:
                raise TooMuchData(self.id, limit)
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
                    lambda: s._core.writable(self._core), _remaining(deadline)
                )
                if not ready:
                    raise TimeoutError(f"channel {self.id}: the peer's window stayed closed")
                n = s._core.write(self._core, view, _SEND_CHUNK)
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
            s._core.write_eof(self._core)
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
            s._core.close_channel(self._core, exit_status, code, reason)
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
            if not self._cond.wait_for(lambda: self._core.done, timeout):
                raise TimeoutError(f"channel {self.id} still open after {timeout} s")
            self._core.raise_if_failed()
            return self._core.exit_status

    def __enter__(self) -> SyncChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- used by SyncSession ---------------------------------------------------

    def _wait_accepted(self, timeout: float | None) -> None:
        with self._cond:
            core = self._core
            if not self._cond.wait_for(lambda: core.accepted or core.done, timeout):
                raise TimeoutError(f"channel {self.id} not accepted within {timeout} s")
            if not core.accepted:
                core.raise_if_failed()
                raise ChannelError(self.id, ChannelCode.CANCELLED, "channel closed")


class _Workers:
    """Daemon worker threads for channel handlers, reused from channel to channel.

    A thread is started only when no idle one is waiting, so a session runs as
    many threads as it has handlers running at once (at most ``max_channels``),
    not one per channel it ever served.  Daemon threads: a handler stuck in
    application code never holds up the process's exit.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0
            if start:
                self._threads += 1
            else:
                self._idle -= 1
        self._jobs.put(job)
        if start:
            threading.Thread(
                target=self._work, name=f"{self._name}-{self._threads}", daemon=True
            ).start()

    def stop(self) -> None:
        """Let every worker end once it has nothing to do."""
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()
            with self._lock:
                self._idle += 1
        with self._lock:
            self._threads -= 1


class SyncSession(SessionFacts[ChannelHandler]):
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
        authorize: asked before any channel the peer opens is accepted (policy);
            what it returns travels with the channel as :attr:`SyncChannel.verdict`.
        admit: asked once when the handshake completes; a returned reason
            closes the session with REFUSED.
    """

    def __init__(
        self,
        conn: Connection,
        sock: socket.socket,
        *,
        handlers: Mapping[str, ChannelHandler] | None = None,
        high_water: int = 1 << 20,
        authorize: Authorizer | None = None,
        admit: Admitter | None = None,
    ) -> None:
        self._conn = conn
        self._core: SessionCore[ChannelHandler] = SessionCore(
            conn, handlers=handlers, authorize=authorize, admit=admit, high_water=high_water
        )
        self._sock = sock
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._stream_lock = threading.Lock()
        self._outq: collections.deque[bytes] = collections.deque()
        self._sock_closed = False  # guarded by _send_lock
        self._pending = memoryview(b"")  # I/O thread only
        self._io_sending = False  # I/O thread only: it holds _send_lock
        self._core.wake = self._cond.notify_all
        self._workers = _Workers(f"pstp-channel-{conn.role.value}")
        self._finished = threading.Event()
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
            ch = SyncChannel(self, self._core.open_channel(kind, params))
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
                    self._core.send_data(bytes(view[off : off + _SEND_CHUNK]))
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
        core = self._core
        with self._cond:
            if not self._cond.wait_for(lambda: core.inbox or core.terminated, timeout):
                raise TimeoutError(f"no session data within {timeout} s")
            paused = core.reading_paused
            data = core.recv_data()
            assert data is not None  # data or the end is there
            if paused and not core.reading_paused:
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
            core = self._core
            done = self._cond.wait_for(lambda: core.established or core.terminated, timeout)
            established = core.established
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

    def _pump_locked(self) -> None:
        """Apply the core's events, queue output, start handlers.  ``_lock`` is held."""
        started = self._core.pump()
        self._queue_output()
        for core, handler in started:
            ch = SyncChannel(self, core)
            self._workers.submit(lambda h=handler, c=ch: self._run_handler(h, c))  # type: ignore[misc]
        if self._core.terminated:
            self._wake()

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

    def _run_handler(self, handler: ChannelHandler, ch: SyncChannel) -> None:
        try:
            status = handler(ch)
        except Exception as exc:
            if isinstance(exc, PstpError):
                _log.info("channel %s (%s) ended: %s", ch.id, ch.kind, exc)
            else:
                _log.exception("handler for channel kind %r failed", ch.kind)
            outcome: tuple[object, BaseException | None] = (None, exc)
        else:
            outcome = (status, None)
        with self._lock:
            self._core.handler_done(ch._core, *outcome)
            self._pump_locked()
        self._flush()

    # -- the I/O thread ------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._wake_r, selectors.EVENT_READ)
            mask = 0
            while True:
                if self._own_output():
                    self._write_some()
                with self._lock:
                    if self._core.terminated:
                        break
                    # Output that cannot leave (a peer that does not read) does not
                    # stop reading, which could deadlock two senders; the answers
                    # our reading queues meanwhile are bounded (_read_some).
                    reading = self._core.flow(self._io_sending, time.monotonic())
                    # While paused, input waits in the socket: the peer is not
                    # silent, so heartbeat deadlines must not run (§6.5); the
                    # stall deadline does, then and while the peer reads nothing.
                    deadline = self._conn.next_deadline() if reading else None
                    if (stall := self._core.stall_deadline()) is not None:
                        deadline = stall if deadline is None else min(deadline, stall)
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
                with self._lock:
                    if reading:
                        self._conn.handle_timer(time.monotonic())
                    self._core.check_stall(time.monotonic())
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
            before = len(self._outq)
            if data:
                self._conn.receive_data(data, now)
            elif self._conn.state is not ConnectionState.CLOSED:
                self._conn.receive_eof(now)
            self._pump_locked()
            if self._io_sending:  # our output waits for the socket: count the answers
                grown = sum(len(c) for c in itertools.islice(self._outq, before, None))
                if grown:
                    self._core.queued_replies(grown)
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
            if self._core.linger_for_eof:
                self._linger(end, selectors.EVENT_READ)
        except Exception:
            _log.exception("closing the socket of %r failed", self)
        finally:
            self._outq.clear()
            self._pending = memoryview(b"")
            self._sock_closed = True
            self._sock.close()
            self._release_send()
            self._workers.stop()
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
