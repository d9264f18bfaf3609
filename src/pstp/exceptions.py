"""Every exception PSTP raises, in one hierarchy.

::

    PstpError
    ├── ProtocolError              # code: ClassVar[ErrorCode]
    │   ├── LocalProtocolError     # the caller misused the API
    │   └── RemoteProtocolError    # the peer broke the protocol
    │       ├── HandshakeFailed
    │       ├── DecryptError
    │       ├── FrameTooLarge
    │       ├── ReplayError
    │       └── KeyExhausted
    ├── InvalidState
    ├── ConnectionClosed           # code, reason
    ├── ChannelError               # channel_id, code
    └── DaemonError
        ├── PermissionDenied
        ├── ChannelFailure         # code, reason: told to the peer
        ├── ExecFailed
        └── TransferFailed

Each protocol error carries the wire code (``docs/protocol.md`` §9) that a
connection sends in its CLOSE record when the error ends it.  Exception text
is for the local user only and is never sent to the peer.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "ChannelError",
    "ChannelFailure",
    "ConnectionClosed",
    "DaemonError",
    "DecryptError",
    "ErrorCode",
    "ExecFailed",
    "FrameTooLarge",
    "HandshakeFailed",
    "InvalidState",
    "KeyExhausted",
    "LocalProtocolError",
    "PeerFlood",
    "PermissionDenied",
    "ProtocolError",
    "PstpError",
    "RemoteProtocolError",
    "ReplayError",
    "TooMuchData",
    "TransferFailed",
]


class ErrorCode(enum.IntEnum):
    """Close reason codes carried in a CLOSE record (docs/protocol.md §9)."""

    NORMAL = 0x0000
    PROTOCOL_ERROR = 0x0001
    DECRYPT_ERROR = 0x0002
    FRAME_TOO_LARGE = 0x0003
    HANDSHAKE_FAILED = 0x0004
    TIMEOUT = 0x0005
    KEY_EXHAUSTED = 0x0006
    INTERNAL_ERROR = 0x0007
    REFUSED = 0x0008
    GOING_AWAY = 0x0009
    TRUNCATED = 0x000A
    UNSUPPORTED_VERSION = 0x000B


class PstpError(Exception):
    """Base class of every error raised by PSTP."""


class ProtocolError(PstpError):
    """A violation of PSTP/2, by us or by the peer."""

    code: ClassVar[ErrorCode] = ErrorCode.PROTOCOL_ERROR


class LocalProtocolError(ProtocolError):
    """The caller used the API in a way the protocol does not allow."""

    code = ErrorCode.INTERNAL_ERROR


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""

    code = ErrorCode.PROTOCOL_ERROR


class HandshakeFailed(RemoteProtocolError):
    """The handshake could not be completed (wrong key, bad confirmation, timeout)."""

    code = ErrorCode.HANDSHAKE_FAILED


class DecryptError(RemoteProtocolError):
    """An AEAD tag or a MAC did not verify.  Carries no detail by design."""

    code = ErrorCode.DECRYPT_ERROR


class PeerFlood(RemoteProtocolError):
    """The peer sent more of something than this side answers (a heartbeat flood, §6.5)."""


class FrameTooLarge(RemoteProtocolError):
    """A frame announced a length above the configured maximum."""

    code = ErrorCode.FRAME_TOO_LARGE


class ReplayError(RemoteProtocolError):
    """A record arrived twice, out of order, or too old for the replay window."""

    code = ErrorCode.PROTOCOL_ERROR


class RecordGap(RemoteProtocolError):
    """Window mode: a genuine record arrived after a gap (one was lost or overtaken, §6.3)."""

    code = ErrorCode.PROTOCOL_ERROR


class KeyExhausted(RemoteProtocolError):
    """A key was used past its hard limit (docs/protocol.md §6.3)."""

    code = ErrorCode.KEY_EXHAUSTED


class InvalidState(PstpError):
    """An operation was attempted in a state that does not allow it."""


class ConnectionClosed(PstpError):
    """The connection is closed; ``code`` and ``reason`` say why.

    Args:
        code: the close code received or sent.
        reason: a short human-readable reason (may be empty).
    """

    def __init__(self, code: ErrorCode | int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"code {int(code)}"
        super().__init__(f"connection closed ({name}){': ' + reason if reason else ''}")


class ChannelError(PstpError):
    """A channel was refused or failed.

    Args:
        channel_id: the channel concerned.
        code: the channel's close or reject code.
        reason: a short human-readable reason.
    """

    def __init__(self, channel_id: int, code: int, reason: str = "") -> None:
        self.channel_id = channel_id
        self.code = code
        self.reason = reason
        super().__init__(
            f"channel {channel_id} failed (code {code}){': ' + reason if reason else ''}"
        )


class DaemonError(PstpError):
    """An error raised by the serving application."""


class PermissionDenied(DaemonError):
    """Policy refused the request."""


class ChannelFailure(DaemonError):
    """A channel handler's failure that the peer is told about.

    The session core closes (or, before ACCEPT, rejects) the channel with
    ``code`` (a ChannelCode value, docs/protocol.md §14.4) and ``reason``,
    which is written for the peer; any other exception's text stays local.

    Args:
        code: the ChannelCode sent to the peer.
        reason: the text sent to the peer (cut to 200 bytes when sent, §14.4).
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(reason or f"channel failed with code {code}")
        self.code = code
        self.reason = reason


class TooMuchData(ChannelFailure, ValueError):
    """More data arrived on a channel than the reader accepts (``read_all(limit=…)``).

    In a handler it closes the channel with RESOURCE_LIMIT and says so to the peer.
    """

    def __init__(self, channel_id: int, limit: int) -> None:
        super().__init__(3, f"more than {limit} bytes on channel {channel_id}")  # RESOURCE_LIMIT
        self.limit = limit


class ExecFailed(DaemonError):
    """A command or action could not be run."""


class TransferFailed(DaemonError):
    """A file transfer could not be completed."""
