"""Channel messages (docs/protocol.md §14).

Control messages are MessagePack arrays decoded against one tagged-union
schema (msgspec), so untrusted input is validated in exactly one place: types,
integer ranges and string lengths.  Bulk data is raw bytes behind a 4-byte
channel id, never base64 and never MessagePack.
"""

from __future__ import annotations

import enum
from typing import Annotated, TypeAlias

import msgspec

from pstp.exceptions import RemoteProtocolError

__all__ = [
    "CHANNEL_DATA_HEADER_LEN",
    "INITIAL_WINDOW",
    "KIND_MAX",
    "MAX_WINDOW",
    "REASON_MAX",
    "Accept",
    "ChannelCode",
    "Close",
    "ControlMessage",
    "Eof",
    "Open",
    "ParamValue",
    "Params",
    "Reject",
    "Window",
    "cut_reason",
    "decode_channel_data",
    "decode_control",
    "encode_channel_data",
    "encode_control",
]

#: Bytes an opener may send before ACCEPT, and the least window a side grants (§14.3).
INITIAL_WINDOW = 65536
#: Largest window a receiver may grant (as in HTTP/2: 2**31 - 1).
MAX_WINDOW = (1 << 31) - 1
#: CHANNEL_DATA body: channel id (4) then the data (§14.2).
CHANNEL_DATA_HEADER_LEN = 4

_U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
_WINDOW = Annotated[int, msgspec.Meta(ge=0, le=MAX_WINDOW)]
#: Longest channel kind, in bytes of UTF-8 (§14.4).
KIND_MAX = 64
#: Longest REJECT or CLOSE reason, in bytes of UTF-8 (§14.4).
REASON_MAX = 200
# msgspec counts characters: these bounds only reject early; decode_control checks bytes.
_KIND = Annotated[str, msgspec.Meta(min_length=1, max_length=KIND_MAX)]
_REASON = Annotated[str, msgspec.Meta(max_length=REASON_MAX)]
_CODE = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
_EXIT = Annotated[int, msgspec.Meta(ge=-(1 << 31), le=(1 << 31) - 1)]

#: A channel parameter value: strings, numbers, booleans, string lists, or nil.
ParamValue: TypeAlias = str | int | float | bool | list[str] | None
#: Parameters of an OPEN, interpreted by the application for the channel kind.
Params: TypeAlias = dict[str, ParamValue]


class ChannelCode(enum.IntEnum):
    """Why a channel was rejected or closed (§14.4)."""

    OK = 0
    UNKNOWN_KIND = 1
    REFUSED = 2
    RESOURCE_LIMIT = 3
    CANCELLED = 4
    APPLICATION_ERROR = 5
    GOING_AWAY = 6
    NOT_FOUND = 7
    CANNOT_EXECUTE = 8
    BAD_PARAMS = 9


class Open(msgspec.Struct, tag=1, array_like=True, forbid_unknown_fields=True, frozen=True):
    """Open channel ``channel`` of ``kind``; ``window`` is the opener's receive window."""

    channel: _U32
    kind: _KIND
    window: _WINDOW
    params: Params = msgspec.field(default_factory=dict)


class Accept(msgspec.Struct, tag=2, array_like=True, forbid_unknown_fields=True, frozen=True):
    """Accept the peer's OPEN; ``window`` is the acceptor's receive window (≥ INITIAL_WINDOW)."""

    channel: _U32
    window: _WINDOW


class Reject(msgspec.Struct, tag=3, array_like=True, forbid_unknown_fields=True, frozen=True):
    """Refuse the peer's OPEN with a code and a short reason."""

    channel: _U32
    code: _CODE
    reason: _REASON = ""


class Window(msgspec.Struct, tag=4, array_like=True, forbid_unknown_fields=True, frozen=True):
    """Grant the peer ``increment`` more bytes of CHANNEL_DATA on ``channel``."""

    channel: _U32
    increment: Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW)]


class Eof(msgspec.Struct, tag=5, array_like=True, forbid_unknown_fields=True, frozen=True):
    """The sender will send no more data on ``channel`` (half-close)."""

    channel: _U32


class Close(msgspec.Struct, tag=6, array_like=True, forbid_unknown_fields=True, frozen=True):
    """End ``channel``: a code, the exit status of what ran on it (if any), a reason."""

    channel: _U32
    code: _CODE = 0
    exit_status: _EXIT | None = None
    reason: _REASON = ""


#: Every channel control message.
ControlMessage: TypeAlias = Open | Accept | Reject | Window | Eof | Close

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[ControlMessage] = msgspec.msgpack.Decoder(ControlMessage)


def encode_control(msg: ControlMessage) -> bytes:
    """Encode a control message as MessagePack."""
    return _encoder.encode(msg)


def decode_control(data: bytes) -> ControlMessage:
    """Decode and validate a control message.

    Raises:
        RemoteProtocolError: not MessagePack, or not a valid message.
    """
    try:
        msg = _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"bad channel control message: {exc}") from exc
    # msgspec bounds strings in characters; the spec bounds them in UTF-8 bytes.
    text = msg.kind if isinstance(msg, Open) else getattr(msg, "reason", "")
    if len(text.encode("utf-8")) > (KIND_MAX if isinstance(msg, Open) else REASON_MAX):
        raise RemoteProtocolError("channel kind or reason too long")
    return msg


def cut_reason(reason: str, limit: int = REASON_MAX) -> str:
    """``reason`` cut to at most ``limit`` bytes of UTF-8, at a character boundary (§14.4)."""
    raw = reason.encode("utf-8")
    if len(raw) <= limit:
        return reason
    return raw[:limit].decode("utf-8", "ignore")


def encode_channel_data(channel: int, data: bytes | memoryview) -> bytes:
    """Encode a CHANNEL_DATA body."""
    return channel.to_bytes(4, "big") + data


def decode_channel_data(body: bytes) -> tuple[int, bytes]:
    """Split a CHANNEL_DATA body into (channel id, data).

    Raises:
        RemoteProtocolError: shorter than the 4-byte channel id.
    """
    if len(body) < CHANNEL_DATA_HEADER_LEN:
        raise RemoteProtocolError("CHANNEL_DATA too short")
    return int.from_bytes(body[:4], "big"), body[4:]
