"""Tests for pstp.protocol.streams: the stream frames of exec, shell and action channels."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pstp.client import remote
from pstp.daemon import exec as daemon_exec
from pstp.exceptions import FrameTooLarge, RemoteProtocolError
from pstp.protocol.streams import (
    MAX_FRAME,
    RESIZE,
    SIGNAL,
    SIGNALS,
    STDERR,
    STDIN,
    STDOUT,
    Direction,
    Frame,
    FrameDecoder,
    decode_resize,
    decode_signal,
    encode_frame,
    encode_resize,
    encode_signal,
    failure_status,
)
from pstp.wire.messages import ChannelCode


def test_daemon_and_client_share_one_codec() -> None:
    """Both sides use the same decoder and encoders (no copy to drift apart)."""
    assert remote.FrameDecoder is daemon_exec.FrameDecoder is FrameDecoder
    assert remote.encode_frame is daemon_exec.encode_frame is encode_frame


@pytest.mark.parametrize(
    ("code", "reason", "status"),
    [
        (ChannelCode.NOT_FOUND, "command not found: x", 127),
        (ChannelCode.NOT_FOUND, "no such action: y", 127),
        (ChannelCode.NOT_FOUND, "", 127),
        (ChannelCode.CANNOT_EXECUTE, "", 126),
        (ChannelCode.BAD_PARAMS, "bad params: w", 255),
        (ChannelCode.APPLICATION_ERROR, "", 255),
        (ChannelCode.APPLICATION_ERROR, "handler failed", 255),
        # An older device: APPLICATION_ERROR and a reason prefix (§17.3).
        (ChannelCode.APPLICATION_ERROR, "command not found: x", 127),
        (ChannelCode.APPLICATION_ERROR, "no such action: y", 127),
        (ChannelCode.APPLICATION_ERROR, "cannot execute: z", 126),
        (ChannelCode.REFUSED, "command not found: x", None),
        (ChannelCode.CANCELLED, "", None),
        (ChannelCode.GOING_AWAY, "shutting down", None),
        (999, "", None),
    ],
)
def test_failure_status(code: int, reason: str, status: int | None) -> None:
    """Failure codes map to shell statuses in one table; other codes are the caller's."""
    assert failure_status(code, reason) == status


# -- frames (sans-I/O) -----------------------------------------------------------------

client_frames = st.one_of(
    st.builds(lambda b: Frame(STDIN, b), st.binary(max_size=300)),
    st.builds(
        lambda r, c: Frame(RESIZE, encode_resize(r, c)[5:]),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
    ),
    st.builds(lambda i: Frame(SIGNAL, bytes([i])), st.integers(0, len(SIGNALS) - 1)),
)
server_frames = st.builds(Frame, st.sampled_from([STDOUT, STDERR]), st.binary(max_size=300))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(client_frames, max_size=8), st.lists(st.integers(0, 10_000), max_size=10))
def test_client_frames_round_trip_in_any_split(frames: list[Frame], cuts: list[int]) -> None:
    """Encoded client frames decode to the same frames however the bytes are split."""
    wire = b"".join(encode_frame(f.type, f.payload) for f in frames)
    decoder = FrameDecoder(Direction.TO_SERVER)
    got = [f for piece in split(wire, cuts) for f in decoder.feed(piece)]
    decoder.eof()
    assert got == frames
    assert decoder.pending == 0


@given(st.lists(server_frames, max_size=8), st.lists(st.integers(0, 10_000), max_size=10))
def test_server_frames_round_trip_in_any_split(frames: list[Frame], cuts: list[int]) -> None:
    """Server-to-client frames decode back to what was sent, however the bytes are split."""
    wire = b"".join(encode_frame(f.type, f.payload) for f in frames)
    decoder = FrameDecoder(Direction.TO_CLIENT)
    assert [f for piece in split(wire, cuts) for f in decoder.feed(piece)] == frames


def outcome(decoder: FrameDecoder, data: bytes) -> object:
    """What feeding ``data`` then EOF gives: the frames, or the error class."""
    try:
        frames = [(f.type, f.payload) for f in decoder.feed(data)]
        decoder.eof()
    except RemoteProtocolError as exc:
        return type(exc)
    return frames


@given(st.binary(max_size=200), st.sampled_from(list(Direction)))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, direction: Direction) -> None:
    """Any input gives frames or a RemoteProtocolError, never another exception."""
    outcome(FrameDecoder(direction), data)
    outcome(FrameDecoder(Direction.TO_CLIENT), data)


@given(st.binary(min_size=1, max_size=64))
def test_bytes_after_a_bad_frame_never_parse(tail: bytes) -> None:
    """After an error the decoder stays failed, whatever follows."""
    decoder = FrameDecoder(Direction.TO_SERVER)
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\x07\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError):
        decoder.feed(tail)
    with pytest.raises(RemoteProtocolError):
        decoder.eof()


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    """A length above 1 MiB fails on the 5-byte header; exactly 1 MiB is fine."""
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(bytes([STDIN]) + (MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        FrameDecoder(Direction.TO_CLIENT).feed(bytes([STDOUT]) + (2**32 - 1).to_bytes(4, "big"))
    big = encode_frame(STDIN, bytes(MAX_FRAME))
    assert FrameDecoder().feed(big) == [Frame(STDIN, bytes(MAX_FRAME))]
    with pytest.raises(ValueError):
        encode_frame(STDIN, bytes(MAX_FRAME + 1))
    with pytest.raises(ValueError):
        encode_frame(256)


@pytest.mark.parametrize(
    ("direction", "data"),
    [
        (Direction.TO_SERVER, b"\x03\x00\x00\x00\x00"),  # unknown type
        (Direction.TO_CLIENT, b"\x02\x00\x00\x00\x00"),  # SIGNAL is client → server only
        (Direction.TO_SERVER, b"\x01\x00\x00\x00\x03abc"),  # RESIZE not 4 bytes
        (Direction.TO_SERVER, b"\x02\x00\x00\x00\x01\x08"),  # no signal 8
        (Direction.TO_SERVER, b"\x02\x00\x00\x00\x02\x00\x00"),  # SIGNAL not 1 byte
    ],
)
def test_malformed_frames_are_rejected(direction: Direction, data: bytes) -> None:
    """Unknown types and malformed RESIZE/SIGNAL payloads raise RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError):
        FrameDecoder(direction).feed(data)


def test_eof_inside_a_frame_is_an_error() -> None:
    """A stream that ends mid-frame fails at eof(); the pending bytes are counted."""
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00\x00\x00\x05ab") == []
    assert decoder.pending == 7
    with pytest.raises(RemoteProtocolError):
        decoder.eof()


def test_signal_and_resize_codecs() -> None:
    """SIGNAL and RESIZE encode per the table, and bad values are refused."""
    assert encode_signal("SIGTERM") == encode_signal("term") == b"\x02\x00\x00\x00\x01\x01"
    assert decode_signal(b"\x07") == "WINCH"
    assert encode_resize(40, 100) == b"\x01\x00\x00\x00\x04\x00\x28\x00\x64"
    assert decode_resize(encode_resize(40, 100)[5:]) == (40, 100)
    for bad in (lambda: encode_signal("STOP"), lambda: encode_resize(70000, 1)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError):
        encode_frame(-1)
    with pytest.raises(ValueError):
        encode_frame(STDIN, b"x" * (MAX_FRAME + 1))
