"""The sender and the receiver over an in-memory byte pipe (docs/protocol.md §18.5-§18.9)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest

from pstp.exceptions import RemoteProtocolError, TransferFailed
from pstp.files import frames as m
from pstp.files.disk import PartMeta, Reserve, Tree, boot_id, meta_bytes, part_names
from pstp.files.engine import FrameStream, Progress, Receiver, Sender, TransferResult
from pstp.files.frames import DIGEST_SIZE, FrameType, OfferAction
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
    return m.encode_message(ftype, message)  # type: ignore[arg-type]


def chunk(data: bytes) -> bytes:
    """A CHUNK frame with the right digest."""
    return m.chunk_header(len(data)) + data + hashlib.sha256(data).digest()


def by_hand(dst: Path, body: bytes, size: int) -> tuple[list[m.Offer], BaseException | None]:
    """Send a one-file manifest, read the plan, then send ``body`` and end the stream;
    the offers received and how the receiver ended."""

    async def go() -> tuple[list[m.Offer], BaseException | None]:
        a, b = pipe()
        base = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
        try:
            task = asyncio.create_task(closing(b, Receiver(b, base).run()))
            head = frame(FrameType.HELLO, m.Hello(1, C))
            head += frame(FrameType.ENTRIES, [m.Entry("x.bin", "f", size, 0o644, 1)])
            await a.write(head + frame(FrameType.ENTRIES_END, m.EntriesEnd(1, size)))
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
    _, ended = by_hand(tmp_path, frame(FrameType.FILE, m.FileStart(0, 0)) + chunk(a), size)
    assert isinstance(ended, RemoteProtocolError) and "ended inside a file" in str(ended)
    digests = [hashlib.sha256(a).digest(), hashlib.sha256(b).digest()]
    rest = frame(FrameType.FILE, m.FileStart(0, C)) + chunk(b)
    rest += frame(FrameType.FILE_END, m.FileEnd(0, m.file_digest(size, C, digests)))
    offers, ended = by_hand(tmp_path, rest + frame(FrameType.DONE, m.Done()), size)
    assert offers == [m.Offer(OfferAction.SEND, C, digests[:1])]
    assert ended is None and (tmp_path / "x.bin").read_bytes() == a + b


def test_a_corrupt_last_chunk_is_not_kept_when_the_stream_ends(tmp_path: Path) -> None:
    """A chunk whose digest does not match is never recorded, even as the stream ends."""
    a = os.urandom(C)
    bad = m.chunk_header(C) + a + b"\0" * 32
    _, ended = by_hand(tmp_path, frame(FrameType.FILE, m.FileStart(0, 0)) + bad, 2 * C)
    assert isinstance(ended, RemoteProtocolError)
    offers, _ = by_hand(tmp_path, b"", 2 * C)
    assert offers == [m.Offer(OfferAction.SEND, 0, [])]


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


# -- a hand-made sender: the receiver's checks (§18.4, §18.6, §18.9) ---------------------------


def replies(data: bytes) -> list[tuple[FrameType, object]]:
    """The control frames in ``data``."""
    decoder = m.FrameDecoder()
    decoder.feed(data)
    decoder.eof()
    out: list[tuple[FrameType, object]] = []
    while (frame := decoder.next_frame()) is not None:
        assert isinstance(frame, m.Control)
        out.append((frame.type, frame.message))
    return out


def receive(
    dst: Path, stream: bytes, **kw: object
) -> tuple[list[tuple[FrameType, object]], object]:
    """Feed a Receiver ``stream`` then the end; its replies and its result or exception."""

    async def go() -> tuple[bytes, object]:
        a, b = pipe()
        base = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
        try:
            await a.write(stream)
            a.close()
            job = closing(b, Receiver(b, base, **kw).run())  # type: ignore[arg-type]
            (result,) = await asyncio.wait_for(asyncio.gather(job, return_exceptions=True), TIMEOUT)
            got = b""
            while data := await a.read():
                got += data
            return got, result
        finally:
            os.close(base)

    got, result = asyncio.run(go())
    return replies(got), result


def manifest(*entries: m.Entry, chunk_size: int = C, version: int = 1) -> bytes:
    """HELLO, ENTRIES and a matching ENTRIES_END."""
    out = frame(FrameType.HELLO, m.Hello(version, chunk_size))
    out += frame(FrameType.ENTRIES, list(entries))
    total = sum(e.size for e in entries)
    return out + frame(FrameType.ENTRIES_END, m.EntriesEnd(len(entries), total))


F = m.Entry("f", "f", 10, 0o644, 1)
D = m.Entry("d", "d")
TEN = os.urandom(10)
F_END = frame(
    FrameType.FILE_END, m.FileEnd(0, m.file_digest(10, C, [hashlib.sha256(TEN).digest()]))
)
START_F = frame(FrameType.FILE, m.FileStart(0, 0))
RECEIVER_ERRORS = {
    "nothing": (b"", "file stream ended before HELLO"),
    "error-first": (frame(FrameType.ERROR, m.Error("go away")), "go away"),
    "not-hello": (frame(FrameType.DONE, m.Done()), "expected HELLO, got DONE"),
    "version": (manifest(F, version=2), "unsupported file protocol version 2"),
    "chunk-size": (manifest(F, chunk_size=3 << 16), "chunk size 196608 is not allowed"),
    "twice": (manifest(F, F), "entry 'f' listed twice"),
    "orphan": (manifest(m.Entry("x/f", "f")), "entry 'x/f' comes before its directory"),
    "sized-dir": (manifest(m.Entry("d", "d", 5)), "directory 'd' with a size"),
    "dot-dot": (manifest(m.Entry("..", "d")), "invalid entry path '..'"),
    "count": (
        frame(FrameType.HELLO, m.Hello(1, C)) + frame(FrameType.ENTRIES_END, m.EntriesEnd(1, 0)),
        "ENTRIES_END does not match the manifest",
    ),
    "in-manifest": (
        frame(FrameType.HELLO, m.Hello(1, C)) + START_F,
        "unexpected FILE in the manifest",
    ),
    "manifest-cut": (
        frame(FrameType.HELLO, m.Hello(1, C)),
        "file stream ended inside the manifest",
    ),
    "manifest-error": (
        frame(FrameType.HELLO, m.Hello(1, C)) + frame(FrameType.ERROR, m.Error("bye")),
        "bye",
    ),
    "abort-dir": (
        manifest(D) + frame(FrameType.FILE_ABORT, m.FileError(0, "x")),
        "FILE_ABORT for entry 0, which was not offered",
    ),
    "abort-range": (
        manifest(F) + frame(FrameType.FILE_ABORT, m.FileError(4, "x")),
        "FILE_ABORT for entry 4 of 1",
    ),
    "between": (
        manifest(F) + frame(FrameType.PLAN_END, m.PlanEnd(0)),
        "unexpected PLAN_END between",
    ),
    "error-between": (manifest(F) + frame(FrameType.ERROR, m.Error("stop")), "stop"),
    "cut-between": (manifest(F), "file stream ended before DONE"),
    "file-dir": (manifest(D) + START_F, "FILE for entry 0 that was not offered"),
    "end-index": (
        manifest(F) + START_F + chunk(TEN) + frame(FrameType.FILE_END, m.FileEnd(3, b"\0" * 32)),
        "FILE_END for 3 at 10 of 10",
    ),
    "early-end": (manifest(F) + START_F + F_END, "FILE_END for 0 at 0 of 10"),
    "error-inside": (manifest(F) + START_F + frame(FrameType.ERROR, m.Error("oops")), "oops"),
    "done-inside": (manifest(F) + START_F + frame(FrameType.DONE, m.Done()), "unexpected DONE"),
    "bad-digest": (
        manifest(F) + START_F + chunk(TEN) + frame(FrameType.FILE_END, m.FileEnd(0, b"\0" * 32)),
        "f: the file digest does not match",
    ),
    "bad-chunk": (
        manifest(F) + START_F + m.chunk_header(10) + TEN + b"\0" * 32 + F_END,
        "f: chunk 0 failed verification; the partial file is kept (0 B verified)",
    ),
}


@pytest.mark.parametrize(("stream", "error"), RECEIVER_ERRORS.values(), ids=RECEIVER_ERRORS.keys())
def test_the_receiver_refuses_what_breaks_the_protocol_and_says_why(
    tmp_path: Path, stream: bytes, error: str
) -> None:
    """Each broken rule ends the transfer with an exception and, unless the sender ended it
    with ERROR itself, an ERROR reply naming the cause; nothing reaches a final name."""
    got, result = receive(tmp_path, stream)
    assert isinstance(result, RemoteProtocolError | TransferFailed), result
    assert error in str(result)
    sent_error = [m for t, m in got if t is FrameType.ERROR]
    if error not in ("go away", "bye", "stop", "oops"):
        assert len(sent_error) == 1 and error in sent_error[0].error  # type: ignore[attr-defined]
    assert not (tmp_path / "f").exists()


def test_several_sources_need_a_directory_as_the_target(tmp_path: Path) -> None:
    """rename_top with two tops in the manifest is fatal (§18.10)."""
    _, result = receive(tmp_path, manifest(F, m.Entry("g", "f")), rename_top="x")
    assert isinstance(result, TransferFailed)
    assert "several sources need a directory as the target" in str(result)


def test_a_file_abort_inside_a_file_removes_its_part_and_fails_the_entry(tmp_path: Path) -> None:
    """FILE_ABORT in place of the next CHUNK: the part goes, the entry fails, the rest goes on."""
    big = m.Entry("f", "f", 2 * C, 0o644, 1)
    stream = manifest(big) + START_F + chunk(os.urandom(C))
    stream += frame(FrameType.FILE_ABORT, m.FileError(0, "shrank while being sent"))
    got, result = receive(tmp_path, stream + frame(FrameType.DONE, m.Done()))
    assert isinstance(result, TransferResult)
    assert result.failed == [("f", "shrank while being sent")]
    assert not any(p.name.startswith(".f.pstp") for p in tmp_path.iterdir())
    assert got[-1] == (FrameType.SUMMARY, m.Summary(0, 1, C))


def test_a_file_that_exists_is_offered_with_its_digests_and_skipped_if_equal(
    tmp_path: Path,
) -> None:
    """`have` lists the existing file's chunk digests; a FILE for it without replace is an
    error, and DONE without FILE counts it as skipped."""
    (tmp_path / "f").write_bytes(TEN)
    got, result = receive(tmp_path, manifest(F) + frame(FrameType.DONE, m.Done()))
    assert got[0] == (
        FrameType.PLAN,
        [m.Offer(OfferAction.SEND, have=[hashlib.sha256(TEN).digest()])],
    )
    assert isinstance(result, TransferResult) and result.skipped == 1
    _, result = receive(tmp_path, manifest(F) + START_F)
    assert isinstance(result, RemoteProtocolError) and "which exists" in str(result)


def test_left_out_entries_are_reported_as_failed(tmp_path: Path) -> None:
    """DONE's left_out and more become failed entries of the receiver's result (§18.3)."""
    done = m.Done([m.LeftOut("d/l", "symlink (not followed)")], 2)
    got, result = receive(tmp_path, manifest(D) + frame(FrameType.DONE, done))
    assert isinstance(result, TransferResult)
    assert result.failed == [
        ("d/l", "left out: symlink (not followed)"),
        ("...", "2 more left out"),
    ]
    assert got[-1] == (FrameType.SUMMARY, m.Summary(0, 2, 0))


# -- a hand-made receiver: the sender's checks (§18.5, §18.9) ---------------------------------


def send(src: Path, answer: bytes) -> object:
    """Run a Sender of ``src`` against a receiver that answers ``answer`` once the manifest
    is in, then ends the stream; the sender's result or exception."""

    async def go() -> object:
        a, b = pipe()
        tree = tree_of(src)
        try:
            job = asyncio.ensure_future(closing(a, Sender(a, [tree], chunk_size=C).run()))
            stream = FrameStream(b)
            while (got := await stream.next()) is not None and got[0] is not FrameType.ENTRIES_END:
                pass
            await b.write(answer)
            b.close()
            (result,) = await asyncio.wait_for(asyncio.gather(job, return_exceptions=True), TIMEOUT)
            return result
        finally:
            tree.close()

    return asyncio.run(go())


PLAN_SEND = frame(FrameType.PLAN, [m.Offer(OfferAction.SEND)])
PLAN_FAIL = frame(FrameType.PLAN, [m.Offer(OfferAction.FAIL, error="no")])
SENDER_ERRORS = {
    "error": (frame(FrameType.ERROR, m.Error("no room")), "no room"),
    "cut": (PLAN_SEND, "file stream ended before PLAN_END"),
    "too-many": (
        frame(FrameType.PLAN, [m.Offer(OfferAction.SEND)] * 2),
        "more offers than entries",
    ),
    "dir-for-file": (frame(FrameType.PLAN, [m.Offer(OfferAction.DIR)]), "offer 0 does not fit"),
    "offset": (frame(FrameType.PLAN, [m.Offer(OfferAction.SEND, 99)]), "offer 0 does not fit"),
    "too-few": (frame(FrameType.PLAN_END, m.PlanEnd(0)), "0 offers for 1 entries"),
    "unexpected": (frame(FrameType.FILE_OK, m.FileOk(0)), "unexpected FILE_OK before PLAN_END"),
    "no-summary": (PLAN_FAIL + frame(FrameType.PLAN_END, m.PlanEnd(0)), "ended the transfer early"),
    "bad-reply": (
        PLAN_FAIL + frame(FrameType.PLAN_END, m.PlanEnd(0)) + PLAN_FAIL,
        "protocol error: unexpected PLAN from the receiver",
    ),
    "error-reply": (
        PLAN_FAIL
        + frame(FrameType.PLAN_END, m.PlanEnd(0))
        + frame(FrameType.ERROR, m.Error("full")),
        "full",
    ),
}


@pytest.mark.parametrize(("answer", "error"), SENDER_ERRORS.values(), ids=SENDER_ERRORS.keys())
def test_the_sender_refuses_a_bad_plan_or_reply(tmp_path: Path, answer: bytes, error: str) -> None:
    """A plan that does not fit the manifest, or replies out of order, end the sender."""
    src = tmp_path / "s.bin"
    src.write_bytes(b"0123456789")
    result = send(src, answer)
    assert isinstance(result, RemoteProtocolError | TransferFailed), result
    assert error in str(result)


def test_the_sender_counts_a_fail_offer_and_the_summary_ends_it(tmp_path: Path) -> None:
    """FAIL offers are failed entries; SUMMARY after DONE is success; out-of-range FILE_OKs
    are ignored."""
    src = tmp_path / "s.bin"
    src.write_bytes(b"0123456789")
    answer = (
        PLAN_FAIL + frame(FrameType.PLAN_END, m.PlanEnd(0)) + frame(FrameType.FILE_OK, m.FileOk(9))
    )
    result = send(src, answer + frame(FrameType.SUMMARY, m.Summary(0, 1, 0)))
    assert isinstance(result, TransferResult), result
    assert (result.files, result.failed) == (0, [("s.bin", "no")])


# -- the manifest is checked as it arrives (issue 11, item 6) ---------------------------------


def open_manifest(dst: Path, stream: bytes, **kw: object) -> tuple[list[FrameType], object]:
    """Feed a Receiver ``stream`` and leave the stream open (no ENTRIES_END, no end):
    how it ended, within a few seconds, and the frame types it sent."""

    async def go() -> tuple[list[FrameType], object]:
        a, b = pipe()
        base = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
        try:
            await a.write(stream)
            job = Receiver(b, base, **kw).run()  # type: ignore[arg-type]
            try:
                result: object = await asyncio.wait_for(job, 5.0)
            except (RemoteProtocolError, TransferFailed, TimeoutError) as exc:
                result = exc
            got = b""
            while not b.peer.inbox.empty():
                got += b.peer.inbox.get_nowait()
            return [t for t, _ in replies(got)], result
        finally:
            os.close(base)

    return asyncio.run(go())


HELLO = frame(FrameType.HELLO, m.Hello(1, C))


@pytest.mark.parametrize(
    ("entries", "error"),
    [
        ([m.Entry("x" * (1 << 20), "f")], "entry path longer than 4096 bytes"),
        ([m.Entry("ok", "f"), m.Entry("a/../../b", "f")], "invalid entry path 'a/../../b'"),
        ([m.Entry("ok", "f"), m.Entry("ok", "f")], "entry 'ok' listed twice"),
        ([m.Entry("x/f", "f")], "entry 'x/f' comes before its directory"),
    ],
    ids=["mib-path", "dotdot", "twice", "orphan"],
)
def test_a_bad_entry_ends_the_transfer_before_the_manifest_ends(
    tmp_path: Path, entries: list[m.Entry], error: str
) -> None:
    """The receiver judges each entry as its frame arrives: ERROR at once, without waiting
    for an ENTRIES_END that a hostile sender never sends."""
    types, result = open_manifest(tmp_path, HELLO + frame(FrameType.ENTRIES, entries))
    assert isinstance(result, RemoteProtocolError), result
    assert error in str(result) and types == [FrameType.ERROR]
    assert list(tmp_path.iterdir()) == []


def test_a_manifest_past_its_byte_or_entry_limit_ends_the_transfer_at_once(tmp_path: Path) -> None:
    """Valid entries that never end: ERROR once max_manifest bytes or max_entries is passed."""
    batches = [
        frame(FrameType.ENTRIES, [m.Entry(f"f{k}-{i}", "f", 1) for i in range(1000)])
        for k in range(10)
    ]
    types, result = open_manifest(tmp_path, HELLO + b"".join(batches), max_manifest=50_000)
    assert isinstance(result, TransferFailed) and types == [FrameType.ERROR]
    assert "manifest larger than 50000 bytes" in str(result)
    types, result = open_manifest(tmp_path, HELLO + b"".join(batches), max_entries=2500)
    assert isinstance(result, TransferFailed) and types == [FrameType.ERROR]
    assert "more than 2500 entries in one transfer" in str(result)
    # Under the limits the same manifest goes through.
    end = frame(FrameType.ENTRIES_END, m.EntriesEnd(10_000, 10_000))
    _, result = receive(tmp_path, HELLO + b"".join(batches) + end, max_manifest=1 << 20)
    assert isinstance(result, RemoteProtocolError) and "before DONE" in str(result)


def test_several_sources_for_a_renamed_target_fail_at_the_second_top(tmp_path: Path) -> None:
    """rename_top with a second top: the transfer ends then, not at ENTRIES_END."""
    stream = HELLO + frame(FrameType.ENTRIES, [F, m.Entry("g", "f")])
    _, result = open_manifest(tmp_path, stream, rename_top="x")
    assert isinstance(result, TransferFailed)
    assert "several sources need a directory as the target" in str(result)


# -- a hard link planted as the part or its sidecar is never written through (item 13) ------


def plant_resumable(dst: Path, name: str, size: int) -> tuple[Path, Path]:
    """The part and sidecar names of ``name`` in ``dst``, with a sidecar that makes the part
    look resumable (offset 0) to the receiver."""
    part, meta = (dst / n for n in part_names(name))
    meta.write_bytes(
        meta_bytes(PartMeta(size, os.stat(dst.parent / "src" / name).st_mtime_ns, C, boot_id()), [])
    )
    return part, meta


def test_a_hard_link_planted_as_the_part_is_refused_and_the_linked_file_is_untouched(
    tmp_path: Path,
) -> None:
    """Someone who can write in the target plants `.f.pstp-part` as a hard link to a file
    elsewhere, with a sidecar that makes it look resumable: the entry fails, clearly, and
    the other file keeps its content (it used to be truncated and overwritten)."""
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "f.bin"
    src.write_bytes(os.urandom(3 * C))
    dst = tmp_path / "dst"
    dst.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"outside the root")
    part, _ = plant_resumable(dst, "f.bin", 3 * C)
    os.link(victim, part)
    sent, received = transfer(src, dst)
    assert isinstance(sent, TransferResult) and isinstance(received, TransferResult), received
    assert victim.read_bytes() == b"outside the root"
    assert not (dst / "f.bin").exists()
    ((path, error),) = received.failed
    assert path == "f.bin" and "has 2 links" in error and "never written through" in error
    assert sent.failed == received.failed


def test_a_hard_link_planted_as_the_sidecar_is_replaced_not_truncated(tmp_path: Path) -> None:
    """The sidecar is written afresh under its name: a hard link there (to a file that
    happens to look like a sidecar) is unlinked, and the file it leads to keeps its bytes."""
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "f.bin"
    src.write_bytes(os.urandom(2 * C))
    dst = tmp_path / "dst"
    dst.mkdir()
    part, meta = plant_resumable(dst, "f.bin", 2 * C)
    part.write_bytes(b"")
    victim = tmp_path / "victim"
    os.rename(meta, victim)
    before = victim.read_bytes()
    os.link(victim, meta)
    _, received = transfer(src, dst)
    assert isinstance(received, TransferResult) and received.files == 1, received
    assert victim.read_bytes() == before
    assert (dst / "f.bin").read_bytes() == src.read_bytes()


# -- a reserve of free space for the audit log (issue 11, item 7, the put side) -------------

MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def reserved_put(
    src: Path, dst: Path, reserve: Reserve, progress: object = None
) -> tuple[TransferResult | BaseException, TransferResult | BaseException]:
    """Send ``src`` into ``dst`` with 64 KiB chunks, the receiver keeping ``reserve``."""
    return transfer(src, dst, reserve=reserve, progress=progress)


def test_a_put_that_would_eat_into_the_reserve_is_refused_before_it_writes(
    tmp_path: Path, small_fs: Path
) -> None:
    """8 MiB disk, 4 MiB kept for the log: a 5 MiB put is refused with a clear reason and
    leaves nothing behind; a 2 MiB one goes through; without the reserve 5 MiB fits."""
    (small_fs / "audit.sqlite").write_bytes(b"log")
    dst = small_fs / "share"
    dst.mkdir()
    reserve = Reserve(small_fs / "audit.sqlite", 4 * MiB)
    (tmp_path / "src").mkdir()
    big = tmp_path / "src" / "big.bin"
    big.write_bytes(os.urandom(5 * MiB))
    sent, received = reserved_put(big, dst, reserve)
    assert isinstance(received, TransferFailed) and isinstance(sent, TransferFailed)
    assert str(received).startswith(
        f"refused: would leave less than 4 MiB free for the audit log on {small_fs} "
    )
    assert str(sent) == str(received)
    assert list(dst.iterdir()) == []
    small = tmp_path / "src" / "small.bin"
    small.write_bytes(os.urandom(2 * MiB))
    sent, received = reserved_put(small, dst, reserve)
    assert isinstance(received, TransferResult) and received.files == 1, received
    sent, received = transfer(big, dst)
    assert isinstance(received, TransferResult) and received.files == 1, received


def test_a_put_whose_writes_cross_the_reserve_is_stopped_and_keeps_its_part(
    tmp_path: Path, small_fs: Path
) -> None:
    """The announced size fits, but something else fills the disk during the put: the
    receiver stops once the margin is crossed (checked every `every` bytes written)."""
    dst = small_fs / "share"
    dst.mkdir()
    reserve = Reserve(small_fs / "audit.sqlite", 3 * MiB, every=256 * 1024)
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "f.bin"
    src.write_bytes(os.urandom(4 * MiB))
    filled: list[int] = []

    def fill(p: Progress) -> None:
        if p.file_bytes >= MiB and not filled:
            (small_fs / "filler").write_bytes(b"\0" * (2 * MiB))
            filled.append(p.file_bytes)

    _, received = reserved_put(src, dst, reserve, progress=fill)
    assert filled and isinstance(received, TransferFailed), received
    assert "refused: would leave less than 3 MiB free for the audit log" in str(received)
    assert "f.bin stopped, the partial file is kept" in str(received)
    assert not (dst / "f.bin").exists() and (dst / part_names("f.bin")[0]).exists()
    part_size = (dst / part_names("f.bin")[0]).stat().st_size
    assert part_size <= filled[0] + 2 * 256 * 1024 + 2 * C


def test_the_reserve_counts_only_on_its_own_file_system(tmp_path: Path, small_fs: Path) -> None:
    """A reserve for a log elsewhere (another st_dev) never refuses a put here; a missing
    directory means nothing to protect."""
    dst = small_fs / "share"
    dst.mkdir()
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "f.bin"
    src.write_bytes(os.urandom(MiB))
    for reserve in (
        Reserve(tmp_path / "audit.sqlite", 1 << 60),
        Reserve(small_fs / "gone" / "audit.sqlite", 1 << 60),
    ):
        _, received = reserved_put(src, dst, reserve)
        assert isinstance(received, TransferResult) and received.files == 1, received
        (dst / "f.bin").unlink()
    with pytest.raises(ValueError, match="margin"):
        Reserve(tmp_path, -1)
