"""The file-transfer engine shared by the daemon and the client (docs/protocol.md §18).

Frames, messages, the sender and the receiver, ``.part`` files and their
sidecars, digests and disk-space checks: everything both ends of a ``file``
channel run.  :mod:`pstp.daemon.files` adds confinement to the peer's roots
and policy; :mod:`pstp.client.files` adds ``put``/``get`` and progress.  The
protocol itself is described in :mod:`pstp.daemon.files`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
import fcntl
import functools
import hashlib
import hmac
import os
import stat
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from pstp.asyncio.connection import Channel
from pstp.exceptions import ChannelError, ConnectionClosed, RemoteProtocolError, TransferFailed

__all__ = [
    "CHUNK_SIZE",
    "DIGEST_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_CONTROL",
    "MAX_ENTRIES",
    "MAX_ERROR",
    "MAX_LEFT_OUT",
    "MAX_NAME",
    "MAX_OFFER_DIGESTS",
    "MAX_PATH",
    "MIN_CHUNK_SIZE",
    "VERSION",
    "Done",
    "EntriesEnd",
    "Entry",
    "Error",
    "FileEnd",
    "FileError",
    "FileOk",
    "FileStart",
    "FrameType",
    "Hello",
    "LeftOut",
    "Offer",
    "OfferAction",
    "PlanEnd",
    "Progress",
    "ProgressCallback",
    "Summary",
    "TransferResult",
    "file_digest",
    "part_names",
    "split_path",
]

#: Protocol version carried in HELLO.
VERSION = 1
#: Default chunk: large enough that per-chunk costs (a digest, a frame, a thread hop) vanish.
CHUNK_SIZE = 1 << 20
#: Smallest and largest chunk a receiver accepts (HELLO).
MIN_CHUNK_SIZE = 1 << 16
MAX_CHUNK_SIZE = 1 << 22
#: Largest control payload; bounds what a receiver buffers before parsing.
MAX_CONTROL = 1 << 22
#: Most manifest entries one transfer may list.
MAX_ENTRIES = 1 << 20
#: Longest entry path and path component, in UTF-8 bytes.
MAX_PATH = 4096
MAX_NAME = 255
#: Most chunk digests one offer carries (2 MiB of digests, below MAX_CONTROL).
MAX_OFFER_DIGESTS = 1 << 16
DIGEST_SIZE = 32
MAX_ERROR = 1000

_HEADER = struct.Struct(">BI")
_HEADER_SIZE = _HEADER.size
_BATCH_BYTES = 1 << 18  # ENTRIES and PLAN frames are cut at about 256 KiB
_PACED_SLICE = 1 << 16  # with a rate limit, chunks go out in 64 KiB writes
_MAX_IOV = 512
_DIR_CACHE_SIZE = 32
_PART_SUFFIX = ".pstp-part"
_META_SUFFIX = ".pstp-meta"
_META_MAGIC = b"PSTPMETA"
_META_LEN = struct.Struct(">H")
#: Seconds to wait for the lock of a part that another transfer, perhaps ending, holds.
_LOCK_WAIT = 5.0
#: The most of a sidecar worth reading: magic, header, and MAX_OFFER_DIGESTS digests.
_META_READ_MAX = len(_META_MAGIC) + _META_LEN.size + 0xFFFF + MAX_OFFER_DIGESTS * 32
_DIGEST_LABEL = b"PSTP file v1"
_SIZES = struct.Struct(">QI")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_PART_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC

_T = TypeVar("_T")


class FrameType(enum.IntEnum):
    """Frame types of the ``file`` channel (module docstring)."""

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
    """What the receiver offers for a manifest entry."""

    SEND = 0
    FAIL = 1
    DIR = 2


_Count = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
_Mode = Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
_Time = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
_Digest = Annotated[bytes, msgspec.Meta(min_length=DIGEST_SIZE, max_length=DIGEST_SIZE)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_ERROR)]
#: Left-out entries a DONE lists one by one; the rest are only counted.
MAX_LEFT_OUT = 1000


#: The offer a sender never accepts for an entry kind (a file is not a DIR, and so on).
_WRONG_ACTION = {"f": OfferAction.DIR, "d": OfferAction.SEND}


class _Message(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """Base of the control messages: MessagePack arrays, unknown fields refused."""


class Hello(_Message):
    """HELLO: the protocol version and the chunk size of this transfer."""

    version: _Count
    chunk_size: _Count


class Entry(_Message):
    """One manifest entry: a file (``kind="f"``) or a directory (``"d"``)."""

    path: str
    kind: Literal["f", "d"]
    size: _Count = 0
    mode: _Mode = 0o644
    mtime_ns: _Time = 0


class EntriesEnd(_Message):
    """ENTRIES_END: the manifest is complete."""

    count: _Count
    total: _Count


class FileStart(_Message):
    """FILE: data of entry ``index`` follows from ``offset``."""

    index: _Count
    offset: _Count


class FileEnd(_Message):
    """FILE_END: all chunks sent; ``digest`` is the file digest."""

    index: _Count
    digest: _Digest


class FileError(_Message):
    """FILE_ABORT and FILE_FAILED: entry ``index`` failed, and why."""

    index: _Count
    error: _Text


class Offer(_Message):
    """One PLAN offer (module docstring, "Offers")."""

    action: OfferAction
    offset: _Count = 0
    digests: list[_Digest] = msgspec.field(default_factory=list)
    have: list[_Digest] | None = None
    replace: bool = False
    error: _Text = ""


class PlanEnd(_Message):
    """PLAN_END: every offer was sent; ``need`` bytes will be written at most."""

    need: _Count


class FileOk(_Message):
    """FILE_OK: entry ``index`` is complete under its final name."""

    index: _Count


class Summary(_Message):
    """SUMMARY: what the receiver committed."""

    files: _Count
    failed: _Count
    bytes: _Count


class LeftOut(_Message):
    """One thing below a source that the sender left out of the manifest, and why."""

    path: _Text
    reason: _Text


class Done(_Message):
    """DONE: the sender has no more files; what it left out (at most
    :data:`MAX_LEFT_OUT` listed, ``more`` not listed) so the receiver can tell
    its user."""

    left_out: list[LeftOut] = msgspec.field(default_factory=list)
    more: _Count = 0


class Error(_Message):
    """ERROR: fatal, with a message for people."""

    error: _Text


class _PartMeta(_Message):
    """The sidecar header of a ``.part`` file."""

    size: _Count
    mtime_ns: _Time
    chunk_size: _Count
    boot: str


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
_META_DECODER = msgspec.msgpack.Decoder(_PartMeta)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a transfer stands, passed to progress callbacks after each chunk.

    Attributes:
        path: the entry being transferred (as the sender lists it).
        file_bytes: bytes of that file already in place (resumed or received).
        file_size: its size.
        done_bytes: bytes of all files in place, skipped or resumed included.
        total_bytes: bytes of all files listed so far.
    """

    path: str
    file_bytes: int
    file_size: int
    done_bytes: int
    total_bytes: int


#: Receives a :class:`Progress` after each chunk (on the event loop: keep it quick).
ProgressCallback = Callable[[Progress], object]


@dataclass
class TransferResult:
    """What one side of a transfer saw.

    Attributes:
        files: files committed under their final names.
        dirs: directories listed (and created or present on the receiver).
        skipped: files the receiver already had with the same digests.
        failed: ``(path, error)`` of entries that did not go through.
        bytes_total: bytes of all files listed.
        bytes_sent: chunk data bytes that crossed the channel.
        bytes_resumed: bytes not sent again thanks to a ``.part`` on the receiver.
        bytes_skipped: bytes of skipped files.
    """

    files: int = 0
    dirs: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes_total: int = 0
    bytes_sent: int = 0
    bytes_resumed: int = 0
    bytes_skipped: int = 0

    def add(self, other: TransferResult) -> None:
        """Add ``other``'s counts to this one."""
        self.files += other.files
        self.dirs += other.dirs
        self.skipped += other.skipped
        self.failed += other.failed
        self.bytes_total += other.bytes_total
        self.bytes_sent += other.bytes_sent
        self.bytes_resumed += other.bytes_resumed
        self.bytes_skipped += other.bytes_skipped


class _Refused(Exception):
    """One entry cannot be transferred (the message says why); others go on."""


class _Fatal(Exception):
    """The transfer cannot go on; the message goes to the peer in ERROR."""


def file_digest(size: int, chunk_size: int, digests: Sequence[bytes]) -> bytes:
    """The file digest: SHA-256 over a label, the size, the chunk size and the chunk digests.

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
    """Check a manifest entry path and split it into its components.

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


def part_names(name: str) -> tuple[str, str]:
    """The ``.part`` file and sidecar names for final name ``name``, in the same directory."""
    base = f".{name}"
    if len((base + _META_SUFFIX).encode("utf-8", "surrogateescape")) > MAX_NAME:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        base = f".pstp-{digest}"
    return base + _PART_SUFFIX, base + _META_SUFFIX


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _free_space(fd: int) -> int:
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pread_into(fd: int, view: memoryview, pos: int) -> int:
    """Fill ``view`` from ``fd`` at ``pos``; fewer bytes only at end of file."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], pos + done)
        if n == 0:
            break
        done += n
    return done


def _pwrite_all(fd: int, pieces: Sequence[memoryview], pos: int) -> None:
    iov = list(pieces)
    while iov:
        n = os.pwritev(fd, iov[:_MAX_IOV], pos)
        pos += n
        while n and iov:
            if n >= len(iov[0]):
                n -= len(iov[0])
                iov.pop(0)
            else:
                iov[0] = iov[0][n:]
                n = 0


def _store_chunk(fd: int, pieces: Sequence[memoryview], pos: int) -> bytes:
    """Hash one received chunk and write it at ``pos`` (runs in a worker thread).

    The chunk's writeback starts at once (``POSIX_FADV_DONTNEED`` on dirty pages
    starts it and drops nothing), so the disk works during the transfer instead
    of all at the final fsync.
    """
    h = hashlib.sha256()
    n = 0
    for piece in pieces:
        h.update(piece)
        n += len(piece)
    _pwrite_all(fd, pieces, pos)
    with contextlib.suppress(OSError, AttributeError):  # advice only
        os.posix_fadvise(fd, pos, n, os.POSIX_FADV_DONTNEED)
    return h.digest()


def _hash_chunks(fd: int, size: int, chunk_size: int, count: int) -> list[bytes]:
    """SHA-256 of the first ``count`` chunks of an open file (fewer if it is shorter)."""
    buf = memoryview(bytearray(min(chunk_size, max(size, 1))))
    out: list[bytes] = []
    for i in range(count):
        pos = i * chunk_size
        n = min(chunk_size, size - pos)
        if n <= 0 or _pread_into(fd, buf[:n], pos) < n:
            break
        out.append(hashlib.sha256(buf[:n]).digest())
    return out


def _read_meta(dir_fd: int, name: str) -> tuple[_PartMeta, list[bytes]] | None:
    """A sidecar's header and whole digests, or None if missing or unreadable."""
    try:
        # O_NONBLOCK: a FIFO planted under the sidecar's name must not block us.
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = b""
        # Only the first MAX_OFFER_DIGESTS digests are ever used: read no further.
        while len(data) < _META_READ_MAX and (chunk := os.read(fd, 1 << 20)):
            data += chunk
    finally:
        os.close(fd)
    if not data.startswith(_META_MAGIC) or len(data) < len(_META_MAGIC) + _META_LEN.size:
        return None
    (hlen,) = _META_LEN.unpack_from(data, len(_META_MAGIC))
    start = len(_META_MAGIC) + _META_LEN.size
    try:
        meta = _META_DECODER.decode(data[start : start + hlen])
    except msgspec.DecodeError:
        return None
    body = data[start + hlen :]
    digests = [body[i : i + DIGEST_SIZE] for i in range(0, len(body) - DIGEST_SIZE + 1, 32)]
    return meta, digests


def _meta_bytes(meta: _PartMeta, digests: Sequence[bytes]) -> bytes:
    head = _ENCODER.encode(meta)
    return _META_MAGIC + _META_LEN.pack(len(head)) + head + b"".join(digests)


def _remove_stale(dir_fd: int, part: str, meta_name: str, wait: float = _LOCK_WAIT) -> None:
    """Remove a stale part and its sidecar, unless a transfer is writing the part.

    Runs in a worker thread (planning): like :func:`_lock`, it waits a little
    for a transfer that is ending (an interrupted one run again at once).

    Raises:
        _Refused: another transfer still holds the part's lock (it is not stale).
    """
    try:
        fd = os.open(part, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        _unlink_quietly(dir_fd, meta_name)
        return
    except OSError:  # a symlink (ELOOP) or worse under the part's name: not ours
        _unlink_quietly(dir_fd, part, meta_name)
        return
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise _Refused("another transfer is writing this file") from None
                time.sleep(0.02)
        _unlink_quietly(dir_fd, part, meta_name)
    finally:
        os.close(fd)


def _unlink_quietly(dir_fd: int, *names: str) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


async def _settle(fut: asyncio.Future[_T]) -> None:
    """Wait for a worker-thread job even if we are being cancelled (it uses our fds)."""
    while not fut.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([fut])
    if not fut.cancelled():
        fut.exception()  # retrieved: the caller reports errors its own way


async def _in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """Run ``fn`` in a worker thread; if cancelled, still wait for it to finish."""
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await _settle(fut)
        raise


async def _lock(fd: int, wait: float = _LOCK_WAIT) -> None:
    """Lock a ``.part`` for writing, waiting a little for a transfer that is ending.

    Raises:
        _Refused: another transfer still holds it.
    """
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if asyncio.get_running_loop().time() > deadline:
                raise _Refused("another transfer is writing this file") from None
            await asyncio.sleep(0.02)


class _Pacer:
    """Keeps a byte rate (``limit`` bytes per second) by sleeping."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit if limit and limit > 0 else None
        self._start: float | None = None
        self._bytes = 0

    async def spend(self, n: int) -> None:
        if self.limit is None:
            return
        now = asyncio.get_running_loop().time()
        if self._start is None:
            self._start = now
        self._bytes += n
        ahead = self._bytes / self.limit - (now - self._start)
        if ahead > 0:
            await asyncio.sleep(ahead)


class _Frames:
    """Reads and writes frames on a channel (module docstring, "Frames")."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._rest = memoryview(b"")

    async def _fill(self) -> bool:
        data = await self.channel.read()
        if not data:
            return False
        self._rest = memoryview(data)
        return True

    async def exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes.

        Raises:
            RemoteProtocolError: the stream ended first.
        """
        if len(self._rest) >= n:
            out = self._rest[:n].tobytes()
            self._rest = self._rest[n:]
            return out
        return b"".join(await self.take(n))

    async def take(self, n: int) -> list[memoryview]:
        """The next ``n`` bytes as the pieces they arrived in (no copy).

        Raises:
            RemoteProtocolError: the stream ended first.
        """
        pieces = []
        while n:
            if not self._rest and not await self._fill():
                raise RemoteProtocolError("file stream ended inside a frame")
            take = self._rest[:n]
            pieces.append(take)
            self._rest = self._rest[len(take) :]
            n -= len(take)
        return pieces

    async def header(self) -> tuple[FrameType, int] | None:
        """The next frame's type and length; None at a clean end of the stream.

        Raises:
            RemoteProtocolError: unknown type, or a truncated header.
        """
        if not self._rest and not await self._fill():
            return None
        ftype, length = _HEADER.unpack(await self.exact(_HEADER_SIZE))
        try:
            return FrameType(ftype), length
        except ValueError:
            raise RemoteProtocolError(f"unknown file frame type {ftype:#04x}") from None

    async def control(self, ftype: FrameType, length: int) -> Any:
        """Read and decode the payload of a control frame.

        Raises:
            RemoteProtocolError: too long, or not the message the type calls for.
        """
        if length > MAX_CONTROL:
            raise RemoteProtocolError(f"file frame of {length} bytes (max {MAX_CONTROL})")
        payload = await self.exact(length)
        try:
            return _DECODERS[ftype].decode(payload)
        except (msgspec.DecodeError, KeyError) as exc:
            raise RemoteProtocolError(f"malformed {ftype.name} frame") from exc

    async def next(self) -> tuple[FrameType, Any] | None:
        """The next control frame, decoded; None at a clean end of the stream.

        Raises:
            RemoteProtocolError: a malformed frame, or a CHUNK.
        """
        head = await self.header()
        if head is None:
            return None
        ftype, length = head
        if ftype is FrameType.CHUNK:
            raise RemoteProtocolError("CHUNK outside a file")
        return ftype, await self.control(ftype, length)

    async def send(self, ftype: FrameType, message: _Message) -> None:
        """Send one control frame."""
        payload = _ENCODER.encode(message)
        await self.channel.write(_HEADER.pack(ftype, len(payload)) + payload)

    async def send_batches(
        self, ftype: FrameType, items: Sequence[_Message], end: tuple[FrameType, _Message]
    ) -> None:
        """Send ``items`` as arrays in frames of about 256 KiB, then the ``end`` frame."""
        batch: list[bytes] = []
        size = 0
        out = bytearray()
        for item in items:
            encoded = _ENCODER.encode(item)
            batch.append(encoded)
            size += len(encoded)
            if size >= _BATCH_BYTES:
                out += self._array(ftype, batch)
                batch, size = [], 0
                if len(out) >= _BATCH_BYTES:
                    await self.channel.write(out)
                    out = bytearray()
        if batch:
            out += self._array(ftype, batch)
        payload = _ENCODER.encode(end[1])
        out += _HEADER.pack(end[0], len(payload)) + payload
        await self.channel.write(out)

    @staticmethod
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
        return _HEADER.pack(ftype, len(payload)) + payload

    async def fail(self, message: str) -> None:
        """Send ERROR (best effort: the channel may be gone already)."""
        with contextlib.suppress(ChannelError, ConnectionClosed):
            await self.send(FrameType.ERROR, Error(message[:MAX_ERROR]))


class _Dirs:
    """Directory descriptors below a base directory, opened with ``O_NOFOLLOW`` (an LRU).

    A descriptor returned by :meth:`get` stays valid only until the next
    call; ``os.dup`` it to keep it.
    """

    def __init__(self, base_fd: int) -> None:
        self.base = base_fd
        self._open: collections.OrderedDict[tuple[str, ...], int] = collections.OrderedDict()

    def get(self, parts: tuple[str, ...], *, create_mode: int | None = None) -> int:
        """The directory at ``parts`` (created with ``create_mode`` if given and missing).

        Raises:
            _Refused: a component is a symlink or not a directory, or is missing.
        """
        if not parts:
            return self.base
        fd = self._open.get(parts)
        if fd is not None:
            self._open.move_to_end(parts)
            return fd
        parent = os.dup(self.get(parts[:-1]))
        name = parts[-1]
        shown = "/".join(parts)
        try:
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if create_mode is None:
                    raise _Refused(f"{shown}: no such directory") from None
                os.mkdir(name, create_mode, dir_fd=parent)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise _Refused(
                        f"{shown}: a symlink or not a directory (not followed)"
                    ) from None
                raise _Refused(f"{shown}: {exc.strerror}") from None
        finally:
            os.close(parent)
        self._open[parts] = fd
        while len(self._open) > _DIR_CACHE_SIZE:
            os.close(self._open.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        """Close every cached descriptor (not the base)."""
        while self._open:
            os.close(self._open.popitem()[1])


class _Tree:
    """A file or directory to send, named ``top`` in the manifest.

    Args:
        parent_fd: its parent directory (owned: closed by :meth:`close`).
        name: its name in that directory (not followed if a symlink).
        top: the name it gets in the manifest.
    """

    def __init__(self, parent_fd: int, name: str, top: str) -> None:
        self.parent_fd = parent_fd
        self.name = name
        self.top = top
        self._dirs = _Dirs(parent_fd)

    def close(self) -> None:
        """Release the descriptors."""
        self._dirs.close()
        os.close(self.parent_fd)

    def walk(
        self,
        out: list[tuple[Entry, _Tree, tuple[str, ...]]],
        skipped: list[tuple[str, str]],
    ) -> None:
        """Append this tree's entries (parents first) and what it leaves out.

        Raises:
            OSError: the top could not be read.
        """
        st = os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            out.append((self._entry(self.top, "f", st), self, (self.name,)))
            return
        if not stat.S_ISDIR(st.st_mode):
            skipped.append((self.top, "not a regular file or directory"))
            return
        out.append((self._entry(self.top, "d", st), self, (self.name,)))
        stack: list[tuple[tuple[str, ...], str]] = [((self.name,), self.top)]
        while stack:
            real, shown = stack.pop()
            try:
                fd = self._dirs.get(real)
                with os.scandir(fd) as it:
                    items = sorted(it, key=lambda e: e.name)
            except (OSError, _Refused) as exc:
                why = exc.strerror if isinstance(exc, OSError) else str(exc)
                skipped.append((shown, why or "cannot read"))
                continue
            subdirs = []
            for item in items:
                path = f"{shown}/{item.name}"
                if not _utf8(item.name):
                    skipped.append((path, "name is not valid UTF-8"))
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError as exc:
                    skipped.append((path, exc.strerror or "cannot stat"))
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append((self._entry(path, "f", st), self, (*real, item.name)))
                elif stat.S_ISDIR(st.st_mode):
                    out.append((self._entry(path, "d", st), self, (*real, item.name)))
                    subdirs.append(((*real, item.name), path))
                elif stat.S_ISLNK(st.st_mode):
                    skipped.append((path, "symlink (not followed)"))
                else:
                    skipped.append((path, "not a regular file or directory"))
            stack.extend(reversed(subdirs))

    @staticmethod
    def _entry(path: str, kind: Literal["f", "d"], st: os.stat_result) -> Entry:
        size = st.st_size if kind == "f" else 0
        return Entry(path, kind, size, stat.S_IMODE(st.st_mode), st.st_mtime_ns)

    def open_file(self, parts: tuple[str, ...]) -> int:
        """Open a listed regular file for reading, never through a symlink.

        Raises:
            _Refused: gone, replaced, or not a regular file.
        """
        parent = self._dirs.get(parts[:-1])
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused("not a regular file")
            fd = os.open(name, _READ_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise _Refused(exc.strerror or "cannot open") from None
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(fst.st_mode):
            os.close(fd)
            raise _Refused("replaced while being opened")
        return fd


class _Sender:
    """Sends trees over a ``file`` channel (module docstring).

    Args:
        channel: the channel (either side may have opened it).
        trees: what to send.
        chunk_size: the chunk size to announce.
        progress: called after each chunk.
        limit: bytes per second at most (None: no limit).
    """

    def __init__(
        self,
        channel: Channel,
        trees: Sequence[_Tree],
        *,
        chunk_size: int = CHUNK_SIZE,
        progress: ProgressCallback | None = None,
        limit: float | None = None,
    ) -> None:
        self.frames = _Frames(channel)
        self.trees = trees
        self.chunk_size = chunk_size
        self.progress = progress
        self.pacer = _Pacer(limit)
        self.result = TransferResult()
        self.error: str | None = None
        self._done = 0
        self._paths: list[str] = []
        self._summary = False
        self._lost: ChannelError | ConnectionClosed | None = None

    def _list(self) -> tuple[list[tuple[Entry, _Tree, tuple[str, ...]]], list[tuple[str, str]]]:
        listed: list[tuple[Entry, _Tree, tuple[str, ...]]] = []
        skipped: list[tuple[str, str]] = []
        for tree in self.trees:
            tree.walk(listed, skipped)
        return listed, skipped

    async def run(self) -> TransferResult:
        """Send everything; per-entry failures land in the result.

        Raises:
            TransferFailed: the receiver ended the transfer (its message).
            RemoteProtocolError: the receiver broke the protocol.
            ChannelError, ConnectionClosed: the channel or session ended.
        """
        listed, skipped = await _in_thread(self._list)
        if len(listed) > MAX_ENTRIES:
            message = f"{len(listed)} entries; at most {MAX_ENTRIES} per transfer"
            await self.frames.fail(message)
            raise TransferFailed(message)
        self.result.failed += skipped
        entries = [e for e, _, _ in listed]
        self._paths = [e.path for e in entries]
        self.result.bytes_total = sum(e.size for e in entries)
        replies: asyncio.Task[None] | None = None
        try:
            await self.frames.send(FrameType.HELLO, Hello(VERSION, self.chunk_size))
            await self.frames.send_batches(
                FrameType.ENTRIES,
                entries,
                (FrameType.ENTRIES_END, EntriesEnd(len(entries), self.result.bytes_total)),
            )
            offers = await self._plan(entries)
            replies = asyncio.create_task(self._replies())
            for i, (entry, tree, parts) in enumerate(listed):
                offer = offers[i]
                if offer.action is OfferAction.FAIL:
                    self.result.failed.append((entry.path, offer.error or "refused"))
                elif entry.kind == "d":
                    self.result.dirs += 1
                else:
                    await self._send_file(i, entry, tree, parts, offer)
                if self.error is not None:
                    raise TransferFailed(self.error)
            left_out = [LeftOut(p[:MAX_ERROR], r[:MAX_ERROR]) for p, r in skipped[:MAX_LEFT_OUT]]
            done = Done(left_out, max(0, len(skipped) - MAX_LEFT_OUT))
            await self.frames.send(FrameType.DONE, done)
            await replies
            if self.error is None and not self._summary:
                raise self._lost or RemoteProtocolError("the receiver sent no SUMMARY")
        except (ChannelError, ConnectionClosed) as exc:
            # The receiver may have said why before the channel closed under our writes.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                if replies is None:
                    await asyncio.wait_for(self._last_words(), 5.0)
                else:
                    await asyncio.wait_for(asyncio.shield(replies), 5.0)
            if self.error is not None:
                raise TransferFailed(self.error) from exc
            raise
        finally:
            if replies is not None:
                replies.cancel()
                with contextlib.suppress(BaseException):
                    await replies
        if self.error is not None:
            raise TransferFailed(self.error)
        return self.result

    async def _last_words(self) -> None:
        """Read what is left of the channel for an ERROR (into ``self.error``)."""
        with contextlib.suppress(RemoteProtocolError, ChannelError, ConnectionClosed):
            while (frame := await self.frames.next()) is not None:
                if frame[0] is FrameType.ERROR:
                    self.error = frame[1].error
                    return

    async def _plan(self, entries: Sequence[Entry]) -> list[Offer]:
        offers: list[Offer] = []
        count, c = len(entries), self.chunk_size
        while True:
            frame = await self.frames.next()
            if frame is None:
                raise RemoteProtocolError("file stream ended before PLAN_END")
            ftype, msg = frame
            if ftype is FrameType.PLAN:
                for offer in msg:
                    if len(offers) == count:
                        raise RemoteProtocolError("more offers than entries")
                    entry = entries[len(offers)]
                    chunks = -(-entry.size // c)
                    if (
                        len(offer.digests) > chunks
                        or offer.offset > entry.size
                        or (offer.have is not None and len(offer.have) != chunks)
                        or offer.action is _WRONG_ACTION[entry.kind]
                    ):
                        raise RemoteProtocolError(f"offer {len(offers)} does not fit its entry")
                    offers.append(offer)
            elif ftype is FrameType.PLAN_END:
                if len(offers) != count:
                    raise RemoteProtocolError(f"{len(offers)} offers for {count} entries")
                return offers
            elif ftype is FrameType.ERROR:
                raise TransferFailed(msg.error)
            else:
                raise RemoteProtocolError(f"unexpected {ftype.name} before PLAN_END")

    async def _replies(self) -> None:
        """Read FILE_OK, FILE_FAILED, SUMMARY and ERROR until SUMMARY, ERROR or the end."""
        try:
            while True:
                frame = await self.frames.next()
                if frame is None:
                    if self.error is None:
                        self.error = "the receiver ended the transfer early"
                    return
                ftype, msg = frame
                if ftype is FrameType.FILE_OK and msg.index < len(self._paths):
                    self.result.files += 1
                elif ftype is FrameType.FILE_FAILED and msg.index < len(self._paths):
                    self.result.failed.append((self._paths[msg.index], msg.error))
                elif ftype is FrameType.SUMMARY:
                    self._summary = True
                    return
                elif ftype is FrameType.ERROR:
                    self.error = msg.error
                    return
                else:
                    raise RemoteProtocolError(f"unexpected {ftype.name} from the receiver")
        except RemoteProtocolError as exc:
            self.error = f"protocol error: {exc}"
            await self.frames.fail(self.error)
        except (ChannelError, ConnectionClosed) as exc:
            self._lost = exc  # the main loop raises it (or the ERROR read before it)

    def _report(self, path: str, file_bytes: int, size: int) -> None:
        if self.progress is not None:
            self.progress(Progress(path, file_bytes, size, self._done, self.result.bytes_total))

    async def _abort(self, index: int, path: str, error: str) -> None:
        """Give up on one file: tell the receiver (FILE_ABORT) and note it."""
        self.result.failed.append((path, error))
        await self.frames.send(FrameType.FILE_ABORT, FileError(index, error[:MAX_ERROR]))

    async def _send_file(
        self, index: int, entry: Entry, tree: _Tree, parts: tuple[str, ...], offer: Offer
    ) -> None:
        size, c = entry.size, self.chunk_size
        try:
            fd = await _in_thread(tree.open_file, parts)
        except _Refused as exc:
            await self._abort(index, entry.path, str(exc))
            return
        try:
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != (size, entry.mtime_ns):
                await self._abort(index, entry.path, "changed since it was listed")
                return
            known = max(len(offer.have or ()), len(offer.digests))
            mine = await _in_thread(_hash_chunks, fd, size, c, known) if known else []
            if offer.have is not None:
                if mine == offer.have:  # the receiver has it: no FILE (it counts a skip)
                    self.result.skipped += 1
                    self.result.bytes_skipped += size
                    self._done += size
                    self._report(entry.path, size, size)
                    return
                if not offer.replace:
                    error = "exists with different content (use --force to replace it)"
                    await self._abort(index, entry.path, error)
                    return
            start = 0
            for mine_d, theirs in zip(mine, offer.digests, strict=False):
                if not hmac.compare_digest(mine_d, theirs):
                    break
                start += 1
            offset = min(start * c, size, offer.offset)
            digests = mine[: -(-offset // c)]
            self.result.bytes_resumed += offset
            self._done += offset
            await self.frames.send(FrameType.FILE, FileStart(index, offset))
            digests += await self._stream(fd, entry, offset)
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != (size, entry.mtime_ns):
                await self._abort(index, entry.path, "changed while being sent")
                return
            digest = file_digest(size, c, digests)
            await self.frames.send(FrameType.FILE_END, FileEnd(index, digest))
        except _Refused as exc:
            await self._abort(index, entry.path, str(exc))
        finally:
            os.close(fd)

    async def _stream(self, fd: int, entry: Entry, offset: int) -> list[bytes]:
        """Send CHUNKs of ``fd`` from ``offset``: a worker thread reads and hashes the
        next chunk into the other buffer while this one is written."""
        size, c = entry.size, self.chunk_size
        bufs = [bytearray(_HEADER_SIZE + c + DIGEST_SIZE) for _ in range(2 if size > c else 1)]

        def fill(buf: bytearray, pos: int, n: int) -> bytes:
            view = memoryview(buf)
            if _pread_into(fd, view[_HEADER_SIZE : _HEADER_SIZE + n], pos) < n:
                raise _Refused("shrank while being sent")
            digest = hashlib.sha256(view[_HEADER_SIZE : _HEADER_SIZE + n]).digest()
            _HEADER.pack_into(buf, 0, FrameType.CHUNK, n + DIGEST_SIZE)
            view[_HEADER_SIZE + n : _HEADER_SIZE + n + DIGEST_SIZE] = digest
            return digest

        loop = asyncio.get_running_loop()
        digests: list[bytes] = []
        positions = range(offset, size, c)
        job: asyncio.Future[bytes] | None = None
        if positions:
            job = loop.run_in_executor(None, fill, bufs[0], offset, min(c, size - offset))
        try:
            for k, pos in enumerate(positions):
                assert job is not None
                digest = await asyncio.shield(job)
                n = min(c, size - pos)
                job = None
                if pos + c < size:
                    nxt = pos + c
                    job = loop.run_in_executor(
                        None, fill, bufs[(k + 1) % len(bufs)], nxt, min(c, size - nxt)
                    )
                view = memoryview(bufs[k % len(bufs)])[: _HEADER_SIZE + n + DIGEST_SIZE]
                if self.pacer.limit is None:
                    await self.frames.channel.write(view)
                else:
                    for off in range(0, len(view), _PACED_SLICE):
                        piece = view[off : off + _PACED_SLICE]
                        await self.pacer.spend(len(piece))
                        await self.frames.channel.write(piece)
                digests.append(digest)
                self.result.bytes_sent += n
                self._done += n
                self._report(entry.path, pos + n, size)
                if self.error is not None:
                    raise TransferFailed(self.error)
        finally:
            if job is not None:
                await _settle(job)
        return digests


@dataclass
class _Planned:
    """The receiver's state for one manifest entry."""

    entry: Entry
    parts: tuple[str, ...]
    offer: Offer
    done: bool = False


class _Receiver:
    """Receives a manifest and its files into a base directory (module docstring).

    Args:
        channel: the channel.
        base_fd: the directory entries are written under (not owned).
        rename_top: the name the (single) top entry gets, if not its own.
        force: replace existing files.
        check: asked for each entry's parts; returns why it is refused, or None.
        progress: called after each chunk.
        limit: bytes per second at most.
    """

    def __init__(
        self,
        channel: Channel,
        base_fd: int,
        *,
        rename_top: str | None = None,
        force: bool = False,
        check: Callable[[tuple[str, ...]], str | None] | None = None,
        progress: ProgressCallback | None = None,
        limit: float | None = None,
    ) -> None:
        self.frames = _Frames(channel)
        self.dirs = _Dirs(base_fd)
        self.rename_top = rename_top
        self.force = force
        self.check = check
        self.progress = progress
        self.pacer = _Pacer(limit)
        self.chunk_size = CHUNK_SIZE
        self.result = TransferResult()
        self.plan: list[_Planned] = []
        self._done = 0
        self._touched: set[tuple[str, ...]] = set()

    async def run(self) -> TransferResult:
        """Receive everything; per-entry failures land in the result.

        Raises:
            TransferFailed: the transfer cannot go on (the peer was told why).
            RemoteProtocolError: the sender broke the protocol (it was told).
            ChannelError, ConnectionClosed: the channel or session ended.
        """
        try:
            try:
                await self._run()
            finally:
                self.dirs.close()
        except _Fatal as exc:
            await self.frames.fail(str(exc))
            raise TransferFailed(str(exc)) from exc
        except TransferFailed:
            raise
        except RemoteProtocolError as exc:
            await self.frames.fail(f"protocol error: {exc}")
            raise
        return self.result

    async def _run(self) -> None:
        frame = await self.frames.next()
        if frame is None:
            raise RemoteProtocolError("file stream ended before HELLO")
        if frame[0] is FrameType.ERROR:
            raise TransferFailed(frame[1].error)
        if frame[0] is not FrameType.HELLO:
            raise RemoteProtocolError(f"expected HELLO, got {frame[0].name}")
        hello: Hello = frame[1]
        c = hello.chunk_size
        if hello.version != VERSION:
            raise _Fatal(f"unsupported file protocol version {hello.version}")
        if not (MIN_CHUNK_SIZE <= c <= MAX_CHUNK_SIZE and c & (c - 1) == 0):
            raise RemoteProtocolError(f"chunk size {c} is not allowed")
        self.chunk_size = c
        entries = await self._manifest()
        await _in_thread(self._make_plan, entries)
        need = self._space_needed()
        free = _free_space(self.dirs.base)
        if need > free:
            raise _Fatal(
                f"not enough space on the target: {_human(need)} needed, {_human(free)} free"
            )
        await self.frames.send_batches(
            FrameType.PLAN, [p.offer for p in self.plan], (FrameType.PLAN_END, PlanEnd(need))
        )
        while True:
            frame = await self.frames.next()
            if frame is None:
                raise RemoteProtocolError("file stream ended before DONE")
            ftype, msg = frame
            if ftype is FrameType.FILE:
                await self._receive_file(msg)
            elif ftype is FrameType.FILE_ABORT:
                self._not_sent(msg)
            elif ftype is FrameType.DONE:
                # What the sender left out (symlinks, devices, unreadable entries) is
                # reported as failed here too: the user of either end must know.
                for item in msg.left_out[:MAX_LEFT_OUT]:
                    self.result.failed.append((item.path, f"left out: {item.reason}"))
                if msg.more:
                    self.result.failed.append(("...", f"{msg.more} more left out"))
                break
            elif ftype is FrameType.ERROR:
                raise TransferFailed(msg.error)
            else:
                raise RemoteProtocolError(f"unexpected {ftype.name} between files")
        for p in self.plan:
            if p.offer.action is OfferAction.SEND and not p.done:
                if p.offer.have is None:
                    raise RemoteProtocolError(f"DONE without {p.entry.path!r} or its FILE_ABORT")
                self.result.skipped += 1  # the sender found the same digests
                self.result.bytes_skipped += p.entry.size
        await _in_thread(self._finish_dirs)
        failed = len(self.result.failed)
        await self.frames.send(
            FrameType.SUMMARY, Summary(self.result.files, failed, self.result.bytes_sent)
        )

    async def _manifest(self) -> list[Entry]:
        entries: list[Entry] = []
        while True:
            frame = await self.frames.next()
            if frame is None:
                raise RemoteProtocolError("file stream ended inside the manifest")
            ftype, msg = frame
            if ftype is FrameType.ENTRIES:
                entries += msg
                if len(entries) > MAX_ENTRIES:
                    raise _Fatal(f"more than {MAX_ENTRIES} entries in one transfer")
            elif ftype is FrameType.ENTRIES_END:
                if msg.count != len(entries) or msg.total != sum(e.size for e in entries):
                    raise RemoteProtocolError("ENTRIES_END does not match the manifest")
                return entries
            elif ftype is FrameType.ERROR:
                raise TransferFailed(msg.error)
            else:
                raise RemoteProtocolError(f"unexpected {ftype.name} in the manifest")

    # -- planning (a worker thread) -------------------------------------------------

    def _make_plan(self, entries: list[Entry]) -> None:
        dirs: set[tuple[str, ...]] = set()
        seen: set[tuple[str, ...]] = set()
        failed: set[tuple[str, ...]] = set()
        tops = {e.path.split("/", 1)[0] for e in entries}
        if self.rename_top is not None and len(tops) > 1:
            raise _Fatal("several sources need a directory as the target")
        for entry in entries:
            try:
                parts = split_path(entry.path)
            except ValueError as exc:
                raise RemoteProtocolError(str(exc)) from None
            if parts in seen:
                raise RemoteProtocolError(f"entry {entry.path!r} listed twice")
            seen.add(parts)
            if len(parts) > 1 and parts[:-1] not in dirs:
                raise RemoteProtocolError(f"entry {entry.path!r} comes before its directory")
            if entry.kind == "d":
                if entry.size:
                    raise RemoteProtocolError(f"directory {entry.path!r} with a size")
                dirs.add(parts)
            self.result.bytes_total += entry.size
            if self.rename_top is not None:
                parts = (self.rename_top, *parts[1:])
            if parts[:-1] in failed:
                offer = Offer(OfferAction.FAIL, error="its directory failed")
            else:
                try:
                    offer = self._offer(entry, parts)
                except _Refused as exc:
                    offer = Offer(OfferAction.FAIL, error=str(exc)[:MAX_ERROR])
                except OSError as exc:  # e.g. mkdir refused, an unreadable file
                    offer = Offer(OfferAction.FAIL, error=(exc.strerror or str(exc))[:MAX_ERROR])
            if offer.action is OfferAction.FAIL:
                self.result.failed.append((entry.path, offer.error))
                if entry.kind == "d":
                    failed.add(parts)
            self.plan.append(_Planned(entry, parts, offer))

    def _offer(self, entry: Entry, parts: tuple[str, ...]) -> Offer:
        if self.check is not None:
            refusal = self.check(parts)
            if refusal is not None:
                raise _Refused(refusal)
        if entry.kind == "d":
            mode = (entry.mode & 0o777) | 0o700
            self.dirs.get(parts, create_mode=mode)
            self._touched.add(parts[:-1])
            return Offer(OfferAction.DIR)
        parent = self.dirs.get(parts[:-1])
        name = parts[-1]
        have: list[bytes] | None = None
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                raise _Refused("exists and is a directory")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise _Refused("exists and is not a regular file")
            if stat.S_ISREG(st.st_mode) and st.st_size == entry.size:
                have = self._digests_of(parent, name, entry.size)
            if have is None and not self.force:
                raise _Refused("exists (use --force to replace it)")
        offset, digests = self._resumable(parent, name, entry)
        return Offer(OfferAction.SEND, offset, digests, have, self.force)

    def _digests_of(self, parent: int, name: str, size: int) -> list[bytes] | None:
        count = -(-size // self.chunk_size)
        if count > MAX_OFFER_DIGESTS:
            return None
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=parent)
        except OSError:
            return None
        try:
            digests = _hash_chunks(fd, size, self.chunk_size, count)
        finally:
            os.close(fd)
        return digests if len(digests) == count else None

    def _resumable(self, parent: int, name: str, entry: Entry) -> tuple[int, list[bytes]]:
        """The verified prefix of a ``.part`` for ``entry``; stale parts are removed."""
        part, meta_name = part_names(name)
        found = _read_meta(parent, meta_name)
        c, size = self.chunk_size, entry.size
        if found is None:
            _remove_stale(parent, part, meta_name)
            return 0, []
        meta, digests = found
        if (meta.size, meta.mtime_ns, meta.chunk_size) != (size, entry.mtime_ns, c):
            _remove_stale(parent, part, meta_name)
            return 0, []
        digests = digests[: min(-(-size // c), MAX_OFFER_DIGESTS)]
        try:
            fd = os.open(part, _READ_FLAGS, dir_fd=parent)
        except OSError:
            _unlink_quietly(parent, meta_name)
            return 0, []
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused(f"{part} is not a regular file")
            digests = digests[: -(-size // c) if st.st_size >= size else st.st_size // c]
            if meta.boot != _boot_id() or not meta.boot:
                # The page cache may have lost writes since the sidecar was written.
                again = _hash_chunks(fd, size, c, len(digests))
                n = 0
                for a, b in zip(again, digests, strict=False):
                    if a != b:
                        break
                    n += 1
                digests = digests[:n]
        finally:
            os.close(fd)
        return min(len(digests) * c, size), digests

    def _space_needed(self) -> int:
        need = 0
        for p in self.plan:
            if p.offer.action is OfferAction.SEND:
                skip = p.offer.offset if p.offer.have is None else 0
                need += p.entry.size - skip
        return need

    # -- receiving ---------------------------------------------------------------------

    def _not_sent(self, msg: FileError) -> None:
        """FILE_ABORT between files: the sender will not send this one."""
        if msg.index >= len(self.plan):
            raise RemoteProtocolError(f"FILE_ABORT for entry {msg.index} of {len(self.plan)}")
        planned = self.plan[msg.index]
        if planned.offer.action is not OfferAction.SEND or planned.done:
            raise RemoteProtocolError(f"FILE_ABORT for entry {msg.index}, which was not offered")
        planned.done = True
        self.result.failed.append((planned.entry.path, msg.error))

    def _report(self, path: str, file_bytes: int, size: int) -> None:
        if self.progress is not None:
            self.progress(Progress(path, file_bytes, size, self._done, self.result.bytes_total))

    async def _receive_file(self, start: FileStart) -> None:
        if start.index >= len(self.plan):
            raise RemoteProtocolError(f"FILE for entry {start.index} of {len(self.plan)}")
        planned = self.plan[start.index]
        entry, offer, c = planned.entry, planned.offer, self.chunk_size
        size, offset = entry.size, start.offset
        if entry.kind != "f" or offer.action is not OfferAction.SEND or planned.done:
            raise RemoteProtocolError(f"FILE for entry {start.index} that was not offered")
        planned.done = True
        j = -(-offset // c)
        if offset > offer.offset or min(j * c, size) != offset or j > len(offer.digests):
            raise RemoteProtocolError(f"FILE offset {offset} was not offered")
        if offer.have is not None and not offer.replace:
            raise RemoteProtocolError(f"FILE for {entry.path!r}, which exists")
        parent = os.dup(self.dirs.get(planned.parts[:-1]))
        name = planned.parts[-1]
        part, meta_name = part_names(name)
        fd = meta_fd = -1
        try:
            free = _free_space(parent)
            if size - offset > free:
                raise _Fatal(
                    f"{entry.path}: not enough space on the target: {_human(size - offset)} "
                    f"needed, {_human(free)} free"
                )
            try:
                fd = os.open(part, _PART_FLAGS, 0o600, dir_fd=parent)
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise _Refused(f"{part} is not a regular file")
                await _lock(fd)
                meta_fd = os.open(meta_name, _PART_FLAGS | os.O_TRUNC, 0o600, dir_fd=parent)
                digests = list(offer.digests[:j])
                meta = _PartMeta(size, entry.mtime_ns, c, _boot_id())
                os.write(meta_fd, _meta_bytes(meta, digests))
                os.ftruncate(fd, offset)
            except OSError as exc:
                raise self._io_error(entry.path, exc, 0) from exc
            self.result.bytes_resumed += offset
            self._done += offset
            aborted = await self._chunks(start.index, entry, fd, meta_fd, offset, digests)
            if aborted is not None:
                _unlink_quietly(parent, part, meta_name)
                self.result.failed.append((entry.path, aborted))
                return
            try:
                await _in_thread(self._commit, parent, fd, name, planned)
            except _Refused as exc:
                self.result.failed.append((entry.path, str(exc)))
                await self.frames.send(
                    FrameType.FILE_FAILED, FileError(start.index, str(exc)[:1000])
                )
                return
            self._touched.add(planned.parts[:-1])
            self.result.files += 1
            await self.frames.send(FrameType.FILE_OK, FileOk(start.index))
        except _Refused as exc:
            self.result.failed.append((entry.path, str(exc)))
            raise _Fatal(f"{entry.path}: {exc}") from None
        finally:
            for f in (fd, meta_fd, parent):
                if f >= 0:
                    os.close(f)

    def _io_error(self, path: str, exc: OSError, verified: int) -> _Fatal:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _Fatal(
                f"{path}: no space left on the target device; the partial file is kept "
                f"({_human(verified)} verified): free some space and run the transfer again"
                " to resume"
            )
        return _Fatal(f"{path}: {exc.strerror or exc}")

    async def _chunks(
        self, index: int, entry: Entry, fd: int, meta_fd: int, pos: int, digests: list[bytes]
    ) -> str | None:
        """Receive CHUNKs to FILE_END (None) or FILE_ABORT (its error); a worker thread
        hashes and writes one chunk while the next arrives."""
        size, c = entry.size, self.chunk_size
        loop = asyncio.get_running_loop()
        pending: tuple[asyncio.Future[bytes], bytes, int] | None = None
        verified = pos

        async def settle() -> None:
            nonlocal pending, verified
            if pending is None:
                return
            job, expected, n = pending
            try:
                digest = await asyncio.shield(job)
            except OSError as exc:
                pending = None
                raise self._io_error(entry.path, exc, verified) from exc
            pending = None
            if not hmac.compare_digest(digest, expected):
                raise _Fatal(
                    f"{entry.path}: chunk {len(digests)} failed verification; the "
                    f"partial file is kept ({_human(verified)} verified)"
                )
            digests.append(digest)
            try:
                os.write(meta_fd, digest)
            except OSError as exc:
                raise self._io_error(entry.path, exc, verified) from exc
            verified += n
            self.result.bytes_sent += n
            self._done += n
            self._report(entry.path, verified, size)

        try:
            while True:
                head = await self.frames.header()
                if head is None:
                    raise RemoteProtocolError("file stream ended inside a file")
                ftype, length = head
                if ftype is FrameType.CHUNK:
                    n = length - DIGEST_SIZE
                    if n != min(c, size - pos) or n <= 0:
                        raise RemoteProtocolError(f"CHUNK of {n} bytes at {pos} of {size}")
                    pieces = await self.frames.take(n)
                    expected = await self.frames.exact(DIGEST_SIZE)
                    await settle()
                    await self.pacer.spend(n)
                    job = loop.run_in_executor(None, _store_chunk, fd, pieces, pos)
                    pending = (job, expected, n)
                    pos += n
                    continue
                await settle()
                msg = await self.frames.control(ftype, length)
                if ftype is FrameType.FILE_END:
                    if msg.index != index or pos != size:
                        raise RemoteProtocolError(f"FILE_END for {msg.index} at {pos} of {size}")
                    if not hmac.compare_digest(msg.digest, file_digest(size, c, digests)):
                        raise _Fatal(f"{entry.path}: the file digest does not match")
                    return None
                if ftype is FrameType.FILE_ABORT and msg.index == index:
                    return str(msg.error)
                if ftype is FrameType.ERROR:
                    raise TransferFailed(msg.error)
                raise RemoteProtocolError(f"unexpected {ftype.name} inside a file")
        finally:
            if pending is not None:
                await _settle(pending[0])

    def _commit(self, parent: int, fd: int, name: str, planned: _Planned) -> None:
        """Make the verified part durable and give it its final name (a worker thread).

        Raises:
            _Refused: it could not be committed (the ``.part`` stays).
        """
        entry = planned.entry
        part, meta_name = part_names(name)
        try:
            os.fchmod(fd, entry.mode & 0o777)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            os.fsync(fd)
            # Renaming goes by name: make sure the name is still the file we wrote
            # and verified (someone may have replaced it meanwhile).
            ours = os.fstat(fd)
            try:
                there = os.stat(part, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                there = None
            if there is None or (ours.st_dev, ours.st_ino) != (there.st_dev, there.st_ino):
                raise _Refused(f"{part} was removed or replaced during the transfer")
            if planned.offer.replace:
                os.rename(part, name, src_dir_fd=parent, dst_dir_fd=parent)
            else:
                self._link(parent, part, name)
            _unlink_quietly(parent, meta_name)
        except FileExistsError:
            raise _Refused("exists (use --force to replace it)") from None
        except OSError as exc:
            raise _Refused(exc.strerror or "cannot commit the file") from None

    @staticmethod
    def _link(parent: int, part: str, name: str) -> None:
        """Rename ``part`` to ``name`` without ever replacing an existing ``name``.

        Raises:
            FileExistsError: ``name`` exists.
            OSError: the rename failed.
        """
        try:
            os.link(part, name, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError:  # no hard links here (e.g. FAT): check, then rename
            try:
                os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(part, name, src_dir_fd=parent, dst_dir_fd=parent)
                return
            raise FileExistsError(errno.EEXIST, "exists", name) from None
        os.unlink(part, dir_fd=parent)

    def _finish_dirs(self) -> None:
        """Directory modes and times (deepest first), then fsync every directory touched."""
        for p in reversed(self.plan):
            if p.entry.kind == "d" and p.offer.action is OfferAction.DIR:
                try:
                    fd = self.dirs.get(p.parts)
                    os.fchmod(fd, p.entry.mode & 0o777)
                    os.utime(fd, ns=(p.entry.mtime_ns, p.entry.mtime_ns))
                except (OSError, _Refused) as exc:
                    self.result.failed.append((p.entry.path, f"cannot set mode or time: {exc}"))
                else:
                    self.result.dirs += 1
        for parts in sorted(self._touched, key=len, reverse=True):
            with contextlib.suppress(OSError, _Refused):
                os.fsync(self.dirs.get(parts))
