"""Tests for pstp.wire.frames: round trips and hostile input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pstp.exceptions import RemoteProtocolError
from pstp.wire.frames import (
    ClosePayload,
    FrameType,
    HsInit,
    HsResp,
    InitPayload,
    RecordHeader,
    RespPayload,
    frame_header,
    parse_frame_header,
)

names = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 64)


@given(
    st.integers(0, 255),
    st.sampled_from([0, 1, 2, 3]),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=65, max_size=65),
    st.binary(min_size=16, max_size=200),
)
def test_hs_init_round_trips(
    version: int, flags: int, kid: bytes, nonce: bytes, eph: bytes, ct: bytes
) -> None:
    """parse(serialize(m)) == m for HS_INIT."""
    msg = HsInit(version, flags, kid, nonce if flags & 1 else None, eph, ct)
    frame = msg.serialize()
    assert parse_frame_header(frame[:4]) == (FrameType.HS_INIT, len(frame) - 4)
    assert HsInit.parse(frame[4:]) == msg


@given(
    st.integers(0, 255), st.binary(min_size=65, max_size=65), st.binary(min_size=16, max_size=99)
)
def test_hs_resp_round_trips(version: int, eph: bytes, ct: bytes) -> None:
    """parse(serialize(m)) == m for HS_RESP."""
    msg = HsResp(version, eph, ct, b"\x07" * 32)
    assert HsResp.parse(msg.serialize()[4:]) == msg


@given(
    st.integers(0, 2**64 - 1),
    st.lists(st.integers(0, 255), min_size=1, max_size=5),
    st.lists(st.integers(0, 65535), min_size=1, max_size=5),
    st.integers(0, 2**32 - 1),
    names,
)
def test_payloads_round_trip(
    ts: int, versions: list[int], suites: list[int], max_record: int, service: str
) -> None:
    """parse(serialize(m)) == m for the handshake payloads and CLOSE."""
    init = InitPayload(ts, tuple(versions), tuple(suites), max_record, service)
    assert InitPayload.parse(init.serialize()) == init
    resp = RespPayload(suites[0], max_record, max_record, service)
    assert RespPayload.parse(resp.serialize()) == resp
    close = ClosePayload(suites[0], service)
    assert ClosePayload.parse(close.serialize()) == close
    hdr = RecordHeader(versions[0], ts)
    assert RecordHeader.parse(hdr.serialize()) == hdr


def test_close_reason_is_cut_at_a_character_boundary() -> None:
    """An over-long reason is truncated to 200 bytes without splitting a character."""
    raw = ClosePayload(1, "é" * 300).serialize()
    assert ClosePayload.parse(raw).reason == "é" * 100


def test_fields_that_do_not_fit_are_refused_when_writing() -> None:
    """Over-long names and bodies raise ValueError on the sending side."""
    with pytest.raises(ValueError):
        InitPayload(1, (2,), (1,), 1, "x" * 65).serialize()
    with pytest.raises(ValueError):
        frame_header(FrameType.RECORD, 1 << 24)


@pytest.mark.parametrize(
    "parser",
    [
        HsInit.parse,
        HsResp.parse,
        InitPayload.parse,
        RespPayload.parse,
        ClosePayload.parse,
        RecordHeader.parse,
    ],
)
@given(data=st.binary(max_size=300))
def test_parsers_raise_only_remote_protocol_errors(parser: object, data: bytes) -> None:
    """Arbitrary bytes either parse or raise RemoteProtocolError, nothing else."""
    with contextlib.suppress(RemoteProtocolError):
        parser(data)  # type: ignore[operator]


def test_trailing_bytes_and_unknown_flags_are_refused() -> None:
    """Trailing bytes after a payload and unknown HS flags are protocol errors."""
    good = InitPayload(1, (2,), (1,), 65536, "session").serialize()
    with pytest.raises(RemoteProtocolError):
        InitPayload.parse(good + b"\x00")
    msg = HsInit(2, 0, b"k" * 32, None, b"e" * 65, b"c" * 16).serialize()[4:]
    with pytest.raises(RemoteProtocolError):
        HsInit.parse(msg[:1] + b"\x80" + msg[2:])
    with pytest.raises(RemoteProtocolError):
        HsResp.parse(b"\x02\x01" + b"e" * 65 + b"c" * 48)
    with pytest.raises(RemoteProtocolError):
        InitPayload.parse(InitPayload(1, (), (1,), 1, "s").serialize())
