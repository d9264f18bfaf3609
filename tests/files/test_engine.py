"""The sender and the receiver over an in-memory byte pipe (docs/protocol.md §18.5-§18.9)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable
from pathlib import Path

import pytest

from pstp.exceptions import RemoteProtocolError, TransferFailed
from pstp.files.disk import Tree, part_names
from pstp.files.engine import FrameStream, Progress, Receiver, Sender, TransferResult
from pstp.files.frames import (
    DIGEST_SIZE,
    Done,
    EntriesEnd,
    Entry,
    FileEnd,
    FileStart,
    FrameType,
    Hello,
    Offer,
    OfferAction,
    chunk_header,
    encode_message,
    file_digest,
)
from tests.helpers import TIMEOUT

C = 1 << 16


class PipeEnd:
    """One end of an in-memory, ordered byte pipe: a real FileChannel, not a mock."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: PipeEnd = self
        self._ended = False

    async def read(self) -> bytes:
        """The next bytes written by the peer; ``b""`` once it closed."""
        if self._ended:
            return b""
        data = await self.inbox.get()
        self._ended = not data
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hand ``data`` to the peer (copied: the sender reuses its buffers)."""
        if data:
            self.peer.inbox.put_nowait(bytes(data))

    def close(self) -> None:
        """End the stream towards the peer."""
        self.peer.inbox.put_nowait(b"")


def pipe() -> tuple[PipeEnd, PipeEnd]:
    """Two connected ends."""
    a, b = PipeEnd(), PipeEnd()
    a.peer, b.peer = b, a
    return a, b


def tree_of(path: Path) -> Tree:
    """A local file or directory to send, named by its own name."""
    return Tree(os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY), path.name, path.name)


async def closing(end: PipeEnd, job: Awaitable[TransferResult]) -> TransferResult:
    """Run one side; its end of the pipe closes when it stops, as a channel would."""
    try:
        return await job
    finally:
        end.close()


def transfer(
    src: Path, dst: Path, *, progress: object = None, **receiver: object
) -> tuple[TransferResult | BaseException, TransferResult | BaseException]:
    """Send ``src`` into the directory ``dst``; each side's result or exception."""

    async def go() -> list[TransferResult | BaseException]:
        a, b = pipe()
        tree = tree_of(src)
        base = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
        try:
            sender = Sender(a, [tree], chunk_size=C, progress=progress)  # type: ignore[arg-type]
            recv = Receiver(b, base, **receiver)  # type: ignore[arg-type]
            return await asyncio.wait_for(
                asyncio.gather(
                    closing(a, sender.run()), closing(b, recv.run()), return_exceptions=True
                ),
                TIMEOUT,
            )
        finally:
            tree.close()
            os.close(base)

    sent, received = asyncio.run(go())
    return sent, received


def test_a_tree_goes_through_with_content_modes_and_times(tmp_path: Path) -> None:
    """Files, an empty file, a subdirectory and a symlink: the copy matches, the link is
    left out and reported at both ends."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(3 * C + 5))
    (src / "empty").write_bytes(b"")
    (src / "sub" / "b.txt").write_text("b")
    (src / "link").symlink_to("a.bin")
    (src / "sub" / "b.txt").chmod(0o640)
    os.utime(src / "a.bin", ns=(1, 1_600_000_000_000_000_001))
    (tmp_path / "dst").mkdir()
    sent, received = transfer(src, tmp_path / "dst")
    assert isinstance(sent, TransferResult) and isinstance(received, TransferResult)
    left_out = ("src/link", "left out: symlink (not followed)")
    assert (received.files, received.dirs, received.failed) == (3, 2, [left_out])
    assert (sent.files, sent.failed) == (3, [("src/link", "symlink (not followed)")])
    assert sent.bytes_sent == received.bytes_sent == 3 * C + 6
    out = tmp_path / "dst" / "src"
    assert (out / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert (out / "a.bin").stat().st_mtime_ns == 1_600_000_000_000_000_001
    assert (out / "sub" / "b.txt").stat().st_mode & 0o777 == 0o640
    assert not (out / "link").exists() and (out / "empty").read_bytes() == b""


def test_the_same_transfer_again_is_skipped_and_a_changed_file_needs_force(
    tmp_path: Path,
) -> None:
    """Same digests: nothing sent; different content: FILE_ABORT unless the receiver forces."""
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(2 * C))
    dst = tmp_path / "dst"
    dst.mkdir()
    transfer(src, dst)
    sent, received = transfer(src, dst)
    assert isinstance(sent, TransferResult) and isinstance(received, TransferResult)
    assert (sent.skipped, sent.bytes_sent, received.skipped) == (1, 0, 1)
    src.write_bytes(os.urandom(2 * C))
    sent, _ = transfer(src, dst)
    assert isinstance(sent, TransferResult)
    assert sent.failed == [("f.bin", "exists with different content (use --force to replace it)")]
    sent, _ = transfer(src, dst, force=True)
    assert isinstance(sent, TransferResult) and sent.files == 1
    assert (dst / "f.bin").read_bytes() == src.read_bytes()


class Interrupted(Exception):
    """Raised by a progress callback to break a transfer."""


def test_an_interrupted_transfer_resumes_after_every_chunk_that_crossed(tmp_path: Path) -> None:
    """Broken after k chunks went out, the receiver has verified and recorded all k (the
    last one too), and the same transfer resumes at chunk k, not k - 1 (§18.8)."""
    src = tmp_path / "r.bin"
    src.write_bytes(os.urandom(10 * C + 7))
    dst = tmp_path / "dst"
    dst.mkdir()

    def stop_after_four(p: Progress) -> None:
        if p.file_bytes >= 4 * C:
            raise Interrupted

    sent, received = transfer(src, dst, progress=stop_after_four)
    assert isinstance(sent, Interrupted)
    assert isinstance(received, RemoteProtocolError), received
    part, meta = (dst / n for n in part_names("r.bin"))
    assert part.exists() and not (dst / "r.bin").exists()
    body = meta.read_bytes()
    recorded = (len(body) - 10 - int.from_bytes(body[8:10], "big")) // DIGEST_SIZE
    assert recorded == 4
    sent, received = transfer(src, dst)
    assert isinstance(sent, TransferResult) and isinstance(received, TransferResult)
    assert sent.bytes_resumed == received.bytes_resumed == 4 * C
    assert sent.bytes_sent == 6 * C + 7
    assert (dst / "r.bin").read_bytes() == src.read_bytes()


def frame(ftype: FrameType, message: object) -> bytes:
    """One control frame."""
    return encode_message(ftype, message)  # type: ignore[arg-type]


def chunk(data: bytes) -> bytes:
    """A CHUNK frame with the right digest."""
    return chunk_header(len(data)) + data + hashlib.sha256(data).digest()


def by_hand(dst: Path, body: bytes, size: int) -> tuple[list[Offer], BaseException | None]:
    """Send a one-file manifest, read the plan, then send ``body`` and end the stream;
    the offers received and how the receiver ended."""

    async def go() -> tuple[list[Offer], BaseException | None]:
        a, b = pipe()
        base = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
        try:
            task = asyncio.create_task(closing(b, Receiver(b, base).run()))
            head = frame(FrameType.HELLO, Hello(1, C))
            head += frame(FrameType.ENTRIES, [Entry("x.bin", "f", size, 0o644, 1)])
            await a.write(head + frame(FrameType.ENTRIES_END, EntriesEnd(1, size)))
            stream = FrameStream(a)
            plan = await stream.next()
            assert plan is not None and plan[0] is FrameType.PLAN
            await a.write(body)
            a.close()
            try:
                await asyncio.wait_for(task, TIMEOUT)
            except (RemoteProtocolError, TransferFailed) as exc:
                return plan[1], exc
            return plan[1], None
        finally:
            os.close(base)

    return asyncio.run(go())


def test_a_stream_that_ends_after_a_whole_chunk_keeps_that_chunk(tmp_path: Path) -> None:
    """The last chunk received before the stream ended counts as verified: the next plan
    offers it (it used to offer one chunk less than was verified, §18.8)."""
    a, b = os.urandom(C), os.urandom(1000)
    size = len(a) + len(b)
    _, ended = by_hand(tmp_path, frame(FrameType.FILE, FileStart(0, 0)) + chunk(a), size)
    assert isinstance(ended, RemoteProtocolError) and "ended inside a file" in str(ended)
    digests = [hashlib.sha256(a).digest(), hashlib.sha256(b).digest()]
    rest = frame(FrameType.FILE, FileStart(0, C)) + chunk(b)
    rest += frame(FrameType.FILE_END, FileEnd(0, file_digest(size, C, digests)))
    offers, ended = by_hand(tmp_path, rest + frame(FrameType.DONE, Done()), size)
    assert offers == [Offer(OfferAction.SEND, C, digests[:1])]
    assert ended is None and (tmp_path / "x.bin").read_bytes() == a + b


def test_a_corrupt_last_chunk_is_not_kept_when_the_stream_ends(tmp_path: Path) -> None:
    """A chunk whose digest does not match is never recorded, even as the stream ends."""
    a = os.urandom(C)
    bad = chunk_header(C) + a + b"\0" * 32
    _, ended = by_hand(tmp_path, frame(FrameType.FILE, FileStart(0, 0)) + bad, 2 * C)
    assert isinstance(ended, RemoteProtocolError)
    offers, _ = by_hand(tmp_path, b"", 2 * C)
    assert offers == [Offer(OfferAction.SEND, 0, [])]


def test_an_entry_the_receiver_refuses_fails_at_both_ends(tmp_path: Path) -> None:
    """A FAIL offer (here from the receiver's check) is a failed entry on both sides."""
    src = tmp_path / "s.txt"
    src.write_text("s")
    dst = tmp_path / "dst"
    dst.mkdir()
    sent, received = transfer(src, dst, rename_top="a", check=lambda parts: "refused: no")
    assert isinstance(sent, TransferResult) and isinstance(received, TransferResult)
    assert sent.failed == [("s.txt", "refused: no")] == received.failed


@pytest.mark.parametrize("size", [0, 1, C, C + 1])
def test_sizes_around_the_chunk_size_round_trip(tmp_path: Path, size: int) -> None:
    """Empty, one byte, exactly one chunk, and one chunk and a byte."""
    src = tmp_path / "f"
    src.write_bytes(os.urandom(size))
    dst = tmp_path / "dst"
    dst.mkdir()
    sent, _ = transfer(src, dst)
    assert isinstance(sent, TransferResult) and sent.files == 1
    assert (dst / "f").read_bytes() == src.read_bytes()
