"""File frames and their messages, and a sans-I/O decoder for them (docs/protocol.md §18.2-§18.4).

The 5-byte header is the one of the stream frames (:mod:`pstp.protocol.streams`,
one codec for both); the types, messages and limits are the file channel's own.
:class:`FrameDecoder` is fed the channel's bytes and hands back whole frames,
judging each header before buffering its payload (§18.2 rule 1).  It does no
I/O: :mod:`pstp.files.engine` reads the channel and feeds it.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import struct
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal

import msgspec

from pstp.exceptions import RemoteProtocolError
from pstp.protocol.streams import FRAME_HEADER_LEN, check_length, decode_header, encode_header

__all__ = [
    "BATCH_BYTES",
    "CHUNK_SIZE",
    "DIGEST_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_CONTROL",
    "MAX_ENTRIES",
    "MAX_ERROR",
    "MAX_LEFT_OUT",
    "MAX_MANIFEST_BYTES",
    "MAX_NAME",
    "MAX_OFFER_DIGESTS",
    "MAX_PATH",
    "MIN_CHUNK_SIZE",
    "NEED_DATA",
    "VERSION",
    "Chunk",
    "Control",
    "Count",
    "Done",
    "EntriesEnd",
    "Entry",
    "Error",
    "FileEnd",
    "FileError",
    "FileOk",
    "FileStart",
    "FrameDecoder",
    "FrameType",
    "Hello",
    "LeftOut",
    "Manifest",
    "ManifestTooLarge",
    "Message",
    "NeedData",
    "Offer",
    "OfferAction",
    "PlanEnd",
    "Summary",
    "Time",
    "batch_frames",
    "chunk_header",
    "encode_message",
    "file_digest",
    "split_path",
    "valid_chunk_size",
]

#: Protocol version carried in HELLO (§18.3).
VERSION = 1
#: Default chunk: large enough that per-chunk costs (a digest, a frame, a thread hop) vanish.
CHUNK_SIZE = 1 << 20
#: Smallest and largest chunk a receiver accepts (HELLO, §18.3).
MIN_CHUNK_SIZE = 1 << 16
MAX_CHUNK_SIZE = 1 << 22
#: Largest control payload; bounds what a receiver buffers before parsing (§18.2 rule 3).
MAX_CONTROL = 1 << 22
#: Most manifest entries one transfer may list (§18.4).
MAX_ENTRIES = 1 << 20
#: Most bytes of ENTRIES payloads one manifest may take, all frames together (§18.4, §18.12):
#: what a receiver holds before it plans is bounded by this, not by MAX_ENTRIES times MAX_PATH.
MAX_MANIFEST_BYTES = 1 << 26
#: Longest entry path and path component, in UTF-8 bytes (§18.4 rule 1).
MAX_PATH = 4096
MAX_NAME = 255
#: Most chunk digests one offer carries (2 MiB of digests, below MAX_CONTROL; §18.5).
MAX_OFFER_DIGESTS = 1 << 16
DIGEST_SIZE = 32
#: Longest error text, in characters (§18.3).
MAX_ERROR = 1000
#: Left-out entries a DONE lists one by one; the rest are only counted (§18.3).
MAX_LEFT_OUT = 1000
#: ENTRIES and PLAN frames are cut at about 256 KiB (§18.3, "Batches").
BATCH_BYTES = 1 << 18

_DIGEST_LABEL = b"PSTP file v1"
_SIZES = struct.Struct(">QI")


class FrameType(enum.IntEnum):
    """Frame types of the ``file`` channel (§18.2)."""

    HELLO = 0x01
    ENTRIES = 0x02
    ENTRIES_END = 0x03
    FILE = 0x04
    CHUNK = 0x05
    FILE_END = 0x06
    FILE_ABORT = 0x07
    DONE = 0x08
    PLAN = 0x11
    PLAN_END = 0x12
    FILE_OK = 0x13
    FILE_FAILED = 0x14
    SUMMARY = 0x15
    ERROR = 0x1F


class OfferAction(enum.IntEnum):
    """What the receiver offers for a manifest entry (§18.5)."""

    SEND = 0
    FAIL = 1
    DIR = 2


#: MessagePack field types of §18.3: count, time, digest, text.
Count = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
_Mode = Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
Time = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
_Digest = Annotated[bytes, msgspec.Meta(min_length=DIGEST_SIZE, max_length=DIGEST_SIZE)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_ERROR)]


class Message(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """Base of the control messages: MessagePack arrays, unknown fields refused (§18.3)."""


class Hello(Message):
    """HELLO: the protocol version and the chunk size of this transfer."""

    version: Count
    chunk_size: Count


class Entry(Message):
    """One manifest entry: a file (``kind="f"``) or a directory (``"d"``)."""

    path: str
    kind: Literal["f", "d"]
    size: Count = 0
    mode: _Mode = 0o644
    mtime_ns: Time = 0


class EntriesEnd(Message):
    """ENTRIES_END: the manifest is complete."""

    count: Count
    total: Count


class FileStart(Message):
    """FILE: data of entry ``index`` follows from ``offset``."""

    index: Count
    offset: Count


class FileEnd(Message):
    """FILE_END: all chunks sent; ``digest`` is the file digest."""

    index: Count
    digest: _Digest


class FileError(Message):
    """FILE_ABORT and FILE_FAILED: entry ``index`` failed, and why."""

    index: Count
    error: _Text


class Offer(Message):
    """One PLAN offer (§18.5)."""

    action: OfferAction
    offset: Count = 0
    digests: list[_Digest] = msgspec.field(default_factory=list)
    have: list[_Digest] | None = None
    replace: bool = False
    error: _Text = ""


class PlanEnd(Message):
    """PLAN_END: every offer was sent; ``need`` bytes will be written at most."""

    need: Count


class FileOk(Message):
    """FILE_OK: entry ``index`` is complete under its final name."""

    index: Count


class Summary(Message):
    """SUMMARY: what the receiver committed."""

    files: Count
    failed: Count
    bytes: Count


class LeftOut(Message):
    """One thing below a source that the sender left out of the manifest, and why."""

    path: _Text
    reason: _Text


class Done(Message):
    """DONE: the sender has no more files; what it left out (§18.3)."""

    left_out: list[LeftOut] = msgspec.field(default_factory=list)
    more: Count = 0


class Error(Message):
    """ERROR: fatal, with a message for people."""

    error: _Text


_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[FrameType, msgspec.msgpack.Decoder[Any]] = {
    FrameType.HELLO: msgspec.msgpack.Decoder(Hello),
    FrameType.ENTRIES: msgspec.msgpack.Decoder(list[Entry]),
    FrameType.ENTRIES_END: msgspec.msgpack.Decoder(EntriesEnd),
    FrameType.FILE: msgspec.msgpack.Decoder(FileStart),
    FrameType.FILE_END: msgspec.msgpack.Decoder(FileEnd),
    FrameType.FILE_ABORT: msgspec.msgpack.Decoder(FileError),
    FrameType.DONE: msgspec.msgpack.Decoder(Done),
    FrameType.PLAN: msgspec.msgpack.Decoder(list[Offer]),
    FrameType.PLAN_END: msgspec.msgpack.Decoder(PlanEnd),
    FrameType.FILE_OK: msgspec.msgpack.Decoder(FileOk),
    FrameType.FILE_FAILED: msgspec.msgpack.Decoder(FileError),
    FrameType.SUMMARY: msgspec.msgpack.Decoder(Summary),
    FrameType.ERROR: msgspec.msgpack.Decoder(Error),
}
_TYPES = {int(t): t for t in FrameType}


def valid_chunk_size(c: int) -> bool:
    """Whether ``c`` is a chunk size HELLO may announce (a power of two, 64 KiB..4 MiB)."""
    return MIN_CHUNK_SIZE <= c <= MAX_CHUNK_SIZE and c & (c - 1) == 0


def encode_message(ftype: FrameType, message: Message) -> bytes:
    """One whole control frame."""
    payload = _ENCODER.encode(message)
    return encode_header(ftype, len(payload)) + payload


def chunk_header(n: int) -> bytes:
    """The header of a CHUNK carrying ``n`` data bytes (and their digest, §18.2 rule 4)."""
    return encode_header(FrameType.CHUNK, n + DIGEST_SIZE)


def _array(ftype: FrameType, encoded: list[bytes]) -> bytes:
    n = len(encoded)
    prefix = (
        bytes([0x90 | n])
        if n < 16
        else b"\xdc" + n.to_bytes(2, "big")
        if n < 1 << 16
        else b"\xdd" + n.to_bytes(4, "big")
    )
    payload = prefix + b"".join(encoded)
    return encode_header(ftype, len(payload)) + payload


def batch_frames(
    ftype: FrameType, items: Sequence[Message], end: tuple[FrameType, Message]
) -> Iterator[bytes]:
    """``items`` as ENTRIES or PLAN frames of about :data:`BATCH_BYTES`, then the ``end``
    frame; yields write-sized runs of whole frames (§18.3, "Batches")."""
    batch: list[bytes] = []
    size = 0
    out = bytearray()
    for item in items:
        encoded = _ENCODER.encode(item)
        batch.append(encoded)
        size += len(encoded)
        if size >= BATCH_BYTES:
            out += _array(ftype, batch)
            batch, size = [], 0
            if len(out) >= BATCH_BYTES:
                yield bytes(out)
                out = bytearray()
    if batch:
        out += _array(ftype, batch)
    out += encode_message(*end)
    yield bytes(out)


def file_digest(size: int, chunk_size: int, digests: Sequence[bytes]) -> bytes:
    """The file digest of §18.7: SHA-256 over a label, the size, the chunk size and the
    chunk digests.

    Args:
        size: the file's size in bytes.
        chunk_size: the transfer's chunk size.
        digests: SHA-256 of each chunk, in order.

    Returns:
        32 bytes.
    """
    h = hashlib.sha256(_DIGEST_LABEL)
    h.update(_SIZES.pack(size, chunk_size))
    for d in digests:
        h.update(d)
    return h.digest()


def split_path(path: str) -> tuple[str, ...]:
    """Check a manifest entry path (§18.4 rule 1) and split it into its components.

    Raises:
        ValueError: empty, absolute, too long, or with an empty, ``.`` or
            ``..`` component or a NUL.
    """
    if not path or path.startswith("/") or "\x00" in path:
        raise ValueError(f"invalid entry path {path[:100]!r}")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise ValueError(f"entry path longer than {MAX_PATH} bytes")
    parts = tuple(path.split("/"))
    for part in parts:
        if part in ("", ".", "..") or len(part.encode("utf-8", "surrogatepass")) > MAX_NAME:
            raise ValueError(f"invalid entry path {path[:100]!r}")
    return parts


def _shown(path: str) -> str:
    """A peer's path for an error message: quoted, and cut if long."""
    return repr(path) if len(path) <= 100 else f"{path[:100]!r}..."


class ManifestTooLarge(Exception):
    """A manifest went past a receiver's limits (entries or bytes, §18.4); the message
    says which.  Not a protocol error: the sender may simply have too much to send."""


class Manifest:
    """A receiver's manifest, checked entry by entry as its ENTRIES frames arrive (§18.4).

    Every rule of §18.4 that one entry can break is judged when its frame is
    decoded, and the manifest's size is capped, so a bad or oversized manifest
    fails at once, before ENTRIES_END, instead of being held whole until the
    plan is made.  What is kept per entry is the :class:`Entry` itself (paths
    are remembered by the entry's own string).

    Args:
        max_entries: the most entries (§18.4: :data:`MAX_ENTRIES`).
        max_bytes: the most ENTRIES payload bytes, all frames together
            (:data:`MAX_MANIFEST_BYTES`).
    """

    def __init__(
        self, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_MANIFEST_BYTES
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: list[Entry] = []
        #: The sum of the entries' sizes, the payload bytes taken, and the tops listed.
        self.total = 0
        self.bytes = 0
        self.tops = 0
        self.ended = False
        self._seen: set[str] = set()
        self._dirs: set[str] = set()

    def add(self, entries: Sequence[Entry], nbytes: int) -> None:
        """Check and keep one ENTRIES frame's entries.

        Args:
            entries: the frame's entries, in order.
            nbytes: the frame's payload length.

        Raises:
            ManifestTooLarge: past ``max_bytes`` or ``max_entries``.
            RemoteProtocolError: an entry breaks a rule of §18.4 (its path, a
                duplicate, a parent not listed before it, a sized directory), or
                the manifest had ended.
        """
        if self.ended:
            raise RemoteProtocolError("ENTRIES after ENTRIES_END")
        self.bytes += nbytes
        if self.bytes > self.max_bytes:
            raise ManifestTooLarge(
                f"manifest larger than {self.max_bytes} bytes; send the tree in several transfers"
            )
        for entry in entries:
            if len(self.entries) >= self.max_entries:
                raise ManifestTooLarge(f"more than {self.max_entries} entries in one transfer")
            self._check(entry)
            self.entries.append(entry)
            self.total += entry.size

    def _check(self, entry: Entry) -> None:
        path = entry.path
        try:
            split_path(path)
        except ValueError as exc:
            raise RemoteProtocolError(str(exc)) from None
        if path in self._seen:
            raise RemoteProtocolError(f"entry {_shown(path)} listed twice")
        parent, slash, _ = path.rpartition("/")
        if not slash:
            self.tops += 1
        elif parent not in self._dirs:
            raise RemoteProtocolError(f"entry {_shown(path)} comes before its directory")
        if entry.kind == "d":
            if entry.size:
                raise RemoteProtocolError(f"directory {_shown(path)} with a size")
            self._dirs.add(path)
        self._seen.add(path)

    def end(self, message: EntriesEnd) -> list[Entry]:
        """ENTRIES_END arrived: check it against what was listed (§18.4 rule 5).

        Returns:
            The entries, in order.  The sets used to check them are released.

        Raises:
            RemoteProtocolError: its count or total does not match, or it came twice.
        """
        if self.ended:
            raise RemoteProtocolError("ENTRIES_END twice")
        if message.count != len(self.entries) or message.total != self.total:
            raise RemoteProtocolError("ENTRIES_END does not match the manifest")
        self.ended = True
        self._seen.clear()
        self._dirs.clear()
        return self.entries


class NeedData(enum.Enum):
    """What :meth:`FrameDecoder.next_frame` returns when it needs more bytes."""

    NEED_DATA = "need data"


#: Returned by :meth:`FrameDecoder.next_frame` until a whole frame is buffered.
NEED_DATA = NeedData.NEED_DATA


class Control(msgspec.Struct, frozen=True):
    """A control frame, decoded.

    Attributes:
        type: the frame type (never CHUNK).
        message: the decoded payload: the :class:`Message` the type calls for
            (a list of them for ENTRIES and PLAN).
        length: the payload's length in bytes, as the header gave it.
    """

    type: FrameType
    message: Any
    length: int = 0


class Chunk(msgspec.Struct, frozen=True):
    """A CHUNK frame.

    Attributes:
        data: the chunk's data, as the pieces it arrived in (not copied).
        digest: the SHA-256 the sender computed over it (not checked here).
        offset: where the data starts in the file.
    """

    data: list[memoryview]
    digest: bytes
    offset: int

    @property
    def size(self) -> int:
        """Bytes of data."""
        return sum(len(p) for p in self.data)


class FrameDecoder:
    """Sans-I/O parser of file frames: :meth:`feed` bytes, take frames from :meth:`next_frame`.

    Inside a file (between :meth:`start_file` and :meth:`end_file`) a CHUNK's
    length is judged from its header against the file's size and the position
    reached (§18.2 rule 4); outside one a CHUNK is an error.  Control payloads
    are at most :data:`MAX_CONTROL` bytes.  After an error the decoder stays
    failed: every later call raises again.
    """

    def __init__(self) -> None:
        self._pieces: collections.deque[memoryview] = collections.deque()
        self._size = 0
        self._eof = False
        self._head: tuple[FrameType, int] | None = None
        self._failed: RemoteProtocolError | None = None
        self._file: tuple[int, int] | None = None  # (size, chunk_size) inside a file
        self._pos = 0

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole frame."""
        return self._size

    @property
    def in_file(self) -> bool:
        """True between :meth:`start_file` and :meth:`end_file`."""
        return self._file is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes (kept by reference: do not change them afterwards).

        Raises:
            RemoteProtocolError: the decoder failed earlier.
        """
        self._check()
        if self._eof:
            raise RemoteProtocolError("file frames fed after the end of the stream")
        if data:
            self._pieces.append(memoryview(data).cast("B"))
            self._size += len(data)

    def eof(self) -> None:
        """The stream ended; :meth:`next_frame` then returns None at a frame boundary."""
        self._eof = True

    def start_file(self, size: int, offset: int, chunk_size: int) -> None:
        """CHUNKs of a file of ``size`` bytes follow, from ``offset`` (a FILE was accepted)."""
        self._file = (size, chunk_size)
        self._pos = offset

    def end_file(self) -> None:
        """The file ended (FILE_END, FILE_ABORT or ERROR): a CHUNK is an error again."""
        self._file = None

    @property
    def position(self) -> int:
        """Inside a file, where the next CHUNK starts."""
        return self._pos

    def next_frame(self) -> Control | Chunk | NeedData | None:
        """The next whole frame, :data:`NEED_DATA`, or None at a clean end of the stream.

        Raises:
            FrameTooLarge: a control frame longer than :data:`MAX_CONTROL`.
            RemoteProtocolError: an unknown type, a CHUNK outside a file or of the
                wrong length, a malformed message, or the stream ending inside a frame.
        """
        self._check()
        try:
            return self._next()
        except RemoteProtocolError as exc:
            self._failed = exc
            self._pieces.clear()
            self._size = 0
            raise

    def _check(self) -> None:
        if self._failed is not None:
            raise RemoteProtocolError("file frame decoder failed earlier") from self._failed

    def _next(self) -> Control | Chunk | NeedData | None:
        if self._head is None:
            if self._size < FRAME_HEADER_LEN:
                if not self._eof:
                    return NEED_DATA
                if self._size:
                    raise RemoteProtocolError("file stream ended inside a frame")
                return None
            self._head = self._judge(self._peek(FRAME_HEADER_LEN))
        ftype, length = self._head
        if self._size < FRAME_HEADER_LEN + length:
            if self._eof:
                raise RemoteProtocolError("file stream ended inside a frame")
            return NEED_DATA
        self._head = None
        self._take(FRAME_HEADER_LEN)
        if ftype is FrameType.CHUNK:
            n = length - DIGEST_SIZE
            data = self._take(n)
            digest = b"".join(self._take(DIGEST_SIZE))
            chunk = Chunk(data, digest, self._pos)
            self._pos += n
            return chunk
        payload = b"".join(self._take(length))
        try:
            return Control(ftype, _DECODERS[ftype].decode(payload), length)
        except msgspec.DecodeError as exc:
            raise RemoteProtocolError(f"malformed {ftype.name} frame") from exc

    def _judge(self, header: bytes) -> tuple[FrameType, int]:
        """Type and length from the header alone, before any payload (§18.2 rules 1-4)."""
        head = decode_header(header)
        assert head is not None
        raw, length = head
        ftype = _TYPES.get(raw)
        if ftype is None:
            raise RemoteProtocolError(f"unknown file frame type {raw:#04x}")
        if ftype is not FrameType.CHUNK:
            check_length(length, MAX_CONTROL, "file frame")
            return ftype, length
        if self._file is None:
            raise RemoteProtocolError("CHUNK outside a file")
        size, c = self._file
        n = length - DIGEST_SIZE
        if n != min(c, size - self._pos) or n <= 0:
            raise RemoteProtocolError(f"CHUNK of {n} bytes at {self._pos} of {size}")
        return ftype, length

    def _peek(self, n: int) -> bytes:
        out = bytearray()
        for piece in self._pieces:
            out += piece[: n - len(out)]
            if len(out) == n:
                break
        return bytes(out)

    def _take(self, n: int) -> list[memoryview]:
        """The next ``n`` buffered bytes as the pieces they arrived in (no copy)."""
        out: list[memoryview] = []
        self._size -= n
        while n:
            piece = self._pieces[0]
            if len(piece) <= n:
                out.append(self._pieces.popleft())
                n -= len(piece)
            else:
                out.append(piece[:n])
                self._pieces[0] = piece[n:]
                n = 0
        return out
