"""Events a :class:`~pstp.protocol.connection.Connection` reports to its driver."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "HandshakeCompleted",
    "HeartbeatAcknowledged",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of every event."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeCompleted(Event):
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


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived(Event):
    """Application bytes arrived in a DATA record."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatAcknowledged(Event):
    """The peer answered one of our PINGs; ``rtt`` is in seconds."""

    rtt: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionTerminated(Event):
    """The connection ended.  Always the last event.

    Attributes:
        code: the close code (an :class:`~pstp.exceptions.ErrorCode` value).
        reason: human-readable text; for errors found locally, our own text.
        by_peer: true when the peer sent the CLOSE record.
    """

    code: int
    reason: str
    by_peer: bool
