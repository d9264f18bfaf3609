"""Stream frames of the exec, shell and action channels (docs/protocol.md §17).

``type u8 | length u32 big-endian | payload``.  Client to server: 0x00 STDIN,
0x01 RESIZE (``rows u16 | cols u16``), 0x02 SIGNAL (one byte indexing
:data:`SIGNALS`).  Server to client: 0x00 STDOUT, 0x01 STDERR.  A payload is
at most 1 MiB, checked from the header before the payload is buffered.

Shared by the daemon (:mod:`pstp.daemon.exec`) and the client
(:mod:`pstp.client.remote`); sans-I/O.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Collection

import msgspec

from pstp.exceptions import FrameTooLarge, RemoteProtocolError
from pstp.wire.messages import ChannelCode

__all__ = [
    "ACTION_FAILED",
    "BAD_FRAME",
    "BAD_PARAMS",
    "CANNOT_EXECUTE",
    "EXIT_REMOTE_FAILURE",
    "FRAME_HEADER_LEN",
    "MAX_FRAME",
    "NOT_FOUND",
    "NO_SUCH_ACTION",
    "RESIZE",
    "SIGNAL",
    "SIGNALS",
    "STDERR",
    "STDIN",
    "STDOUT",
    "Direction",
    "Frame",
    "FrameDecoder",
    "check_length",
    "decode_header",
    "decode_resize",
    "decode_signal",
    "encode_frame",
    "encode_header",
    "encode_resize",
    "encode_signal",
    "failure_status",
]

#: Client → server frame types.
STDIN, RESIZE, SIGNAL = 0x00, 0x01, 0x02
#: Server → client frame types.
STDOUT, STDERR = 0x00, 0x01
#: Largest payload a frame may carry.
MAX_FRAME = 1 << 20
#: ``type u8 | length u32``.
FRAME_HEADER_LEN = 5
_HEADER = struct.Struct(">BI")
_RESIZE = struct.Struct(">HH")
#: SIGNAL frame payload index → signal name (without the ``SIG`` prefix).
SIGNALS: tuple[str, ...] = ("INT", "TERM", "HUP", "KILL", "QUIT", "USR1", "USR2", "WINCH")

#: CLOSE reasons when nothing could be run (§17.3).  The code says why; the
#: text is for people.  Devices before the codes of §14.4 sent APPLICATION_ERROR
#: with one of these prefixes, which :func:`failure_status` still reads (§17.3).
NOT_FOUND = "command not found"
NO_SUCH_ACTION = "no such action"
CANNOT_EXECUTE = "cannot execute"
BAD_PARAMS = "bad params"
BAD_FRAME = "bad stream frame"
ACTION_FAILED = "action failed"
#: Status reported when the remote side failed without one (as ssh does).
EXIT_REMOTE_FAILURE = 255
#: The one table from a channel's failure code to a shell's status (§17.3, §17.9).
_STATUS_FOR_CODE: dict[int, int] = {
    ChannelCode.NOT_FOUND: 127,
    ChannelCode.CANNOT_EXECUTE: 126,
    ChannelCode.BAD_PARAMS: EXIT_REMOTE_FAILURE,
    ChannelCode.APPLICATION_ERROR: EXIT_REMOTE_FAILURE,
}
#: Reason prefixes of APPLICATION_ERROR from devices that predate the codes (§17.3).
_LEGACY_PREFIXES = ((NOT_FOUND, 127), (NO_SUCH_ACTION, 127), (CANNOT_EXECUTE, 126))


def failure_status(code: int, reason: str = "") -> int | None:
    """The shell-style status a failed ``action``/``exec``/``shell`` channel stands for.

    Args:
        code: the ChannelCode of the CLOSE or REJECT (docs/protocol.md §14.4).
        reason: its reason; read only for APPLICATION_ERROR from an older device.

    Returns:
        127, 126 or 255 for a failure of the remote side (§17.3); ``None`` for any
        other code (a refusal, a cancellation...), which the caller reports itself.
    """
    status = _STATUS_FOR_CODE.get(code)
    if code == ChannelCode.APPLICATION_ERROR:
        for prefix, legacy in _LEGACY_PREFIXES:
            if reason.startswith(prefix):
                return legacy
    return status


class Direction(enum.Enum):
    """Which way frames travel (the frame types differ)."""

    TO_SERVER = "to_server"
    TO_CLIENT = "to_client"


class Frame(msgspec.Struct, frozen=True):
    """One stream frame.

    Attributes:
        type: the frame type (its meaning depends on the direction).
        payload: the frame's bytes.
    """

    type: int
    payload: bytes


def encode_header(frame_type: int, length: int) -> bytes:
    """The ``type u8 | length u32`` header, shared by the stream frames and the file
    frames (docs/protocol.md §17.2, §18.2)."""
    return _HEADER.pack(frame_type, length)


def decode_header(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """``(type, length)`` from the first 5 bytes of ``data``; None if it is shorter."""
    if len(data) < FRAME_HEADER_LEN:
        return None
    frame_type, length = _HEADER.unpack_from(data)
    return int(frame_type), int(length)


def check_length(length: int, limit: int, what: str = "stream frame") -> None:
    """Judge a header's length before buffering the payload (docs/protocol.md §17.2, §18.2).

    Raises:
        FrameTooLarge: ``length`` exceeds ``limit``.
    """
    if length > limit:
        raise FrameTooLarge(f"{what} of {length} bytes (max {limit})")


def encode_frame(frame_type: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Serialize one frame.

    Raises:
        ValueError: the type is not a byte or the payload is longer than 1 MiB.
    """
    if not 0 <= frame_type <= 0xFF:
        raise ValueError(f"frame type {frame_type} is not a byte")
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_FRAME}")
    return encode_header(frame_type, len(payload)) + bytes(payload)


def encode_resize(rows: int, cols: int) -> bytes:
    """A whole RESIZE frame.

    Raises:
        ValueError: rows or cols is not in 0..65535.
    """
    if not (0 <= rows <= 0xFFFF and 0 <= cols <= 0xFFFF):
        raise ValueError(f"window size {rows}x{cols} out of range")
    return encode_frame(RESIZE, _RESIZE.pack(rows, cols))


def encode_signal(name: str) -> bytes:
    """A whole SIGNAL frame for ``name`` (e.g. ``"TERM"`` or ``"SIGTERM"``).

    Raises:
        ValueError: the signal is not in :data:`SIGNALS`.
    """
    name = name.upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise ValueError(f"signal {name!r} cannot be sent (one of {', '.join(SIGNALS)})")
    return encode_frame(SIGNAL, bytes([SIGNALS.index(name)]))


def decode_resize(payload: bytes) -> tuple[int, int]:
    """``(rows, cols)`` from a RESIZE payload.

    Raises:
        RemoteProtocolError: not exactly 4 bytes.
    """
    if len(payload) != _RESIZE.size:
        raise RemoteProtocolError(f"RESIZE payload must be 4 bytes, not {len(payload)}")
    rows, cols = _RESIZE.unpack(payload)
    return int(rows), int(cols)


def decode_signal(payload: bytes) -> str:
    """The signal name a SIGNAL payload stands for.

    Raises:
        RemoteProtocolError: not exactly 1 byte, or no such table entry.
    """
    if len(payload) != 1 or payload[0] >= len(SIGNALS):
        raise RemoteProtocolError("SIGNAL payload must be 1 byte naming a table entry")
    return SIGNALS[payload[0]]


class FrameDecoder:
    """Sans-I/O parser for stream frames: feed bytes, get whole frames.

    Args:
        direction: which way the frames travel; decides the legal types, and
            whether RESIZE and SIGNAL payloads are checked.
        max_payload: the largest payload accepted.

    After an error the decoder stays failed: every later call raises again.
    """

    def __init__(self, direction: Direction = Direction.TO_SERVER, max_payload: int = MAX_FRAME):
        self.direction = direction
        self.max_payload = max_payload
        self._types: Collection[int] = (
            (STDIN, RESIZE, SIGNAL) if direction is Direction.TO_SERVER else (STDOUT, STDERR)
        )
        self._buf = bytearray()
        self._failed: RemoteProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add received bytes; return every frame they complete, in order.

        Raises:
            FrameTooLarge: a header announced more than ``max_payload`` bytes.
            RemoteProtocolError: an unknown type or a malformed RESIZE/SIGNAL.
        """
        if self._failed is not None:
            raise RemoteProtocolError("stream frame decoder failed earlier") from self._failed
        self._buf += data
        frames: list[Frame] = []
        try:
            while (header := decode_header(self._buf)) is not None:
                frame_type, length = header
                # Judge the header before waiting for (and buffering) the payload.
                if frame_type not in self._types:
                    raise RemoteProtocolError(f"unknown stream frame type {frame_type:#04x}")
                check_length(length, self.max_payload)
                end = FRAME_HEADER_LEN + length
                if len(self._buf) < end:
                    break
                frame = Frame(frame_type, bytes(self._buf[FRAME_HEADER_LEN:end]))
                del self._buf[:end]
                if self.direction is Direction.TO_SERVER:
                    if frame_type == RESIZE:
                        decode_resize(frame.payload)
                    elif frame_type == SIGNAL:
                        decode_signal(frame.payload)
                frames.append(frame)
        except RemoteProtocolError as exc:
            self._failed = exc
            self._buf.clear()
            raise
        return frames

    def eof(self) -> None:
        """The stream ended; check that it did not end inside a frame.

        Raises:
            RemoteProtocolError: bytes of an incomplete frame remain, or the
                decoder failed earlier.
        """
        if self._failed is not None:
            raise RemoteProtocolError("stream frame decoder failed earlier") from self._failed
        if self._buf:
            self._failed = RemoteProtocolError(f"stream ended inside a frame ({self.pending} B)")
            raise self._failed
