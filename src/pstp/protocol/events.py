"""Events a :class:`~pstp.protocol.connection.Connection` reports to its driver.

Events are immutable ``msgspec.Struct`` classes: they compare, hash and print
like frozen dataclasses, but defining them costs almost nothing at import (a
fresh ``pstp run`` process imports this module) and creating one per record is
several times cheaper.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "ChannelAccepted",
    "ChannelClosed",
    "ChannelDataReceived",
    "ChannelEofReceived",
    "ChannelOpenRequested",
    "ChannelRejected",
    "ChannelWindowUpdated",
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "HandshakeCompleted",
    "HeartbeatAcknowledged",
]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base class of every event."""


class HandshakeCompleted(Event, frozen=True, kw_only=True):
    """Both sides proved the pair key and agreed on session parameters.

    Attributes:
        peer_id: the device id of the peer (the responder's own id as it
            reported it, or the initiator's id from the responder's key ring).
        suite: the negotiated record suite (a :class:`~pstp.wire.frames.Suite` value).
        session_id: the final Noise handshake hash; unique per session.
        service: the service the initiator asked for.
    """

    peer_id: str
    suite: int
    session_id: bytes
    service: str


class DataReceived(Event, frozen=True, kw_only=True):
    """Application bytes arrived in a DATA record."""

    data: bytes


class HeartbeatAcknowledged(Event, frozen=True, kw_only=True):
    """The peer answered one of our PINGs; ``rtt`` is in seconds."""

    rtt: float


class ConnectionTerminated(Event, frozen=True, kw_only=True):
    """The connection ended.  Always the last event.

    Attributes:
        code: the close code (an :class:`~pstp.exceptions.ErrorCode` value).
        reason: human-readable text; for errors found locally, our own text.
        by_peer: true when the peer sent the CLOSE record.
    """

    code: int
    reason: str
    by_peer: bool


class ChannelOpenRequested(Event, frozen=True, kw_only=True):
    """The peer opened a channel; accept or reject it (§14.5).

    Attributes:
        channel_id: the new channel's id.
        kind: the channel kind, e.g. ``"exec"``.
        params: the kind's parameters as the peer sent them (validated only for type).
    """

    channel_id: int
    kind: str
    params: dict[str, str | int | float | bool | list[str] | None]


class ChannelAccepted(Event, frozen=True, kw_only=True):
    """The peer accepted a channel we opened."""

    channel_id: int


class ChannelRejected(Event, frozen=True, kw_only=True):
    """The peer refused a channel we opened; ``code`` is a ChannelCode value."""

    channel_id: int
    code: int
    reason: str


class ChannelDataReceived(Event, frozen=True, kw_only=True):
    """Bytes arrived on a channel.  Acknowledge them once consumed to reopen the window."""

    channel_id: int
    data: bytes


class ChannelEofReceived(Event, frozen=True, kw_only=True):
    """The peer will send no more data on the channel."""

    channel_id: int


class ChannelWindowUpdated(Event, frozen=True, kw_only=True):
    """We may now send ``window`` bytes on the channel."""

    channel_id: int
    window: int


class ChannelClosed(Event, frozen=True, kw_only=True):
    """The channel ended.

    Attributes:
        channel_id: the channel.
        code: a ChannelCode value (0 = normal).
        exit_status: the exit status of what ran on the channel, if any.
        reason: a short human-readable reason.
        by_peer: true when the peer closed it.
    """

    channel_id: int
    code: int
    exit_status: int | None
    reason: str
    by_peer: bool
