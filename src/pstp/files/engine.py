"""The file-transfer engine both ends of a ``file`` channel run (docs/protocol.md §18).

:class:`Sender` and :class:`Receiver` follow §18.5 to §18.9 over any channel
with ``read`` and ``write`` (:class:`FileChannel`); :class:`FrameStream` feeds a
:class:`~pstp.files.frames.FrameDecoder` from the channel.  The disk side is
:mod:`pstp.files.disk`; the client's put and get are :mod:`pstp.files.client`;
the daemon adds confinement and policy (:mod:`pstp.daemon.files`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pstp.exceptions import ChannelError, ConnectionClosed, RemoteProtocolError, TransferFailed
from pstp.files.disk import (
    READ_FLAGS,
    Dirs,
    PartMeta,
    RefusedError,
    Reserve,
    Tree,
    boot_id,
    check_part,
    create_meta,
    free_space,
    hash_chunks,
    human,
    lock,
    meta_bytes,
    open_part,
    part_names,
    pread_into,
    read_meta,
    remove_stale,
    store_chunk,
    unlink_quietly,
)
from pstp.files.frames import (
    CHUNK_SIZE,
    DIGEST_SIZE,
    MAX_ENTRIES,
    MAX_ERROR,
    MAX_LEFT_OUT,
    MAX_MANIFEST_BYTES,
    MAX_OFFER_DIGESTS,
    NEED_DATA,
    VERSION,
    Chunk,
    Control,
    Done,
    EntriesEnd,
    Entry,
    Error,
    FileEnd,
    FileError,
    FileOk,
    FileStart,
    FrameDecoder,
    FrameType,
    Hello,
    LeftOut,
    Manifest,
    ManifestTooLarge,
    Message,
    NeedData,
    Offer,
    OfferAction,
    PlanEnd,
    Summary,
    batch_frames,
    chunk_header,
    encode_message,
    file_digest,
    valid_chunk_size,
)
from pstp.protocol.streams import FRAME_HEADER_LEN

__all__ = [
    "FileChannel",
    "FrameStream",
    "Progress",
    "ProgressCallback",
    "Receiver",
    "Sender",
    "TransferResult",
    "in_thread",
]

_PACED_SLICE = 1 << 16  # with a rate limit, chunks go out in 64 KiB writes
#: The offer a sender never accepts for an entry kind (a file is not a DIR, and so on; §18.5).
_WRONG_ACTION = {"f": OfferAction.DIR, "d": OfferAction.SEND}

_T = TypeVar("_T")


class FileChannel(Protocol):
    """What the engine needs of a channel: its byte stream, both ways (§18.1)."""

    async def read(self) -> bytes:
        """The next bytes received; ``b""`` at the end of the stream."""
        ...

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``."""
        ...


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


class _Fatal(Exception):
    """The transfer cannot go on; the message goes to the peer in ERROR."""


async def _settle(fut: asyncio.Future[_T]) -> None:
    """Wait for a worker-thread job even if we are being cancelled (it uses our fds)."""
    while not fut.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([fut])
    if not fut.cancelled():
        fut.exception()  # retrieved: the caller reports errors its own way


def _keep(meta_fd: int, job: asyncio.Future[bytes], expected: bytes) -> None:
    """Append a written chunk's digest to the sidecar if its write succeeded and it
    matched (best effort: the transfer is ending anyway)."""
    if job.cancelled() or job.exception() is not None:
        return
    if hmac.compare_digest(job.result(), expected):
        with contextlib.suppress(OSError):
            os.write(meta_fd, expected)


async def in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """Run ``fn`` in a worker thread; if cancelled, still wait for it to finish."""
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await _settle(fut)
        raise


class _Pacer:
    """Keeps a byte rate (``limit`` bytes per second) by sleeping."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit if limit and limit > 0 else None
        self._start: float | None = None
        self._bytes = 0

    async def spend(self, n: int) -> None:
        """Count ``n`` bytes, sleeping as long as we are ahead of the rate."""
        if self.limit is None:
            return
        now = asyncio.get_running_loop().time()
        if self._start is None:
            self._start = now
        self._bytes += n
        ahead = self._bytes / self.limit - (now - self._start)
        if ahead > 0:
            await asyncio.sleep(ahead)


class FrameStream:
    """File frames on a channel: reads feed a :class:`FrameDecoder`, frames are written whole.

    Args:
        channel: the channel (either side may have opened it).
    """

    def __init__(self, channel: FileChannel) -> None:
        self.channel = channel
        self.decoder = FrameDecoder()

    async def next_frame(self) -> Control | Chunk | None:
        """The next frame; None at a clean end of the stream.

        Raises:
            RemoteProtocolError: a malformed frame, or the stream ended inside one.
            ChannelError, ConnectionClosed: the channel or session ended.
        """
        while True:
            frame = self.decoder.next_frame()
            if frame is not NEED_DATA:
                assert not isinstance(frame, NeedData)
                return frame
            data = await self.channel.read()
            if data:
                self.decoder.feed(data)
            else:
                self.decoder.eof()

    async def next(self) -> tuple[FrameType, Any] | None:
        """The next control frame's type and message; None at a clean end of the stream.

        Raises:
            RemoteProtocolError: a malformed frame, or a CHUNK (outside a file).
            ChannelError, ConnectionClosed: the channel or session ended.
        """
        frame = await self.next_frame()
        if frame is None:
            return None
        if isinstance(frame, Chunk):  # pragma: no cover - the decoder refuses it first
            raise RemoteProtocolError("CHUNK outside a file")
        return frame.type, frame.message

    async def expect(self, where: str) -> tuple[FrameType, Any]:
        """The next control frame, which must come: the stream ending is an error.

        Args:
            where: where the stream would have ended, for the error (``"before DONE"``).

        Raises:
            RemoteProtocolError: a malformed frame, a CHUNK, or the stream ended.
            ChannelError, ConnectionClosed: the channel or session ended.
        """
        frame = await self.next()
        if frame is None:
            raise RemoteProtocolError(f"file stream ended {where}")
        return frame

    async def send(self, ftype: FrameType, message: Message) -> None:
        """Send one control frame.

        Raises:
            ChannelError, ConnectionClosed: the channel or session ended.
        """
        await self.channel.write(encode_message(ftype, message))

    async def send_batches(
        self, ftype: FrameType, items: Sequence[Message], end: tuple[FrameType, Message]
    ) -> None:
        """Send ``items`` as arrays in frames of about 256 KiB, then the ``end`` frame.

        Raises:
            ChannelError, ConnectionClosed: the channel or session ended.
        """
        for out in batch_frames(ftype, items, end):
            await self.channel.write(out)

    async def fail(self, message: str) -> None:
        """Send ERROR (best effort: the channel may be gone already)."""
        with contextlib.suppress(ChannelError, ConnectionClosed):
            await self.send(FrameType.ERROR, Error(message[:MAX_ERROR]))


class Sender:
    """Sends trees over a ``file`` channel (docs/protocol.md §18.4, §18.6, §18.9).

    Args:
        channel: the channel (either side may have opened it).
        trees: what to send.
        chunk_size: the chunk size to announce.
        progress: called after each chunk.
        limit: bytes per second at most (None: no limit).
    """

    def __init__(
        self,
        channel: FileChannel,
        trees: Sequence[Tree],
        *,
        chunk_size: int = CHUNK_SIZE,
        progress: ProgressCallback | None = None,
        limit: float | None = None,
    ) -> None:
        self.frames = FrameStream(channel)
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

    def _list(self) -> tuple[list[tuple[Entry, Tree, tuple[str, ...]]], list[tuple[str, str]]]:
        listed: list[tuple[Entry, Tree, tuple[str, ...]]] = []
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
        listed, skipped = await in_thread(self._list)
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
            ftype, msg = await self.frames.expect("before PLAN_END")
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
                if ftype in (FrameType.FILE_OK, FrameType.FILE_FAILED):
                    # One whose index is outside the manifest is ignored (§18.6, "Replies").
                    if msg.index >= len(self._paths):
                        continue
                    if ftype is FrameType.FILE_OK:
                        self.result.files += 1
                    else:
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
        self, index: int, entry: Entry, tree: Tree, parts: tuple[str, ...], offer: Offer
    ) -> None:
        size, c = entry.size, self.chunk_size
        try:
            fd = await in_thread(tree.open_file, parts)
        except RefusedError as exc:
            await self._abort(index, entry.path, str(exc))
            return
        try:
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != (size, entry.mtime_ns):
                await self._abort(index, entry.path, "changed since it was listed")
                return
            known = max(len(offer.have or ()), len(offer.digests))
            mine = await in_thread(hash_chunks, fd, size, c, known) if known else []
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
        except RefusedError as exc:
            await self._abort(index, entry.path, str(exc))
        finally:
            os.close(fd)

    async def _stream(self, fd: int, entry: Entry, offset: int) -> list[bytes]:
        """Send CHUNKs of ``fd`` from ``offset``: a worker thread reads and hashes the
        next chunk into the other buffer while this one is written."""
        size, c = entry.size, self.chunk_size
        bufs = [bytearray(FRAME_HEADER_LEN + c + DIGEST_SIZE) for _ in range(2 if size > c else 1)]

        def fill(buf: bytearray, pos: int, n: int) -> bytes:
            view = memoryview(buf)
            if pread_into(fd, view[FRAME_HEADER_LEN : FRAME_HEADER_LEN + n], pos) < n:
                raise RefusedError("shrank while being sent")
            digest = hashlib.sha256(view[FRAME_HEADER_LEN : FRAME_HEADER_LEN + n]).digest()
            buf[:FRAME_HEADER_LEN] = chunk_header(n)
            view[FRAME_HEADER_LEN + n : FRAME_HEADER_LEN + n + DIGEST_SIZE] = digest
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
                view = memoryview(bufs[k % len(bufs)])[: FRAME_HEADER_LEN + n + DIGEST_SIZE]
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


class Receiver:
    """Receives a manifest and its files into a base directory (docs/protocol.md §18.5-§18.9).

    Args:
        channel: the channel.
        base_fd: the directory entries are written under (not owned).
        rename_top: the name the (single) top entry gets, if not its own.
        force: replace existing files.
        check: asked for each entry's parts; returns why it is refused, or None.
        progress: called after each chunk.
        limit: bytes per second at most.
        max_entries: the most manifest entries accepted (§18.4).
        max_manifest: the most manifest bytes (ENTRIES payloads) accepted (§18.12).
        reserve: free space to keep on one file system (the device's audit log):
            a put that would leave less is refused before it writes, and one whose
            writes cross it is stopped (None: no reserve).
    """

    def __init__(
        self,
        channel: FileChannel,
        base_fd: int,
        *,
        rename_top: str | None = None,
        force: bool = False,
        check: Callable[[tuple[str, ...]], str | None] | None = None,
        progress: ProgressCallback | None = None,
        limit: float | None = None,
        max_entries: int = MAX_ENTRIES,
        max_manifest: int = MAX_MANIFEST_BYTES,
        reserve: Reserve | None = None,
    ) -> None:
        self.frames = FrameStream(channel)
        self.dirs = Dirs(base_fd)
        self.rename_top = rename_top
        self.force = force
        self.check = check
        self.progress = progress
        self.pacer = _Pacer(limit)
        self.max_entries = max_entries
        self.max_manifest = max_manifest
        self.reserve = reserve
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
        frame = await self.frames.expect("before HELLO")
        if frame[0] is FrameType.ERROR:
            raise TransferFailed(frame[1].error)
        if frame[0] is not FrameType.HELLO:
            raise RemoteProtocolError(f"expected HELLO, got {frame[0].name}")
        hello: Hello = frame[1]
        c = hello.chunk_size
        if hello.version != VERSION:
            raise _Fatal(f"unsupported file protocol version {hello.version}")
        if not valid_chunk_size(c):
            raise RemoteProtocolError(f"chunk size {c} is not allowed")
        self.chunk_size = c
        entries = await self._manifest()
        self._keep_reserve(self.dirs.base, 0)  # before planning creates any directory
        await in_thread(self._make_plan, entries)
        need = self._space_needed()
        free = free_space(self.dirs.base)
        if need > free:
            raise _Fatal(
                f"not enough space on the target: {human(need)} needed, {human(free)} free"
            )
        self._keep_reserve(self.dirs.base, need)  # before any file is written
        await self.frames.send_batches(
            FrameType.PLAN, [p.offer for p in self.plan], (FrameType.PLAN_END, PlanEnd(need))
        )
        while True:
            ftype, msg = await self.frames.expect("before DONE")
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
        await in_thread(self._finish_dirs)
        failed = len(self.result.failed)
        await self.frames.send(
            FrameType.SUMMARY, Summary(self.result.files, failed, self.result.bytes_sent)
        )

    async def _manifest(self) -> list[Entry]:
        """The manifest, each entry checked as its frame arrives (§18.4): a bad entry or a
        manifest past the limits ends the transfer at once, and what it held is freed."""
        manifest = Manifest(max_entries=self.max_entries, max_bytes=self.max_manifest)
        while True:
            frame = await self.frames.next_frame()
            if frame is None:
                raise RemoteProtocolError("file stream ended inside the manifest")
            if isinstance(frame, Chunk):  # pragma: no cover - the decoder refuses it first
                raise RemoteProtocolError("CHUNK outside a file")
            ftype, msg = frame.type, frame.message
            if ftype is FrameType.ENTRIES:
                try:
                    manifest.add(msg, frame.length)
                except ManifestTooLarge as exc:
                    raise _Fatal(str(exc)) from None
                if self.rename_top is not None and manifest.tops > 1:
                    raise _Fatal("several sources need a directory as the target")
            elif ftype is FrameType.ENTRIES_END:
                return manifest.end(msg)
            elif ftype is FrameType.ERROR:
                raise TransferFailed(msg.error)
            else:
                raise RemoteProtocolError(f"unexpected {ftype.name} in the manifest")

    def _keep_reserve(self, fd: int, need: int, where: str = "") -> None:
        """End the transfer if writing ``need`` bytes at ``fd`` would eat into the reserve."""
        if self.reserve is None:
            return
        refusal = self.reserve.refusal(fd, need)
        if refusal is not None:
            raise _Fatal(f"{refusal}{where}")

    # -- planning (a worker thread) -------------------------------------------------

    def _make_plan(self, entries: list[Entry]) -> None:
        """An offer for each entry of a manifest already checked (:class:`Manifest`)."""
        failed: set[tuple[str, ...]] = set()
        for entry in entries:
            parts = tuple(entry.path.split("/"))
            self.result.bytes_total += entry.size
            if self.rename_top is not None:
                parts = (self.rename_top, *parts[1:])
            if parts[:-1] in failed:
                offer = Offer(OfferAction.FAIL, error="its directory failed")
            else:
                try:
                    offer = self._offer(entry, parts)
                except RefusedError as exc:
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
                raise RefusedError(refusal)
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
                raise RefusedError("exists and is a directory")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise RefusedError("exists and is not a regular file")
            if stat.S_ISREG(st.st_mode) and st.st_size == entry.size:
                have = self._digests_of(parent, name, entry.size)
            if have is None and not self.force:
                raise RefusedError("exists (use --force to replace it)")
        offset, digests = self._resumable(parent, name, entry)
        return Offer(OfferAction.SEND, offset, digests, have, self.force)

    def _digests_of(self, parent: int, name: str, size: int) -> list[bytes] | None:
        count = -(-size // self.chunk_size)
        if count > MAX_OFFER_DIGESTS:
            return None
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=parent)
        except OSError:
            return None
        try:
            digests = hash_chunks(fd, size, self.chunk_size, count)
        finally:
            os.close(fd)
        return digests if len(digests) == count else None

    def _resumable(self, parent: int, name: str, entry: Entry) -> tuple[int, list[bytes]]:
        """The verified prefix of a ``.part`` for ``entry``; stale parts are removed."""
        part, meta_name = part_names(name)
        found = read_meta(parent, meta_name)
        c, size = self.chunk_size, entry.size
        if found is None:
            remove_stale(parent, part, meta_name)
            return 0, []
        meta, digests = found
        if (meta.size, meta.mtime_ns, meta.chunk_size) != (size, entry.mtime_ns, c):
            remove_stale(parent, part, meta_name)
            return 0, []
        digests = digests[: min(-(-size // c), MAX_OFFER_DIGESTS)]
        try:
            fd = os.open(part, READ_FLAGS, dir_fd=parent)
        except OSError:
            unlink_quietly(parent, meta_name)
            return 0, []
        try:
            check_part(fd, part)  # a hard link planted as the part is never resumed
            st = os.fstat(fd)
            digests = digests[: -(-size // c) if st.st_size >= size else st.st_size // c]
            if meta.boot != boot_id() or not meta.boot:
                # The page cache may have lost writes since the sidecar was written.
                again = hash_chunks(fd, size, c, len(digests))
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
            free = free_space(parent)
            if size - offset > free:
                raise _Fatal(
                    f"{entry.path}: not enough space on the target: {human(size - offset)} "
                    f"needed, {human(free)} free"
                )
            self._keep_reserve(parent, size - offset, f" ({entry.path})")
            try:
                fd = open_part(parent, part)  # a regular file with one link, or refused
                await lock(fd)
                check_part(fd, part)  # again: a link may have been made while we waited
                meta_fd = create_meta(parent, meta_name)
                digests = list(offer.digests[:j])
                meta = PartMeta(size, entry.mtime_ns, c, boot_id())
                os.write(meta_fd, meta_bytes(meta, digests))
                os.ftruncate(fd, offset)
            except OSError as exc:
                raise self._io_error(entry.path, exc, 0) from exc
            self.result.bytes_resumed += offset
            self._done += offset
            aborted = await self._chunks(start.index, entry, fd, meta_fd, offset, digests)
            if aborted is not None:
                unlink_quietly(parent, part, meta_name)
                self.result.failed.append((entry.path, aborted))
                return
            try:
                await in_thread(self._commit, parent, fd, name, planned)
            except RefusedError as exc:
                self.result.failed.append((entry.path, str(exc)))
                await self.frames.send(
                    FrameType.FILE_FAILED, FileError(start.index, str(exc)[:1000])
                )
                return
            self._touched.add(planned.parts[:-1])
            self.result.files += 1
            await self.frames.send(FrameType.FILE_OK, FileOk(start.index))
        except RefusedError as exc:
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
                f"({human(verified)} verified): free some space and run the transfer again"
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
        unchecked = 0  # bytes written since the reserve was last checked

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
                    f"partial file is kept ({human(verified)} verified)"
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

        self.frames.decoder.start_file(size, pos, c)
        try:
            while True:
                frame = await self.frames.next_frame()
                if frame is None:
                    raise RemoteProtocolError("file stream ended inside a file")
                if isinstance(frame, Chunk):
                    # The decoder judged its length from the header (§18.2 rule 4).
                    n = frame.size
                    await settle()
                    unchecked += n
                    if self.reserve is not None and unchecked >= self.reserve.every:
                        unchecked = 0
                        self._keep_reserve(
                            fd,
                            size - pos,  # what this file has still to write
                            f"; {entry.path} stopped, the partial file is kept "
                            f"({human(verified)} verified)",
                        )
                    await self.pacer.spend(n)
                    job = loop.run_in_executor(None, store_chunk, fd, frame.data, pos)
                    pending = (job, frame.digest, n)
                    pos += n
                    continue
                await settle()
                ftype, msg = frame.type, frame.message
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
            self.frames.decoder.end_file()
            if pending is not None:
                # The stream ended (or broke) while the last chunk was being written: it
                # was received whole, so verify it and keep it like the others; a resume
                # then starts after the last chunk verified, not one before (§18.8).
                job, expected, _ = pending
                await _settle(job)
                _keep(meta_fd, job, expected)

    def _commit(self, parent: int, fd: int, name: str, planned: _Planned) -> None:
        """Make the verified part durable and give it its final name (a worker thread).

        Raises:
            RefusedError: it could not be committed (the ``.part`` stays).
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
                raise RefusedError(f"{part} was removed or replaced during the transfer")
            if planned.offer.replace:
                os.rename(part, name, src_dir_fd=parent, dst_dir_fd=parent)
            else:
                self._link(parent, part, name)
            unlink_quietly(parent, meta_name)
        except FileExistsError:
            raise RefusedError("exists (use --force to replace it)") from None
        except OSError as exc:
            raise RefusedError(exc.strerror or "cannot commit the file") from None

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
                except (OSError, RefusedError) as exc:
                    self.result.failed.append((p.entry.path, f"cannot set mode or time: {exc}"))
                else:
                    self.result.dirs += 1
        for parts in sorted(self._touched, key=len, reverse=True):
            with contextlib.suppress(OSError, RefusedError):
                os.fsync(self.dirs.get(parts))
