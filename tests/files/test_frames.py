"""File frames, their messages and the sans-I/O decoder (docs/protocol.md §18.2-§18.4, §18.7)."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pstp.exceptions import FrameTooLarge, RemoteProtocolError
from pstp.files import frames as m
from pstp.files.frames import (
    BATCH_BYTES,
    CHUNK_SIZE,
    MAX_CONTROL,
    NEED_DATA,
    Chunk,
    Control,
    FrameDecoder,
    FrameType,
    Message,
    OfferAction,
)
from pstp.protocol.streams import encode_header

ENCODER = msgspec.msgpack.Encoder()
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)
C = 1 << 16  # the smallest chunk size, to keep chunks small here
MiB_ = 1 << 20

Decoded = tuple[str, object]


def chunk_frame(data: bytes, digest: bytes | None = None) -> bytes:
    """A whole CHUNK frame: data and its SHA-256 (or the given digest)."""
    return m.chunk_header(len(data)) + data + (digest or hashlib.sha256(data).digest())


def drain(decoder: FrameDecoder, out: list[Decoded] | None = None) -> list[Decoded]:
    """Every frame the decoder has whole, as comparable values, up to NEED_DATA or the end
    (appended to ``out`` as they come, so that they survive an error)."""
    out = [] if out is None else out
    while True:
        frame = decoder.next_frame()
        if frame is NEED_DATA:
            return out
        if frame is None:
            out.append(("end", None))
            return out
        if isinstance(frame, Chunk):
            out.append(("chunk", (b"".join(frame.data), frame.digest, frame.offset)))
        else:
            assert isinstance(frame, Control)
            out.append((frame.type.name, frame.message))


def decode_all_ways(data: bytes, file: tuple[int, int, int] | None = None) -> dict[str, object]:
    """Decode ``data`` fed whole, byte by byte, and with trailing data (a partial header,
    then garbage): each way's frames, or the error that ended them."""
    results: dict[str, object] = {}
    for way in ("whole", "bytewise", "trailing", "garbage"):
        decoder = FrameDecoder()
        if file is not None:
            decoder.start_file(*file)
        frames: list[Decoded] = []
        try:
            if way == "bytewise":
                for i in range(len(data)):
                    decoder.feed(data[i : i + 1])
                    drain(decoder, frames)
            else:
                extra = {"whole": b"", "trailing": b"\x01\x00", "garbage": b"\xee" * 5}[way]
                decoder.feed(data + extra)
                drain(decoder, frames)
        except RemoteProtocolError as exc:
            frames.append(("error", str(exc)))
        results[way] = frames
    return results


MESSAGES: list[tuple[FrameType, Message | list[m.Entry] | list[m.Offer]]] = [
    (FrameType.HELLO, m.Hello(1, CHUNK_SIZE)),
    (FrameType.ENTRIES, [m.Entry("d", "d", 0, 0o755, 1), m.Entry("d/ü.txt", "f", 3, 0o600, -5)]),
    (FrameType.ENTRIES_END, m.EntriesEnd(2, 3)),
    (FrameType.FILE, m.FileStart(1, 0)),
    (FrameType.FILE_END, m.FileEnd(1, b"\x01" * 32)),
    (FrameType.FILE_ABORT, m.FileError(1, "changed since it was listed")),
    (FrameType.DONE, m.Done([m.LeftOut("d/l", "symlink (not followed)")], 2)),
    (FrameType.PLAN, [m.Offer(OfferAction.DIR), m.Offer(OfferAction.SEND, C, [b"\x02" * 32])]),
    (FrameType.PLAN_END, m.PlanEnd(7)),
    (FrameType.FILE_OK, m.FileOk(1)),
    (FrameType.FILE_FAILED, m.FileError(1, "exists")),
    (FrameType.SUMMARY, m.Summary(1, 0, 3)),
    (FrameType.ERROR, m.Error("refused")),
]


def encode(ftype: FrameType, message: object) -> bytes:
    """One control frame, whatever the message (lists for ENTRIES and PLAN)."""
    payload = ENCODER.encode(message)
    return encode_header(ftype, len(payload)) + payload


# -- messages (§18.3) ---------------------------------------------------------------------


def test_done_encodes_as_the_spec_example_and_accepts_the_old_empty_array() -> None:
    """DONE with nothing left out is `92 90 00`; an empty array still decodes to it."""
    assert ENCODER.encode(m.Done()) == bytes.fromhex("929000")
    assert msgspec.msgpack.decode(b"\x90", type=m.Done) == m.Done()
    done = m.Done([m.LeftOut("t/link", "symlink (not followed)")], 3)
    assert msgspec.msgpack.decode(ENCODER.encode(done), type=m.Done) == done


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("91c0"),  # left_out nil
        bytes.fromhex("93900001"),  # an extra field
        bytes.fromhex("9291920102") + b"\x00",  # path and reason not text
        bytes.fromhex("9290ff"),  # more negative
    ],
    ids=["nil", "extra-field", "not-text", "negative"],
)
def test_malformed_done_is_refused(raw: bytes) -> None:
    """A DONE that breaks the §18.3 receiver rules does not decode."""
    with pytest.raises(msgspec.ValidationError):  # valid MessagePack, invalid DONE
        msgspec.msgpack.decode(raw, type=m.Done)


def test_the_spec_examples_encode_byte_for_byte() -> None:
    """The complete frames of §18.3's examples are what the encoder writes."""
    t = 1_700_000_000_000_000_000
    entries = [m.Entry("docs", "d", 0, 0o755, t), m.Entry("docs/a.txt", "f", 3, 0o644, t)]
    examples = {
        "01 00000007 92 01 ce00010000": m.encode_message(FrameType.HELLO, m.Hello(1, 65536)),
        "02 00000031 92 95 a4646f6373 a164 00 cd01ed cf17979cfe362a0000"
        " 95 aa646f63732f612e747874 a166 03 cd01a4 cf17979cfe362a0000": encode(
            FrameType.ENTRIES, entries
        ),
        "04 00000003 92 01 00": m.encode_message(FrameType.FILE, m.FileStart(1, 0)),
        "11 00000008 91 96 00 00 90 c0 c2 a0": encode(FrameType.PLAN, [m.Offer(OfferAction.SEND)]),
        "08 00000003 92 90 00": m.encode_message(FrameType.DONE, m.Done()),
    }
    for spec, encoded in examples.items():
        assert encoded == bytes.fromhex(spec), spec
    batched = m.batch_frames(
        FrameType.PLAN, [m.Offer(OfferAction.SEND)], (FrameType.DONE, m.Done())
    )
    assert next(batched) == bytes.fromhex(
        "11 00000008 91 96 00 00 90 c0 c2 a0 08 00000003 92 90 00"
    )


def test_batches_are_cut_near_256_kib_and_end_with_the_end_frame() -> None:
    """A long list goes out in several ENTRIES frames that decode to the same entries."""
    entries = [m.Entry(f"f{i:06}", "f", i) for i in range(40_000)]
    writes = list(
        m.batch_frames(FrameType.ENTRIES, entries, (FrameType.ENTRIES_END, m.EntriesEnd(1, 1)))
    )
    decoder = FrameDecoder()
    for w in writes:
        decoder.feed(w)
    frames = drain(decoder)
    assert len(frames) > 3 and frames[-1] == ("ENTRIES_END", m.EntriesEnd(1, 1))
    assert [e for name, batch in frames[:-1] if name == "ENTRIES" for e in batch] == entries
    assert all(len(w) < 3 * BATCH_BYTES for w in writes)


def test_valid_chunk_sizes_are_powers_of_two_from_64_kib_to_4_mib() -> None:
    """HELLO's chunk size rule (§18.3)."""
    assert [m.valid_chunk_size(c) for c in (1 << 16, 1 << 20, 1 << 22)] == [True] * 3
    assert [m.valid_chunk_size(c) for c in (1 << 15, 1 << 23, 3 << 16, 0)] == [False] * 4


def test_split_path_accepts_clean_relative_paths_only() -> None:
    """Entry paths: relative, no empty, `.` or `..` component, bounded lengths."""
    assert m.split_path("a/b c/ü.txt") == ("a", "b c", "ü.txt")
    for bad in ("", "/a", "a/", "a//b", "./a", "a/..", "a\x00b", "x" * 256, "a/" * 2100 + "a"):
        with pytest.raises(ValueError):
            m.split_path(bad)


def test_file_digest_matches_the_spec_vectors() -> None:
    """§18.7's vectors: an empty file, "abc", and two chunks (and the same two swapped)."""
    assert m.file_digest(0, CHUNK_SIZE, []).hex().startswith("b5ba4cab178d6beb")
    abc = hashlib.sha256(b"abc").digest()
    assert m.file_digest(3, CHUNK_SIZE, [abc]).hex().startswith("5a8544c955c6207a")
    d = [hashlib.sha256(b"\0" * C).digest(), hashlib.sha256(b"\1" * 1000).digest()]
    assert m.file_digest(C + 1000, C, d).hex().startswith("0c48be216f476c24")
    assert m.file_digest(C + 1000, C, d[::-1]).hex().startswith("f2e2f1d5bf523615")


def test_file_digest_covers_size_chunk_size_and_every_chunk() -> None:
    """The file digest changes with the size, the chunk size and any chunk digest."""
    d = [hashlib.sha256(b"x").digest(), hashlib.sha256(b"y").digest()]
    base = m.file_digest(2, CHUNK_SIZE, d)
    assert (
        base
        == hashlib.sha256(
            b"PSTP file v1" + (2).to_bytes(8, "big") + CHUNK_SIZE.to_bytes(4, "big") + b"".join(d)
        ).digest()
    )
    assert len({base, m.file_digest(3, CHUNK_SIZE, d), m.file_digest(2, 1 << 16, d)}) == 3
    assert m.file_digest(2, CHUNK_SIZE, d[::-1]) != base


# -- the decoder (§18.2) ------------------------------------------------------------------


def test_every_message_decodes_the_same_fed_whole_bytewise_and_with_trailing_data() -> None:
    """All control frames in one stream: the same frames however the bytes arrive."""
    data = b"".join(encode(t, m) for t, m in MESSAGES)
    expected = [(t.name, m) for t, m in MESSAGES]
    ways = decode_all_ways(data)
    assert ways["whole"] == ways["bytewise"] == ways["trailing"] == expected
    assert ways["garbage"] == [*expected, ("error", "unknown file frame type 0xee")]


def test_chunks_decode_whole_bytewise_and_with_trailing_data_without_copying() -> None:
    """Inside a file, CHUNKs come back with their data, digest and offset."""
    a, b = b"\x07" * C, b"\x08" * 1000
    data = chunk_frame(a) + chunk_frame(b) + encode(FrameType.FILE_END, m.FileEnd(0, b"\0" * 32))
    ways = decode_all_ways(data, file=(C + 1000, 0, C))
    expected = [
        ("chunk", (a, hashlib.sha256(a).digest(), 0)),
        ("chunk", (b, hashlib.sha256(b).digest(), C)),
        ("FILE_END", m.FileEnd(0, b"\0" * 32)),
    ]
    assert ways["whole"] == ways["bytewise"] == ways["trailing"] == expected
    decoder = FrameDecoder()
    decoder.start_file(C, 0, C)
    received = bytearray(chunk_frame(a))
    decoder.feed(received)
    frame = decoder.next_frame()
    assert isinstance(frame, Chunk) and frame.size == C
    assert frame.data[0].obj is received  # a view of what was fed, not a copy


def test_the_end_of_the_stream_is_clean_only_at_a_frame_boundary() -> None:
    """EOF between frames: None; inside a header or a payload: an error."""
    whole = encode(FrameType.FILE_OK, m.FileOk(3))
    decoder = FrameDecoder()
    decoder.feed(whole)
    decoder.eof()
    assert drain(decoder) == [("FILE_OK", m.FileOk(3)), ("end", None)]
    for cut in (2, len(whole) - 1):
        decoder = FrameDecoder()
        decoder.feed(whole[:cut])
        decoder.eof()
        with pytest.raises(RemoteProtocolError, match="file stream ended inside a frame"):
            decoder.next_frame()
    decoder = FrameDecoder()
    decoder.eof()
    with pytest.raises(RemoteProtocolError, match="after the end"):
        decoder.feed(b"x")


@pytest.mark.parametrize(
    ("data", "file", "error"),
    [
        (b"\x09\x00\x00\x00\x00", None, "unknown file frame type 0x09"),
        (chunk_frame(b"x"), None, "CHUNK outside a file"),
        (chunk_frame(b"x" * 10), (C, 0, C), "CHUNK of 10 bytes at 0 of 65536"),
        (m.chunk_header(C) + b"x", (C + 5, C, C), "CHUNK of 65536 bytes at 65536 of 65541"),
        (encode_header(FrameType.CHUNK, 3), (C, 0, C), "CHUNK of -29 bytes at 0 of 65536"),
        (m.chunk_header(0), (C, C, C), "CHUNK of 0 bytes at 65536 of 65536"),
        (encode_header(FrameType.HELLO, 3) + b"\x91\x01\x02", None, "malformed HELLO frame"),
        (encode(FrameType.HELLO, [1, 2, 3]), None, "malformed HELLO frame"),
        (encode(FrameType.PLAN, [[7]]), None, "malformed PLAN frame"),
        (encode(FrameType.ENTRIES, [["a", "x"]]), None, "malformed ENTRIES frame"),
    ],
    ids=[
        "unknown-type",
        "chunk-outside",
        "short-chunk",
        "past-the-end",
        "shorter-than-digest",
        "empty-chunk",
        "trailing-bytes",
        "extra-field",
        "bad-action",
        "bad-kind",
    ],
)
def test_bad_frames_are_errors_judged_as_early_as_possible(
    data: bytes, file: tuple[int, int, int] | None, error: str
) -> None:
    """Unknown types, misplaced or mis-sized CHUNKs and malformed messages are errors."""
    for way, frames in decode_all_ways(data, file).items():
        assert frames == [("error", error)], way


def test_a_header_is_judged_before_its_payload_is_buffered() -> None:
    """An oversized control frame or a wrong CHUNK length fails on the 5-byte header alone."""
    decoder = FrameDecoder()
    decoder.feed(encode_header(FrameType.PLAN, MAX_CONTROL + 1))
    with pytest.raises(FrameTooLarge, match=f"file frame of {MAX_CONTROL + 1} bytes"):
        decoder.next_frame()
    decoder = FrameDecoder()
    decoder.feed(encode_header(FrameType.PLAN, MAX_CONTROL))
    assert decoder.next_frame() is NEED_DATA  # at the limit: waits for the payload


def test_a_failed_decoder_stays_failed() -> None:
    """After an error every call raises again, even with good input."""
    decoder = FrameDecoder()
    decoder.feed(b"\xee\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    for call in (lambda: decoder.feed(encode(FrameType.FILE_OK, m.FileOk(1))), decoder.next_frame):
        with pytest.raises(RemoteProtocolError, match="failed earlier"):
            call()
    assert decoder.pending == 0


def test_end_file_makes_a_chunk_an_error_again() -> None:
    """A CHUNK is legal only between start_file and end_file (§18.2 rule 4)."""
    decoder = FrameDecoder()
    decoder.start_file(C, 0, C)
    assert decoder.in_file and decoder.position == 0
    decoder.end_file()
    decoder.feed(chunk_frame(b"x" * C))
    with pytest.raises(RemoteProtocolError, match="CHUNK outside a file"):
        decoder.next_frame()


_counts = st.integers(0, (1 << 63) - 1)
_text = st.text(max_size=40)
_digest = st.binary(min_size=32, max_size=32)
_entry = st.builds(
    m.Entry,
    st.text(min_size=1, max_size=20),
    st.sampled_from(["f", "d"]),
    _counts,
    st.integers(0, 0o7777),
    st.integers(-(1 << 63), (1 << 63) - 1),
)
_offer = st.builds(
    m.Offer,
    st.sampled_from(list(OfferAction)),
    _counts,
    st.lists(_digest, max_size=3),
    st.none() | st.lists(_digest, max_size=3),
    st.booleans(),
    _text,
)
_message = st.one_of(
    st.tuples(st.just(FrameType.HELLO), st.builds(m.Hello, _counts, _counts)),
    st.tuples(st.just(FrameType.ENTRIES), st.lists(_entry, max_size=4)),
    st.tuples(st.just(FrameType.ENTRIES_END), st.builds(m.EntriesEnd, _counts, _counts)),
    st.tuples(st.just(FrameType.FILE), st.builds(m.FileStart, _counts, _counts)),
    st.tuples(st.just(FrameType.FILE_END), st.builds(m.FileEnd, _counts, _digest)),
    st.tuples(
        st.sampled_from([FrameType.FILE_ABORT, FrameType.FILE_FAILED]),
        st.builds(m.FileError, _counts, _text),
    ),
    st.tuples(
        st.just(FrameType.DONE),
        st.builds(m.Done, st.lists(st.builds(m.LeftOut, _text, _text), max_size=3), _counts),
    ),
    st.tuples(st.just(FrameType.PLAN), st.lists(_offer, max_size=4)),
    st.tuples(st.just(FrameType.PLAN_END), st.builds(m.PlanEnd, _counts)),
    st.tuples(st.just(FrameType.FILE_OK), st.builds(m.FileOk, _counts)),
    st.tuples(st.just(FrameType.SUMMARY), st.builds(m.Summary, _counts, _counts, _counts)),
    st.tuples(st.just(FrameType.ERROR), st.builds(m.Error, _text)),
)


@SLOW
@given(st.lists(_message, max_size=6), st.data())
def test_any_messages_round_trip_however_the_stream_is_cut(
    messages: list[tuple[FrameType, object]], data: st.DataObject
) -> None:
    """decode(encode(m)) == m for every control message, with the stream cut anywhere."""
    stream = b"".join(encode(t, m) for t, m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    got: list[Decoded] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.feed(stream[a:b])
        got += drain(decoder)
    decoder.eof()
    assert got + drain(decoder) == [*((t.name, m) for t, m in messages), ("end", None)]


@SLOW
@given(st.binary(max_size=300), st.none() | st.tuples(st.integers(1, 3 * C), st.just(0)))
def test_arbitrary_bytes_raise_only_remote_protocol_errors(
    raw: bytes, file: tuple[int, int] | None
) -> None:
    """Whatever the bytes, the decoder returns frames or raises RemoteProtocolError."""
    decoder = FrameDecoder()
    if file is not None:
        decoder.start_file(file[0], file[1], C)
    try:
        decoder.feed(raw)
        drain(decoder)
        decoder.eof()
        drain(decoder)
    except RemoteProtocolError:
        pass


# -- the manifest, checked as it arrives (§18.4; issue 11, item 6) ---------------------------

_name = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=8)
_name = _name.filter(lambda n: n not in (".", ".."))


@st.composite
def _tree(draw: st.DrawFn) -> list[m.Entry]:
    """A valid manifest: unique paths, each parent listed earlier as a directory."""
    entries: list[m.Entry] = []
    dirs: list[str] = []
    seen: set[str] = set()
    for _ in range(draw(st.integers(0, 12))):
        parent = draw(st.sampled_from(["", *dirs]))
        path = f"{parent}/{draw(_name)}" if parent else draw(_name)
        if path in seen:
            continue
        seen.add(path)
        if draw(st.booleans()):
            entries.append(m.Entry(path, "d", 0, 0o755, 1))
            dirs.append(path)
        else:
            entries.append(m.Entry(path, "f", draw(st.integers(0, 1 << 40)), 0o644, 1))
    return entries


def manifest_stream(entries: list[m.Entry]) -> bytes:
    """ENTRIES frames (cut as a sender cuts them) and a matching ENTRIES_END."""
    end = m.EntriesEnd(len(entries), sum(e.size for e in entries))
    return b"".join(m.batch_frames(FrameType.ENTRIES, entries, (FrameType.ENTRIES_END, end)))


def read_manifest(data: bytes, way: str, manifest: m.Manifest) -> object:
    """Feed ``data`` (whole, byte by byte, or with trailing bytes) through a decoder into
    ``manifest``: its entries at ENTRIES_END, or the error that ended it first."""
    decoder = FrameDecoder()
    pieces = [data[i : i + 1] for i in range(len(data))] if way == "bytewise" else [data]
    if way == "trailing":
        pieces = [data + manifest_stream([m.Entry("late", "f")])]
    try:
        for piece in pieces:
            decoder.feed(piece)
            while (frame := decoder.next_frame()) is not NEED_DATA:
                assert isinstance(frame, Control)
                if frame.type is FrameType.ENTRIES:
                    manifest.add(frame.message, frame.length)
                else:
                    got = manifest.end(frame.message)
                    if way != "trailing":
                        return got
    except (RemoteProtocolError, m.ManifestTooLarge) as exc:
        return exc
    return "no ENTRIES_END"


@SLOW
@given(_tree())
def test_a_valid_manifest_is_read_the_same_whole_bytewise_and_with_trailing_data(
    entries: list[m.Entry],
) -> None:
    """Every valid tree comes back entry for entry however the stream is cut; frames
    after ENTRIES_END are an error."""
    data = manifest_stream(entries)
    for way in ("whole", "bytewise"):
        assert read_manifest(data, way, m.Manifest()) == entries, way
    late = read_manifest(data, "trailing", m.Manifest())
    assert isinstance(late, RemoteProtocolError) and "after ENTRIES_END" in str(late)


@SLOW
@given(_tree(), st.integers(0, 12), st.data())
def test_a_bad_entry_fails_when_its_frame_arrives_not_at_entries_end(
    entries: list[m.Entry], where: int, data: st.DataObject
) -> None:
    """One bad entry anywhere fails the manifest in its own frame, however the stream is
    cut, before any ENTRIES_END, with the rule it broke."""
    bad, error = data.draw(
        st.sampled_from(
            [
                (m.Entry("x/" * 2500, "f"), "entry path longer than 4096 bytes"),
                (m.Entry("../e", "f"), "invalid entry path"),
                (m.Entry("/abs", "f"), "invalid entry path"),
                (m.Entry("a//b", "f"), "invalid entry path"),
                (m.Entry("n" * 256, "f"), "invalid entry path"),
                (m.Entry("nowhere/f", "f"), "comes before its directory"),
                (m.Entry("sized", "d", 3), "with a size"),
            ]
        )
    )
    if any(e.path == bad.path for e in entries):
        return
    where = min(where, len(entries))
    listed = [*entries[:where], bad, *entries[where:]]
    batches = [encode(FrameType.ENTRIES, [e]) for e in listed]
    # No ENTRIES_END at all: the error must come from the frame holding the bad entry.
    cut = b"".join(batches[: where + 1])
    for way, data in (("whole", cut), ("bytewise", cut), ("whole", cut + b"\x02\x00\x00")):
        got = read_manifest(data, way, m.Manifest())
        assert isinstance(got, RemoteProtocolError) and error in str(got), (way, got)
        assert len(str(got)) < 300  # a long path is not quoted whole


def test_a_mib_long_path_fails_in_its_own_frame() -> None:
    """The attack of issue 11 item 6: 1 MiB paths, never an ENTRIES_END."""
    frame = encode(FrameType.ENTRIES, [m.Entry("x" * MiB_, "f")])
    decoder, manifest = FrameDecoder(), m.Manifest()
    for i in range(0, len(frame), 1 << 16):
        decoder.feed(frame[i : i + (1 << 16)])
    got = decoder.next_frame()
    assert isinstance(got, Control)
    with pytest.raises(RemoteProtocolError, match="entry path longer than 4096 bytes"):
        manifest.add(got.message, got.length)
    assert manifest.entries == [] and manifest.bytes == len(frame) - 5


def test_duplicates_and_a_wrong_end_are_refused() -> None:
    """A path listed twice fails at once; ENTRIES_END must match the count and total."""
    manifest = m.Manifest()
    manifest.add([m.Entry("d", "d"), m.Entry("d/f", "f", 3)], 40)
    with pytest.raises(RemoteProtocolError, match="entry 'd/f' listed twice"):
        manifest.add([m.Entry("d/f", "f", 3)], 10)
    for count, total in ((2, 4), (3, 3)):
        other = m.Manifest()
        other.add([m.Entry("d", "d"), m.Entry("d/f", "f", 3)], 40)
        with pytest.raises(RemoteProtocolError, match="does not match"):
            other.end(m.EntriesEnd(count, total))
    done = m.Manifest()
    assert done.end(m.EntriesEnd(0, 0)) == []
    with pytest.raises(RemoteProtocolError, match="ENTRIES_END twice"):
        done.end(m.EntriesEnd(0, 0))


def test_the_manifest_is_capped_in_bytes_and_entries_as_it_arrives() -> None:
    """Past max_bytes (ENTRIES payloads) or max_entries, the manifest fails in that frame."""
    frame = encode(FrameType.ENTRIES, [m.Entry(f"f{i}", "f", 1) for i in range(100)])
    second = encode(FrameType.ENTRIES, [m.Entry(f"g{i}", "f", 1) for i in range(100)])
    small = m.Manifest(max_bytes=len(frame) + len(second) - 10)
    assert read_manifest(frame, "whole", small) == "no ENTRIES_END"
    assert read_manifest(second, "whole", small) == "no ENTRIES_END"
    assert small.bytes == small.max_bytes
    again = encode(FrameType.ENTRIES, [m.Entry("h", "f")])
    got = read_manifest(again, "whole", small)
    assert isinstance(got, m.ManifestTooLarge) and "manifest larger than" in str(got)
    few = m.Manifest(max_entries=150)
    read_manifest(frame, "whole", few)
    got = read_manifest(second, "whole", few)
    assert isinstance(got, m.ManifestTooLarge) and "more than 150 entries" in str(got)
    assert len(few.entries) == 150
    assert m.Manifest().max_bytes == m.MAX_MANIFEST_BYTES == 64 << 20
    assert m.Manifest().max_entries == m.MAX_ENTRIES
