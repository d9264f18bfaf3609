"""The receiver's and the sender's disk side of file transfer (docs/protocol.md §18.8, §18.4).

``.part`` files and their sidecars, the ``flock`` that guards a part, digests
of what is on disk, free space, and the trees a sender walks.  Every path
below a base directory is opened relative to a directory descriptor with
``O_NOFOLLOW`` (§18.13).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import stat
import struct
import time
from collections.abc import Sequence
from typing import Literal

import msgspec

from pstp.files.frames import (
    DIGEST_SIZE,
    MAX_NAME,
    MAX_OFFER_DIGESTS,
    Count,
    Entry,
    Message,
    Time,
)

__all__ = [
    "DIR_FLAGS",
    "LOCK_WAIT",
    "PART_FLAGS",
    "READ_FLAGS",
    "RESERVE_CHECK_EVERY",
    "Dirs",
    "PartMeta",
    "RefusedError",
    "Reserve",
    "Tree",
    "boot_id",
    "check_part",
    "create_meta",
    "free_space",
    "hash_chunks",
    "human",
    "is_utf8",
    "lock",
    "meta_bytes",
    "open_part",
    "part_names",
    "pread_into",
    "read_meta",
    "remove_stale",
    "store_chunk",
    "unlink_quietly",
]

_MAX_IOV = 512
_DIR_CACHE_SIZE = 32
_PART_SUFFIX = ".pstp-part"
_META_SUFFIX = ".pstp-meta"
_META_MAGIC = b"PSTPMETA"
_META_LEN = struct.Struct(">H")
#: A running put checks a :class:`Reserve` again after at least this many bytes written.
RESERVE_CHECK_EVERY = 4 << 20
#: Seconds to wait for the lock of a part that another transfer, perhaps ending, holds (§18.8).
LOCK_WAIT = 5.0
#: The most of a sidecar worth reading: magic, header, and MAX_OFFER_DIGESTS digests.
_META_READ_MAX = len(_META_MAGIC) + _META_LEN.size + 0xFFFF + MAX_OFFER_DIGESTS * 32
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: a FIFO planted under a source's, part's or sidecar's name must not block us.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PART_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class RefusedError(Exception):
    """One entry (or, from the daemon's jail, the transfer) cannot be transferred; the
    message says why."""


class PartMeta(Message):
    """The sidecar header of a ``.part`` file (§18.8)."""

    size: Count
    mtime_ns: Time
    chunk_size: Count
    boot: str


_ENCODER = msgspec.msgpack.Encoder()
_META_DECODER = msgspec.msgpack.Decoder(PartMeta)


def part_names(name: str) -> tuple[str, str]:
    """The ``.part`` file and sidecar names for final name ``name``, in the same directory."""
    base = f".{name}"
    if len((base + _META_SUFFIX).encode("utf-8", "surrogateescape")) > MAX_NAME:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        base = f".pstp-{digest}"
    return base + _PART_SUFFIX, base + _META_SUFFIX


def check_part(fd: int, part: str) -> None:
    """Refuse a ``.part`` that is not a regular file or that has more than one link.

    A hard link planted under a part's name (by anyone who can write in the
    target directory) would make the receiver truncate and write a file
    elsewhere, perhaps outside the root: a part is only ever ours if its inode
    has this one name (§18.8, §18.13).

    Raises:
        RefusedError: not a regular file, or ``st_nlink > 1``.
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise RefusedError(f"{part} is not a regular file")
    if st.st_nlink > 1:
        raise RefusedError(
            f"{part} has {st.st_nlink} links (a hard link is never written through): "
            "remove it and run the transfer again"
        )


def open_part(dir_fd: int, part: str) -> int:
    """Open (creating it if missing) the ``.part`` ``part`` in ``dir_fd`` for writing:
    never through a symlink (``O_NOFOLLOW``, relative to the directory descriptor),
    and only a regular file with one link (:func:`check_part`).  Nothing is written
    or truncated before the checks pass.

    Raises:
        RefusedError: a symlink, not a regular file, or more than one link.
        OSError: it could not be opened.
    """
    try:
        fd = os.open(part, PART_FLAGS, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RefusedError(f"{part} is a symlink (not followed)") from None
        raise
    try:
        check_part(fd, part)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_meta(dir_fd: int, name: str) -> int:
    """A new, empty sidecar ``name`` in ``dir_fd``: what was under its name is unlinked
    (never truncated or written through: it may be a hard link), then the file is
    created with ``O_EXCL | O_NOFOLLOW``.

    Raises:
        OSError: it could not be created (``FileExistsError`` if something was put
            back under its name meanwhile).
    """
    unlink_quietly(dir_fd, name)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, 0o600, dir_fd=dir_fd)


@functools.cache
def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``), or ``""`` (§18.8)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def human(n: float) -> str:
    """A byte count for people (``"1.5 MiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def free_space(fd: int) -> int:
    """Bytes available to us on the file system holding ``fd`` (§18.8, "Free space")."""
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize


def _exact_size(n: int) -> str:
    """A byte count for a message: ``64 MiB`` when it is a whole number of KiB or MiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return human(n) if n >= 1024 else f"{n} B"


class Reserve:
    """Free space a receiver keeps on the file system holding ``path`` (the audit log).

    A put may not leave less than ``margin`` bytes free there, so that a peer
    filling the disk with its own files cannot stop the audit log from being
    written (§18.8, "Free space").  Only writes on that same file system count:
    :meth:`refusal` compares the ``st_dev`` of the destination with that of
    ``path``'s directory and says nothing when they differ.

    Args:
        path: the file whose file system is protected (it need not exist; its
            directory must, else nothing is checked).
        margin: bytes to leave free (``f_bavail * f_frsize``).
        what: what the space is kept for, in messages.
        every: a running put is checked again after at least this many bytes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        margin: int,
        *,
        what: str = "the audit log",
        every: int = RESERVE_CHECK_EVERY,
    ) -> None:
        if margin < 0 or every <= 0:
            raise ValueError("the reserve's margin must be >= 0 and its interval > 0")
        self.path = os.fspath(path)
        self.dir = os.path.dirname(os.path.abspath(self.path))
        self.margin = margin
        self.what = what
        self.every = every

    def _mount(self, dev: int) -> str:
        """The mount point of the file system ``dev`` holding our directory."""
        here = self.dir
        while True:
            up = os.path.dirname(here)
            try:
                if up == here or os.stat(up).st_dev != dev:
                    return here
            except OSError:
                return here
            here = up

    def refusal(self, fd: int, need: int = 0) -> str | None:
        """Why writing ``need`` more bytes where ``fd`` lives is refused, or None.

        Args:
            fd: a descriptor of the destination (a directory or the file written).
            need: bytes about to be written (0: is the margin already crossed?).
        """
        try:
            ours = os.stat(self.dir)
        except OSError:
            return None  # no directory, no log there to protect
        if os.fstat(fd).st_dev != ours.st_dev:
            return None
        st = os.statvfs(self.dir)
        free = st.f_bavail * st.f_frsize
        if free - need >= self.margin:
            return None
        return (
            f"refused: would leave less than {_exact_size(self.margin)} free for {self.what} "
            f"on {self._mount(ours.st_dev)} ({human(max(free, 0))} free, {human(need)} "
            "to write)"
        )


def is_utf8(name: str) -> bool:
    """Whether a file name (surrogate-escaped) is valid UTF-8 (§18.4)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def pread_into(fd: int, view: memoryview, pos: int) -> int:
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


def store_chunk(fd: int, pieces: Sequence[memoryview], pos: int) -> bytes:
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


def hash_chunks(fd: int, size: int, chunk_size: int, count: int) -> list[bytes]:
    """SHA-256 of the first ``count`` chunks of an open file (fewer if it is shorter)."""
    buf = memoryview(bytearray(min(chunk_size, max(size, 1))))
    out: list[bytes] = []
    for i in range(count):
        pos = i * chunk_size
        n = min(chunk_size, size - pos)
        if n <= 0 or pread_into(fd, buf[:n], pos) < n:
            break
        out.append(hashlib.sha256(buf[:n]).digest())
    return out


def read_meta(dir_fd: int, name: str) -> tuple[PartMeta, list[bytes]] | None:
    """A sidecar's header and whole digests, or None if missing or unreadable."""
    try:
        # O_NONBLOCK: a FIFO planted under the sidecar's name must not block us.
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
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


def meta_bytes(meta: PartMeta, digests: Sequence[bytes]) -> bytes:
    """A whole sidecar: magic, header and digests (§18.8)."""
    head = _ENCODER.encode(meta)
    return _META_MAGIC + _META_LEN.pack(len(head)) + head + b"".join(digests)


def remove_stale(dir_fd: int, part: str, meta_name: str, wait: float = LOCK_WAIT) -> None:
    """Remove a stale part and its sidecar, unless a transfer is writing the part.

    Runs in a worker thread (planning): like :func:`lock`, it waits a little
    for a transfer that is ending (an interrupted one run again at once).

    Raises:
        RefusedError: another transfer still holds the part's lock (it is not stale).
    """
    try:
        fd = os.open(part, READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        unlink_quietly(dir_fd, meta_name)
        return
    except OSError:  # a symlink (ELOOP) or worse under the part's name: not ours
        unlink_quietly(dir_fd, part, meta_name)
        return
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RefusedError("another transfer is writing this file") from None
                time.sleep(0.02)
        unlink_quietly(dir_fd, part, meta_name)
    finally:
        os.close(fd)


def unlink_quietly(dir_fd: int, *names: str) -> None:
    """Remove ``names`` in ``dir_fd``; one already gone is not an error."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


async def lock(fd: int, wait: float = LOCK_WAIT) -> None:
    """Lock a ``.part`` for writing, waiting a little for a transfer that is ending.

    Raises:
        RefusedError: another transfer still holds it.
    """
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if asyncio.get_running_loop().time() > deadline:
                raise RefusedError("another transfer is writing this file") from None
            await asyncio.sleep(0.02)


class Dirs:
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
            RefusedError: a component is a symlink or not a directory, or is missing.
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
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if create_mode is None:
                    raise RefusedError(f"{shown}: no such directory") from None
                os.mkdir(name, create_mode, dir_fd=parent)
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise RefusedError(
                        f"{shown}: a symlink or not a directory (not followed)"
                    ) from None
                raise RefusedError(f"{shown}: {exc.strerror}") from None
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


class Tree:
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
        self._dirs = Dirs(parent_fd)

    def close(self) -> None:
        """Release the descriptors."""
        self._dirs.close()
        os.close(self.parent_fd)

    def walk(
        self,
        out: list[tuple[Entry, Tree, tuple[str, ...]]],
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
            except (OSError, RefusedError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else str(exc)
                skipped.append((shown, why or "cannot read"))
                continue
            subdirs = []
            for item in items:
                path = f"{shown}/{item.name}"
                if not is_utf8(item.name):
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
            RefusedError: gone, replaced, or not a regular file.
        """
        parent = self._dirs.get(parts[:-1])
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise RefusedError("not a regular file")
            fd = os.open(name, READ_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise RefusedError(exc.strerror or "cannot open") from None
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(fst.st_mode):
            os.close(fd)
            raise RefusedError("replaced while being opened")
        return fd
