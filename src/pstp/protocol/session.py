"""The session core: one object both drivers run, above the :class:`Connection`.

A :class:`~pstp.protocol.connection.Connection` speaks the wire protocol and
reports events.  :class:`SessionCore` turns those events into the state an
application sees, once for every driver:

* each channel's inbox, EOF, accepted and finished state (:class:`ChannelCore`);
* the session-level DATA inbox and when to stop reading the transport;
* whether a channel the peer opens is accepted: the handler table, then the
  authorizer (docs/protocol.md §17.1), whose verdict travels with the channel;
* what a channel ends with when its handler returns or raises (§17.3).

The drivers (:mod:`pstp.asyncio`, :mod:`pstp.sync`) keep only the wake-up
mechanics and the I/O: they call a verb here, flush the connection's output,
and run the handlers that :meth:`SessionCore.pump` hands back.  Sans-I/O: no
clock, no sockets, no threads.  Handlers are opaque to the core (``H``): a
coroutine function for asyncio, a plain function for the blocking driver.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

from pstp.exceptions import (
    ChannelError,
    ChannelFailure,
    ConnectionClosed,
    ErrorCode,
    PermissionDenied,
    PstpError,
)
from pstp.protocol.channels import ChannelState
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
from pstp.wire.messages import ChannelCode, Params, cut_reason

__all__ = [
    "READ_ALL_LIMIT",
    "REPLY_FLOOD",
    "Admitter",
    "Authorizer",
    "ChannelCore",
    "ChannelFacts",
    "SessionCore",
    "SessionFacts",
    "Verdict",
    "outcome_of",
]

H = TypeVar("H")

#: Bytes of answers to the peer's input (heartbeats, window credit, refusals) that
#: may queue while the transport takes nothing: past that the session ends.
REPLY_FLOOD = 1 << 20
#: What ``Channel.read_all`` accepts unless told otherwise: 16 MiB (docs/protocol.md §12.1).
READ_ALL_LIMIT = 16 << 20


class Verdict(Protocol):
    """What an authorizer says about a channel the peer opens (a policy decision).

    ``refusal`` is ``None`` to allow, else the reason sent with REJECT REFUSED.
    The verdict is kept on the channel (:attr:`ChannelCore.verdict`), so the
    application does not decide twice.
    """

    @property
    def refusal(self) -> str | None:
        """``None`` if allowed, else the reason for refusing."""


#: Asked before a channel the peer opens is accepted: ``None`` allows, a string is
#: the reason for refusing, and a :class:`Verdict` says either and stays with the channel.
Authorizer = Callable[[Connection, str, Params], "Verdict | str | None"]
#: Asked once, when the handshake completes: a returned reason closes the session
#: with REFUSED before any channel of the same flight is looked at.
Admitter = Callable[[Connection], str | None]


def outcome_of(exc: BaseException) -> tuple[int, str]:
    """The channel code and peer-visible reason a handler's exception ends its channel with.

    A refusal's or a :class:`~pstp.exceptions.ChannelFailure`'s text is written
    for the peer; any other exception's text stays local (docs/protocol.md §9,
    §17.3).
    """
    if isinstance(exc, ChannelFailure):
        return exc.code, exc.reason
    if isinstance(exc, PermissionDenied):
        return ChannelCode.REFUSED, cut_reason(str(exc))
    if isinstance(exc, PstpError):
        return ChannelCode.APPLICATION_ERROR, ""
    return ChannelCode.APPLICATION_ERROR, "handler failed"


def _no_wake() -> None:
    """The default wake-up: nobody waits."""


class ChannelCore:
    """What one channel holds for its reader and writer, whatever the driver.

    Attributes:
        id: the channel id.
        kind: the channel kind, e.g. ``"exec"``.
        params: the OPEN parameters.
        verdict: what the authorizer said when the peer opened it (else ``None``).
        accepted: the channel was accepted (by us or by the peer).
        eof: the peer sent EOF.
        done: the channel has ended; ``error`` or ``exit_status`` says how.
        exit_status: the exit status it ended with (normal end only).
        error: why it failed: a :class:`ChannelError` or :class:`ConnectionClosed`.
        close_code: the ChannelCode it ended with, once ended by a code.
        close_reason: the reason it ended with.
        wake: called whenever any of the above changes or window opens (set by
            the driver to wake its waiters).
    """

    __slots__ = (
        "accepted",
        "close_code",
        "close_reason",
        "done",
        "eof",
        "error",
        "exit_status",
        "id",
        "inbox",
        "kind",
        "params",
        "verdict",
        "wake",
    )

    def __init__(self, channel_id: int, kind: str, params: Params) -> None:
        self.id = channel_id
        self.kind = kind
        self.params = params
        self.verdict: Verdict | None = None
        self.inbox: collections.deque[bytes] = collections.deque()
        self.accepted = False
        self.eof = False
        self.done = False
        self.exit_status: int | None = None
        self.error: PstpError | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.wake: Callable[[], None] = _no_wake

    def __repr__(self) -> str:
        return f"<ChannelCore {self.id} {self.kind!r}>"

    @property
    def readable(self) -> bool:
        """A read would not wait: data, EOF or the end is there."""
        return bool(self.inbox) or self.eof or self.done

    def raise_if_failed(self) -> None:
        """Raise why the channel failed, if it did.

        Raises:
            ChannelError: it was rejected or closed with an error code.
            ConnectionClosed: the session ended under it.
        """
        if self.error is not None:
            raise self.error

    def finish(self, code: int, exit_status: int | None, reason: str) -> None:
        """End the channel with a code (OK: normal end with ``exit_status``)."""
        if self.done:
            return
        self.done = True
        self.close_code, self.close_reason = code, reason
        if code == ChannelCode.OK:
            self.exit_status = exit_status
        else:
            self.error = ChannelError(self.id, code, reason)
        self.wake()

    def fail(self, exc: PstpError) -> None:
        """End the channel because the session ended."""
        if not self.done:
            self.done = True
            self.error = exc
        self.wake()


class SessionCore(Generic[H]):
    """Channels and session data over one :class:`Connection`, for any driver.

    Every verb acts on the connection and updates the state at once; the
    driver then flushes ``conn.data_to_send()`` and wakes whoever waits.  After
    feeding input or a timer to the connection, the driver calls :meth:`pump`.

    Args:
        conn: the sans-I/O connection.
        handlers: channel kinds this side serves, and what runs for each.
        authorize: asked before any channel the peer opens is accepted.
        admit: asked once when the handshake completes (session policy).
        high_water: unread session DATA bytes above which the driver stops
            reading the transport (:attr:`reading_paused`).
        session_data: this side reads session-level DATA; if false (a device
            that serves only channels), DATA from the peer ends the session
            with REFUSED instead of waiting unread (docs/protocol.md §12.1).
    """

    def __init__(
        self,
        conn: Connection,
        *,
        handlers: Mapping[str, H] | None = None,
        authorize: Authorizer | None = None,
        admit: Admitter | None = None,
        high_water: int = 1 << 20,
        session_data: bool = True,
    ) -> None:
        self.conn = conn
        self.session_data = session_data
        self.handlers: dict[str, H] = dict(handlers or {})
        self.authorize = authorize
        self.admit = admit
        self.channels: dict[int, ChannelCore] = {}
        self.inbox: collections.deque[bytes] = collections.deque()
        self.inbox_bytes = 0
        self.high_water = high_water
        #: True while unread session DATA is above the high-water mark.
        self.reading_paused = False
        #: True once the handshake completed.
        self.established = False
        #: True once the session ended (the ConnectionTerminated event was seen).
        self.terminated = False
        #: True when our own CLOSE record ended an established session: the
        #: driver lingers for the peer's end of stream so a reset cannot destroy it.
        self.linger_for_eof = False
        #: Round-trip time of the last answered heartbeat, in seconds.
        self.last_rtt: float | None = None
        self._close_code: int | None = None
        #: Since when reading, or the peer's reading of our output, has stopped.
        self._paused_at: float | None = None
        self._replies = 0
        #: True once :meth:`check_stall` ended the session: the driver drops the
        #: transport at once instead of waiting to flush what the peer never reads.
        self.stalled = False
        #: Called when session-level state changes (data, handshake, end).
        self.wake: Callable[[], None] = _no_wake

    # -- the loop ------------------------------------------------------------

    def pump(self) -> list[tuple[ChannelCore, H]]:
        """Apply the connection's new events; return the handlers to start now.

        Every channel handed back has been accepted on the wire; the driver
        runs ``handler(channel)`` and reports the end with :meth:`handler_done`.
        """
        started: list[tuple[ChannelCore, H]] = []
        # Applying an event may act on the connection (a refused session is
        # closed), which queues more events: apply until none is left.
        while events := self.conn.events_received():
            for event in events:
                self._apply(event, started)
        if not self.reading_paused and self.inbox_bytes > self.high_water:
            self.reading_paused = True
        return started

    def flow(self, write_paused: bool, now: float) -> bool:
        """Note whether the transport takes our output; true if the driver should read now.

        Reading stops only while unread session DATA is above the high-water
        mark.  It goes on while the transport cannot take what we write (a
        peer that does not read): stopping would deadlock two peers that both
        send, so what the peer's input makes us queue meanwhile is bounded by
        :meth:`queued_replies` instead.  How long either has lasted is kept for
        :meth:`stall_deadline`.
        """
        if self.reading_paused or write_paused:
            if self._paused_at is None:
                self._paused_at = now
        else:
            self._paused_at = None
            self._replies = 0
        return not self.reading_paused

    def queued_replies(self, size: int) -> None:
        """``size`` more bytes were queued in answer to input while the transport was full.

        Heartbeat answers, window credit and refusals are sent without asking
        the application; a peer that sends and never reads would make them
        queue for ever.  Past :data:`REPLY_FLOOD` bytes the session ends with
        PROTOCOL_ERROR, as HTTP/2 servers do with a PING or SETTINGS flood.
        """
        self._replies += size
        if self._replies > REPLY_FLOOD and not self.terminated:
            self.stalled = True
            self.conn.close(ErrorCode.PROTOCOL_ERROR, "the peer does not read what it is sent")

    def stall_deadline(self) -> float | None:
        """When a session that stopped reading, or whose peer stopped reading, ends.

        While either lasts, the peer's heartbeats cannot prove it alive (they
        go unread, or our answers never leave); this deadline takes the
        dead-peer rule's place, after the same silence limit
        (:attr:`Connection.silence_limit`, docs/protocol.md §12.1).  ``None``: never.
        """
        limit = self.conn.silence_limit
        if self._paused_at is None or limit is None or self.terminated:
            return None
        return self._paused_at + limit

    def check_stall(self, now: float) -> None:
        """End the session with TIMEOUT once it has been stalled past the deadline."""
        deadline = self.stall_deadline()
        if deadline is not None and now >= deadline:
            self.stalled = True
            limit = self.conn.silence_limit
            self.conn.close(ErrorCode.TIMEOUT, f"session stalled for {limit:g} s")

    def _apply(self, event: Event, started: list[tuple[ChannelCore, H]]) -> None:
        match event:
            case ChannelDataReceived(channel_id=cid, data=data):
                if (ch := self.channels.get(cid)) is not None:
                    ch.inbox.append(data)
                    ch.wake()
            case ChannelWindowUpdated(channel_id=cid):
                if (ch := self.channels.get(cid)) is not None:
                    ch.wake()
            case ChannelAccepted(channel_id=cid):
                if (ch := self.channels.get(cid)) is not None:
                    ch.accepted = True
                    ch.wake()
            case ChannelEofReceived(channel_id=cid):
                if (ch := self.channels.get(cid)) is not None:
                    ch.eof = True
                    ch.wake()
            case ChannelRejected(channel_id=cid, code=code, reason=reason):
                # A REJECT is a failure whatever its code, even OK (0): the code
                # is reported as received (docs/protocol.md §14.4).
                if (ch := self.channels.pop(cid, None)) is not None:
                    ch.done = True
                    ch.close_code, ch.close_reason = code, reason
                    ch.error = ChannelError(cid, code, reason)
                    ch.wake()
            case ChannelClosed(channel_id=cid, code=code, exit_status=status, reason=reason):
                if (ch := self.channels.pop(cid, None)) is not None:
                    ch.finish(code, status, reason)
            case ChannelOpenRequested():
                self._on_open_requested(event, started)
            case DataReceived(data=data):
                if not self.session_data:
                    self.conn.close(ErrorCode.REFUSED, "no session data here: use a channel")
                    return
                self.inbox.append(data)
                self.inbox_bytes += len(data)
                self.wake()
            case HeartbeatAcknowledged(rtt=rtt):
                self.last_rtt = rtt
            case HandshakeCompleted():
                self.established = True
                if self.admit is not None and (refusal := self.admit(self.conn)) is not None:
                    # Its ConnectionTerminated is applied in this same pump.
                    self.conn.close(ErrorCode.REFUSED, cut_reason(refusal))
                self.wake()
            case ConnectionTerminated(code=code, by_peer=by_peer):
                # Only a CLOSE record we sent needs the linger: a failed
                # handshake or a truncation sent nothing (docs/protocol.md §6.4).
                self.linger_for_eof = (
                    self.established and not by_peer and code != ErrorCode.TRUNCATED
                )
                self._on_terminated(code)
            case _:  # pragma: no cover - every event type is handled above
                raise AssertionError(f"unhandled event {event!r}")

    def _on_open_requested(
        self, event: ChannelOpenRequested, started: list[tuple[ChannelCore, H]]
    ) -> None:
        cid = event.channel_id
        if self.conn.state is not ConnectionState.ESTABLISHED:
            return  # the session was refused or ended in this same batch of events
        if self.conn.channel_state(cid) not in _AWAITING_DECISION:
            # The peer closed it in the same read, before we could decide: its
            # ChannelClosed follows and finds nothing to end (docs/protocol.md §14.5).
            return
        handler = self.handlers.get(event.kind)
        if handler is None:
            self.conn.reject_channel(
                cid, ChannelCode.UNKNOWN_KIND, f"no handler for {event.kind!r}"
            )
            return
        verdict: Verdict | None = None
        if self.authorize is not None:
            said = self.authorize(self.conn, event.kind, event.params)
            if isinstance(said, str):
                refusal: str | None = said
            else:
                verdict = said
                refusal = said.refusal if said is not None else None
            if refusal is not None:
                self.conn.reject_channel(cid, ChannelCode.REFUSED, cut_reason(refusal))
                return
        ch = ChannelCore(cid, event.kind, event.params)
        ch.verdict = verdict
        ch.accepted = True
        self.channels[cid] = ch
        self.conn.accept_channel(cid)
        started.append((ch, handler))

    def _on_terminated(self, code: int) -> None:
        self.terminated = True
        self._close_code = code
        closed = self.closed_error()
        for ch in self.channels.values():
            ch.fail(closed)
        self.channels.clear()
        self.wake()

    def closed_error(self) -> ConnectionClosed:
        """The error that operations on the ended session raise."""
        exc = self.conn.close_exc
        if isinstance(exc, ConnectionClosed):
            return exc
        code = self.conn.close_code if self.conn.close_code is not None else self._close_code
        return ConnectionClosed(
            code if code is not None else ErrorCode.INTERNAL_ERROR, str(exc) if exc else ""
        )

    def check_open(self) -> None:
        """Raise unless the session is established.

        Raises:
            ConnectionClosed: it has ended (or never started).
        """
        if self.conn.state is not ConnectionState.ESTABLISHED:
            raise self.closed_error()

    # -- channels ------------------------------------------------------------

    def open_channel(self, kind: str, params: Params | None = None) -> ChannelCore:
        """Open a channel; data may be written at once, up to the window.

        Raises:
            ConnectionClosed: the session is not established.
        """
        self.check_open()
        cid = self.conn.open_channel(kind, params)
        ch = ChannelCore(cid, kind, params or {})
        self.channels[cid] = ch
        return ch

    def read(self, ch: ChannelCore, max_bytes: int = -1) -> bytes | None:
        """Take up to ``max_bytes`` of a channel's data (negative: a whole chunk).

        Returns:
            The bytes (acknowledged, which reopens the peer's window), ``b""``
            at EOF or a normal end, or ``None`` when the reader must wait.

        Raises:
            ChannelError: the channel was rejected or closed with an error code.
            ConnectionClosed: the session ended.
        """
        if not ch.inbox:
            if ch.eof or ch.done:
                ch.raise_if_failed()
                return b""
            return None
        data = ch.inbox.popleft()
        if 0 <= max_bytes < len(data):
            data, rest = data[:max_bytes], data[max_bytes:]
            ch.inbox.appendleft(rest)
        self.conn.acknowledge_channel_data(ch.id, len(data))
        return data

    def write(self, ch: ChannelCore, data: memoryview, limit: int) -> int:
        """Send as much of ``data`` as the window allows, at most ``limit`` bytes.

        Returns:
            The bytes sent; 0 means wait for the window.

        Raises:
            ChannelError: the channel ended (closed or rejected).
            ConnectionClosed: the session ended.
        """
        if ch.done:
            ch.raise_if_failed()
            raise ChannelError(ch.id, ChannelCode.CANCELLED, "channel closed")
        self.check_open()
        n = min(self.conn.channel_send_window(ch.id), len(data), limit)
        if n > 0:
            self.conn.send_channel_data(ch.id, data[:n])
        return n

    def writable(self, ch: ChannelCore) -> bool:
        """A write would not wait: window is open, or the channel has ended."""
        return ch.done or self.terminated or self.conn.channel_send_window(ch.id) > 0

    def write_eof(self, ch: ChannelCore) -> None:
        """Half-close; does nothing if the channel already ended normally.

        Raises:
            ChannelError: it was rejected or closed with an error code.
            ConnectionClosed: the session ended.
            InvalidState: EOF was already sent.
        """
        if ch.done:
            ch.raise_if_failed()
            return
        self.check_open()
        self.conn.send_channel_eof(ch.id)

    def close_channel(
        self,
        ch: ChannelCore,
        exit_status: int | None = None,
        code: int = ChannelCode.OK,
        reason: str = "",
    ) -> None:
        """Close the channel (nothing if it already ended)."""
        if ch.done:
            return
        self.channels.pop(ch.id, None)
        self.conn.close_channel(ch.id, code, exit_status, reason)
        ch.finish(code, exit_status, reason)

    def handler_done(
        self, ch: ChannelCore, result: object = None, exc: BaseException | None = None
    ) -> None:
        """A handler returned ``result`` (an int is the exit status) or raised ``exc``."""
        if exc is not None:
            code, reason = outcome_of(exc)
            self.close_channel(ch, code=code, reason=reason)
        else:
            status = result if isinstance(result, int) and not isinstance(result, bool) else None
            self.close_channel(ch, exit_status=status)

    # -- the session-level stream --------------------------------------------

    def send_data(self, data: bytes) -> None:
        """Send bytes on the session-level stream.

        Raises:
            ConnectionClosed: the session is not established.
        """
        self.check_open()
        self.conn.send_data(data)

    def recv_data(self) -> bytes | None:
        """Take the next chunk of session data, or ``None`` when the reader must wait.

        After this, reading resumes if :attr:`reading_paused` went false.

        Raises:
            ConnectionClosed: the session ended and nothing is left to read.
        """
        if not self.inbox:
            if self.terminated or self.conn.state is ConnectionState.CLOSED:
                raise self.closed_error()
            return None
        data = self.inbox.popleft()
        self.inbox_bytes -= len(data)
        if self.reading_paused and self.inbox_bytes <= self.high_water // 2:
            self.reading_paused = False
        return data


class ChannelFacts:
    """What a driver's channel tells about itself; both drivers' channels subclass it."""

    _core: ChannelCore

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._core.id} {self._core.kind!r}>"

    @property
    def id(self) -> int:
        """The channel id."""
        return self._core.id

    @property
    def kind(self) -> str:
        """The channel kind, e.g. ``"exec"``."""
        return self._core.kind

    @property
    def params(self) -> Params:
        """The parameters it was opened with."""
        return self._core.params

    @property
    def verdict(self) -> Verdict | None:
        """What the authorizer said when the peer opened this channel (the policy decision)."""
        return self._core.verdict

    @property
    def close_code(self) -> int | None:
        """The ChannelCode it ended with, once ended."""
        return self._core.close_code

    @property
    def close_reason(self) -> str:
        """The reason it ended with."""
        return self._core.close_reason


class SessionFacts(Generic[H]):
    """What a driver's session tells about itself; both drivers' sessions subclass it."""

    _core: SessionCore[H]
    #: How a client reached the device: ``(step, address)`` of its reach ladder
    #: (``"given"``, ``"direct"``, ``"lan"``, ``"websocket"``, ``"mqtt"``), set
    #: by the client; ``None`` when nobody recorded it.
    reached: tuple[str, str] | None = None

    @property
    def peer_id(self) -> str:
        """The peer's device id."""
        return self._core.conn.peer_id or ""

    @property
    def session_id(self) -> bytes:
        """The handshake hash, unique to this session.

        Raises:
            InvalidState: the session has ended.
        """
        return self._core.conn.session_id

    @property
    def connection(self) -> Connection:
        """The sans-I/O connection underneath (for inspection; do not drive it)."""
        return self._core.conn

    @property
    def last_rtt(self) -> float | None:
        """Round-trip time of the last answered heartbeat, in seconds."""
        return self._core.last_rtt

    @property
    def is_closed(self) -> bool:
        """True once the session has ended."""
        return self._core.terminated

    def set_handler(self, kind: str, handler: H | None) -> None:
        """Serve (or stop serving) channels of ``kind`` that the peer opens.

        When the handler returns, the channel is closed with its int result as
        the exit status.
        """
        if handler is None:
            self._core.handlers.pop(kind, None)
        else:
            self._core.handlers[kind] = handler


#: Channel states in which a peer's OPEN still waits for our decision (§14.5).
_AWAITING_DECISION = frozenset(
    {ChannelState.APP_EXPECT_DECISION, ChannelState.APP_EXPECT_DECISION_EOF}
)
