"""Channels: many independent, flow-controlled byte streams in one session.

docs/protocol.md §14.  The :class:`ChannelTable` is sans-I/O: it validates
control messages and data against each channel's state and windows, and
returns the events and the messages to send.  It never buffers data: received
bytes go straight out as events, and a peer may only send what we granted
(window-based flow control), so a slow reader slows the writer.
"""

from __future__ import annotations

import enum

import msgspec

from pstp.exceptions import InvalidState, LocalProtocolError, RemoteProtocolError
from pstp.protocol.events import (
    ChannelAccepted,
    ChannelClosed,
    ChannelDataReceived,
    ChannelEofReceived,
    ChannelOpenRequested,
    ChannelRejected,
    ChannelWindowUpdated,
    Event,
)
from pstp.wire.messages import (
    INITIAL_WINDOW,
    KIND_MAX,
    MAX_WINDOW,
    Accept,
    ChannelCode,
    Close,
    ControlMessage,
    Eof,
    Open,
    Params,
    Reject,
    Window,
    cut_reason,
)

__all__ = [
    "CHANNEL_TRANSITIONS",
    "ChannelInput",
    "ChannelState",
    "ChannelTable",
]


class ChannelState(enum.Enum):
    """Where one channel is (§14.5).  Waiting states say what they wait for."""

    LOCAL_EXPECT_ACCEPT = enum.auto()
    LOCAL_EXPECT_ACCEPT_EOF = enum.auto()
    APP_EXPECT_DECISION = enum.auto()
    APP_EXPECT_DECISION_EOF = enum.auto()
    OPEN = enum.auto()
    HALF_CLOSED_LOCAL = enum.auto()
    HALF_CLOSED_REMOTE = enum.auto()
    HALF_CLOSED_BOTH = enum.auto()
    CLOSED = enum.auto()


class ChannelInput(enum.Enum):
    """What can happen to a channel: a message sent (SEND_*) or received (RECV_*)."""

    SEND_ACCEPT = enum.auto()
    RECV_ACCEPT = enum.auto()
    SEND_REJECT = enum.auto()
    RECV_REJECT = enum.auto()
    SEND_DATA = enum.auto()
    RECV_DATA = enum.auto()
    SEND_EOF = enum.auto()
    RECV_EOF = enum.auto()
    SEND_CLOSE = enum.auto()
    RECV_CLOSE = enum.auto()


_C = ChannelState
_I = ChannelInput
#: The legal moves of a channel (§14.5, table 3); any other pair is an error.
CHANNEL_TRANSITIONS: dict[tuple[ChannelState, ChannelInput], ChannelState] = {
    (_C.LOCAL_EXPECT_ACCEPT, _I.SEND_DATA): _C.LOCAL_EXPECT_ACCEPT,
    (_C.LOCAL_EXPECT_ACCEPT, _I.SEND_EOF): _C.LOCAL_EXPECT_ACCEPT_EOF,
    (_C.LOCAL_EXPECT_ACCEPT, _I.RECV_ACCEPT): _C.OPEN,
    (_C.LOCAL_EXPECT_ACCEPT, _I.RECV_REJECT): _C.CLOSED,
    (_C.LOCAL_EXPECT_ACCEPT, _I.SEND_CLOSE): _C.CLOSED,
    (_C.LOCAL_EXPECT_ACCEPT_EOF, _I.RECV_ACCEPT): _C.HALF_CLOSED_LOCAL,
    (_C.LOCAL_EXPECT_ACCEPT_EOF, _I.RECV_REJECT): _C.CLOSED,
    (_C.LOCAL_EXPECT_ACCEPT_EOF, _I.SEND_CLOSE): _C.CLOSED,
    (_C.APP_EXPECT_DECISION, _I.RECV_DATA): _C.APP_EXPECT_DECISION,
    (_C.APP_EXPECT_DECISION, _I.RECV_EOF): _C.APP_EXPECT_DECISION_EOF,
    (_C.APP_EXPECT_DECISION, _I.SEND_ACCEPT): _C.OPEN,
    (_C.APP_EXPECT_DECISION, _I.SEND_REJECT): _C.CLOSED,
    (_C.APP_EXPECT_DECISION, _I.RECV_CLOSE): _C.CLOSED,
    (_C.APP_EXPECT_DECISION_EOF, _I.SEND_ACCEPT): _C.HALF_CLOSED_REMOTE,
    (_C.APP_EXPECT_DECISION_EOF, _I.SEND_REJECT): _C.CLOSED,
    (_C.APP_EXPECT_DECISION_EOF, _I.RECV_CLOSE): _C.CLOSED,
    (_C.OPEN, _I.SEND_DATA): _C.OPEN,
    (_C.OPEN, _I.RECV_DATA): _C.OPEN,
    (_C.OPEN, _I.SEND_EOF): _C.HALF_CLOSED_LOCAL,
    (_C.OPEN, _I.RECV_EOF): _C.HALF_CLOSED_REMOTE,
    (_C.OPEN, _I.SEND_CLOSE): _C.CLOSED,
    (_C.OPEN, _I.RECV_CLOSE): _C.CLOSED,
    (_C.HALF_CLOSED_LOCAL, _I.RECV_DATA): _C.HALF_CLOSED_LOCAL,
    (_C.HALF_CLOSED_LOCAL, _I.RECV_EOF): _C.HALF_CLOSED_BOTH,
    (_C.HALF_CLOSED_LOCAL, _I.SEND_CLOSE): _C.CLOSED,
    (_C.HALF_CLOSED_LOCAL, _I.RECV_CLOSE): _C.CLOSED,
    (_C.HALF_CLOSED_REMOTE, _I.SEND_DATA): _C.HALF_CLOSED_REMOTE,
    (_C.HALF_CLOSED_REMOTE, _I.SEND_EOF): _C.HALF_CLOSED_BOTH,
    (_C.HALF_CLOSED_REMOTE, _I.SEND_CLOSE): _C.CLOSED,
    (_C.HALF_CLOSED_REMOTE, _I.RECV_CLOSE): _C.CLOSED,
    (_C.HALF_CLOSED_BOTH, _I.SEND_CLOSE): _C.CLOSED,
    (_C.HALF_CLOSED_BOTH, _I.RECV_CLOSE): _C.CLOSED,
}


class _Channel(msgspec.Struct):
    id: int
    kind: str
    state: ChannelState
    send_window: int
    recv_window: int
    window_size: int
    consumed: int = 0
    unacknowledged: int = 0


class ChannelTable:
    """The channels of one session.

    Args:
        initiator: true on the session's initiator; it numbers its channels
            1, 3, 5, ... and the responder 2, 4, 6, ...
        window: the receive window we grant each channel (≥ INITIAL_WINDOW).
        max_channels: channels the peer may have open at once; more are rejected.
    """

    def __init__(self, *, initiator: bool, window: int, max_channels: int) -> None:
        if not INITIAL_WINDOW <= window <= MAX_WINDOW:
            raise ValueError("channel window out of range")
        self._channels: dict[int, _Channel] = {}
        self._next_id = 1 if initiator else 2
        self._remote_parity = 0 if initiator else 1
        self._highest_remote = 0
        self._window = window
        self._max_channels = max_channels
        self._remote_open = 0

    # -- queries -------------------------------------------------------------

    def state(self, channel_id: int) -> ChannelState:
        """The state of a channel (CLOSED once it is gone)."""
        ch = self._channels.get(channel_id)
        return ch.state if ch is not None else ChannelState.CLOSED

    def send_window(self, channel_id: int) -> int:
        """How many bytes we may send on the channel now (0 if closed)."""
        ch = self._channels.get(channel_id)
        return ch.send_window if ch is not None else 0

    def __len__(self) -> int:
        return len(self._channels)

    def ids(self) -> list[int]:
        """The ids of every channel not yet closed."""
        return list(self._channels)

    # -- local verbs (return the message to send) -------------------------------

    def open(self, kind: str, params: Params | None) -> tuple[int, Open]:
        """Allocate an id and build OPEN.  Data may follow at once, up to INITIAL_WINDOW."""
        if not 1 <= len(kind.encode("utf-8")) <= KIND_MAX:
            raise LocalProtocolError(f"channel kind must be 1 to {KIND_MAX} bytes of UTF-8")
        cid = self._next_id
        if cid > 0xFFFFFFFF:
            raise LocalProtocolError("channel ids exhausted for this session")
        self._next_id += 2
        self._channels[cid] = _Channel(
            cid,
            kind,
            ChannelState.LOCAL_EXPECT_ACCEPT,
            send_window=INITIAL_WINDOW,
            recv_window=self._window,
            window_size=self._window,
        )
        return cid, Open(cid, kind, self._window, params or {})

    def accept(self, channel_id: int) -> Accept:
        """Accept a channel the peer opened."""
        ch = self._move(channel_id, ChannelInput.SEND_ACCEPT)
        # The peer could already use INITIAL_WINDOW; the rest of our window is granted now.
        ch.recv_window += self._window - INITIAL_WINDOW
        return Accept(channel_id, self._window)

    def reject(self, channel_id: int, code: int, reason: str) -> Reject:
        """Refuse a channel the peer opened."""
        self._move(channel_id, ChannelInput.SEND_REJECT)
        self._forget(channel_id)
        return Reject(channel_id, code, cut_reason(reason))

    def send_data(self, channel_id: int, size: int) -> None:
        """Account for ``size`` bytes about to be sent on the channel.

        Raises:
            InvalidState: the channel does not allow sending.
            LocalProtocolError: more than the send window.
        """
        ch = self._move(channel_id, ChannelInput.SEND_DATA)
        if size > ch.send_window:
            raise LocalProtocolError(
                f"{size} bytes exceed channel {channel_id}'s send window of {ch.send_window}"
            )
        ch.send_window -= size

    def eof(self, channel_id: int) -> Eof:
        """Half-close: we send no more data."""
        self._move(channel_id, ChannelInput.SEND_EOF)
        return Eof(channel_id)

    def close(
        self, channel_id: int, code: int, exit_status: int | None, reason: str
    ) -> Close | None:
        """Close a channel; ``None`` if it is already closed (closing twice is harmless)."""
        if channel_id not in self._channels:
            return None
        self._move(channel_id, ChannelInput.SEND_CLOSE)
        self._forget(channel_id)
        return Close(channel_id, code, exit_status, cut_reason(reason))

    def acknowledge(self, channel_id: int, size: int) -> Window | None:
        """The application consumed ``size`` bytes; maybe grant the peer more window.

        Returns a WINDOW message once at least half the window was consumed,
        so updates stay rare on fast streams.
        """
        ch = self._channels.get(channel_id)
        if ch is None or size <= 0:
            return None
        # Never credit more than was received: an over-eager caller must not
        # grant the peer room it did not free (§14.3).
        size = min(size, ch.unacknowledged)
        ch.unacknowledged -= size
        ch.consumed += size
        if ch.consumed < ch.window_size // 2 or ch.state in (
            ChannelState.HALF_CLOSED_REMOTE,
            ChannelState.HALF_CLOSED_BOTH,
            ChannelState.APP_EXPECT_DECISION_EOF,
        ):
            return None
        inc, ch.consumed = ch.consumed, 0
        ch.recv_window += inc
        return Window(channel_id, inc)

    # -- input from the peer ---------------------------------------------------

    def receive_control(self, msg: ControlMessage) -> tuple[list[Event], list[ControlMessage]]:
        """Apply a control message from the peer.

        Returns:
            The events for the application and any messages to send in reply.

        Raises:
            RemoteProtocolError: the message breaks §14.
        """
        if isinstance(msg, Open):
            return self._on_open(msg)
        ch = self._lookup(msg.channel)
        if ch is None:
            return [], []  # a channel we already closed: the message crossed ours
        if isinstance(msg, Window):
            if ch.send_window + msg.increment > MAX_WINDOW:
                raise RemoteProtocolError("channel window overflow")
            ch.send_window += msg.increment
            return [ChannelWindowUpdated(channel_id=ch.id, window=ch.send_window)], []
        if isinstance(msg, Accept):
            self._move_remote(ch, ChannelInput.RECV_ACCEPT)
            if msg.window < INITIAL_WINDOW:
                raise RemoteProtocolError("ACCEPT window below the initial window")
            # The opener started with INITIAL_WINDOW of credit (minus what it sent,
            # plus any WINDOW that overtook the ACCEPT); ACCEPT adds the rest.
            ch.send_window += msg.window - INITIAL_WINDOW
            return [
                ChannelAccepted(channel_id=ch.id),
                ChannelWindowUpdated(channel_id=ch.id, window=ch.send_window),
            ], []
        if isinstance(msg, Reject):
            self._move_remote(ch, ChannelInput.RECV_REJECT)
            self._forget(ch.id)
            return [ChannelRejected(channel_id=ch.id, code=msg.code, reason=msg.reason)], []
        if isinstance(msg, Eof):
            self._move_remote(ch, ChannelInput.RECV_EOF)
            return [ChannelEofReceived(channel_id=ch.id)], []
        self._move_remote(ch, ChannelInput.RECV_CLOSE)
        self._forget(ch.id)
        return [
            ChannelClosed(
                channel_id=ch.id,
                code=msg.code,
                exit_status=msg.exit_status,
                reason=msg.reason,
                by_peer=True,
            )
        ], []

    def receive_data(self, channel_id: int, data: bytes) -> list[Event]:
        """Apply CHANNEL_DATA from the peer.

        Raises:
            RemoteProtocolError: unknown channel, wrong state, or more than the window.
        """
        ch = self._lookup(channel_id)
        if ch is None:
            return []  # sent before our CLOSE or REJECT reached the peer
        self._move_remote(ch, ChannelInput.RECV_DATA)
        if len(data) > ch.recv_window:
            raise RemoteProtocolError(f"flow control: channel {channel_id} window exceeded")
        ch.recv_window -= len(data)
        ch.unacknowledged += len(data)
        return [ChannelDataReceived(channel_id=channel_id, data=data)]

    def close_all(self) -> list[int]:
        """Forget every channel (the session ended); returns their ids."""
        ids = list(self._channels)
        self._channels.clear()
        self._remote_open = 0
        return ids

    # -- internals -----------------------------------------------------------

    def _on_open(self, msg: Open) -> tuple[list[Event], list[ControlMessage]]:
        cid = msg.channel
        if cid % 2 != self._remote_parity or cid <= self._highest_remote:
            raise RemoteProtocolError(f"OPEN with an invalid channel id {cid}")
        if msg.window < INITIAL_WINDOW:
            raise RemoteProtocolError("OPEN window below the initial window")
        self._highest_remote = cid
        if self._remote_open >= self._max_channels:
            return [], [Reject(cid, ChannelCode.RESOURCE_LIMIT, "too many channels")]
        self._remote_open += 1
        self._channels[cid] = _Channel(
            cid,
            msg.kind,
            ChannelState.APP_EXPECT_DECISION,
            send_window=msg.window,
            recv_window=INITIAL_WINDOW,
            window_size=self._window,
        )
        return [ChannelOpenRequested(channel_id=cid, kind=msg.kind, params=msg.params)], []

    def _lookup(self, cid: int) -> _Channel | None:
        ch = self._channels.get(cid)
        if ch is not None:
            return ch
        ours = cid % 2 != self._remote_parity
        known = cid < self._next_id if ours else cid <= self._highest_remote
        if cid == 0 or not known:
            raise RemoteProtocolError(f"message for channel {cid}, which was never opened")
        return None

    def _move(self, channel_id: int, inp: ChannelInput) -> _Channel:
        ch = self._channels.get(channel_id)
        if ch is None:
            raise InvalidState(f"channel {channel_id} is closed")
        new = CHANNEL_TRANSITIONS.get((ch.state, inp))
        if new is None:
            raise InvalidState(f"cannot {inp.name} on channel {channel_id} in {ch.state.name}")
        ch.state = new
        return ch

    def _move_remote(self, ch: _Channel, inp: ChannelInput) -> None:
        new = CHANNEL_TRANSITIONS.get((ch.state, inp))
        if new is None:
            raise RemoteProtocolError(
                f"unexpected {inp.name} on channel {ch.id} in {ch.state.name}"
            )
        ch.state = new

    def _forget(self, cid: int) -> None:
        if self._channels.pop(cid, None) is not None and cid % 2 == self._remote_parity:
            self._remote_open -= 1
