"""Tests for pstp.wire.frames: round trips and hostile input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pstp.exceptions import RemoteProtocolError
from pstp.wire.buffer import Writer
from pstp.wire.frames import (
    HS_FLAG_DISCOVERY,
    PAIR_FLAG_PAIRING,
    ClosePayload,
    FrameType,
    HsInit,
    HsResp,
    InitPayload,
    PairReq,
    PairResp,
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
        PairReq.parse,
        PairResp.parse,
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


KID, EPH, CT = b"k" * 32, b"e" * 65, b"c" * 16


@pytest.mark.parametrize(
    "msg",
    [
        HsInit(2, 0, KID[:31], None, EPH, CT),
        HsInit(2, 0, KID, None, EPH[:64], CT),
        HsInit(2, HS_FLAG_DISCOVERY, KID, None, EPH, CT),
        HsInit(2, 0, KID, b"n" * 16, EPH, CT),
        HsInit(2, HS_FLAG_DISCOVERY, KID, b"n" * 15, EPH, CT),
        HsInit(2, 0, KID, None, EPH, CT[:15]),
    ],
    ids=[
        "short-kid",
        "short-e",
        "flag-without-nonce",
        "nonce-without-flag",
        "short-nonce",
        "no-tag",
    ],
)
def test_hs_init_check_refuses_inconsistent_fields(msg: HsInit) -> None:
    """check() refuses wrong field lengths, a flag/nonce mismatch and a payload without a tag."""
    with pytest.raises(RemoteProtocolError):
        msg.check()


def test_hs_init_parse_refuses_a_payload_shorter_than_a_tag() -> None:
    """An HS_INIT cut inside the AEAD tag is refused; one whole tag is the minimum."""
    body = HsInit(2, HS_FLAG_DISCOVERY, KID, b"n" * 16, EPH, CT).serialize()[4:]
    assert HsInit.parse(body).ciphertext == CT
    with pytest.raises(RemoteProtocolError):
        HsInit.parse(body[:-1])


def test_hs_resp_needs_room_for_a_tag_and_confirm() -> None:
    """An HS_RESP shorter than e, a tag and confirm_R is refused; exactly that is accepted."""
    body = HsResp(2, EPH, CT, b"f" * 32).serialize()[4:]
    assert HsResp.parse(body) == HsResp(2, EPH, CT, b"f" * 32)
    for cut in (body[:-1], body[:2], body[:1]):
        with pytest.raises(RemoteProtocolError):
            HsResp.parse(cut)


def _init_raw(service: bytes, initiator_id: bytes) -> bytes:
    """An InitPayload as a peer could write it, without the sender-side length checks."""
    w = Writer().u64(1).vec8(b"\x02").u8(1).u16(1).u32(1024)
    return w.vec8(service).vec8(initiator_id).getvalue()


@pytest.mark.parametrize(
    ("parser", "raw"),
    [
        (RespPayload.parse, Writer().u16(1).u32(1024).u32(0).vec8(b"x" * 65).getvalue()),
        (RespPayload.parse, RespPayload(1, 1024, 0, "home").serialize() + b"\x00"),
        (ClosePayload.parse, Writer().u16(0).vec8(b"r" * 201).getvalue()),
        (ClosePayload.parse, ClosePayload(0, "bye").serialize() + b"\x00"),
        (InitPayload.parse, InitPayload(1, (2,), (), 1024, "s").serialize()),
        (InitPayload.parse, InitPayload(1, (2,), (1,), 1024, "s" * 64).serialize()[:-1]),
        (InitPayload.parse, _init_raw(b"s" * 65, b"")),
        (InitPayload.parse, _init_raw(b"session", b"i" * 65)),
    ],
    ids=[
        "long-id",
        "resp-trailing",
        "long-reason",
        "close-trailing",
        "no-suites",
        "truncated",
        "long-service",
        "long-initiator-id",
    ],
)
def test_payload_parsers_refuse_what_writers_never_produce(parser: object, raw: bytes) -> None:
    """Over-long names, over-long reasons, empty lists and trailing bytes are protocol errors."""
    with pytest.raises(RemoteProtocolError):
        parser(raw)  # type: ignore[operator]


def test_init_payload_names_of_64_bytes_are_accepted() -> None:
    """A 64-byte service and initiator id are the longest a peer may send."""
    payload = InitPayload.parse(_init_raw(b"s" * 64, b"i" * 64))
    assert (payload.service, payload.initiator_id) == ("s" * 64, "i" * 64)


# -- PSTP-PAKE frames (§15.2) ---------------------------------------------------------

ids = st.text(min_size=1, max_size=20).filter(lambda s: 0 < len(s.encode()) <= 64)


@given(
    st.integers(0, 255),
    st.sampled_from([0, PAIR_FLAG_PAIRING]),
    st.lists(st.integers(0, 255), min_size=1, max_size=5),
    ids,
    st.binary(min_size=32, max_size=32),
    st.lists(st.integers(0, 65535), min_size=1, max_size=5),
    st.integers(0, 2**32 - 1),
    names,
)
def test_pair_req_round_trips(
    version: int,
    flags: int,
    versions: list[int],
    prover_id: str,
    nonce: bytes,
    suites: list[int],
    max_record: int,
    service: str,
) -> None:
    """parse(serialize(m)) == m for PAIR_REQ."""
    msg = PairReq(
        version, flags, tuple(versions), prover_id, nonce, tuple(suites), max_record, service
    )
    frame = msg.serialize()
    assert parse_frame_header(frame[:4]) == (FrameType.PAIR_REQ, len(frame) - 4)
    assert PairReq.parse(frame[4:]) == msg


@given(
    st.integers(0, 255),
    ids,
    st.binary(max_size=40),
    st.integers(0, 2**32 - 1),
    st.integers(0, 65535),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
def test_pair_resp_round_trips(
    version: int,
    verifier_id: str,
    salt: bytes,
    iterations: int,
    suite: int,
    max_record: int,
    keepalive_ms: int,
) -> None:
    """parse(serialize(m)) == m for PAIR_RESP."""
    msg = PairResp(version, verifier_id, salt, iterations, suite, max_record, keepalive_ms)
    frame = msg.serialize()
    assert parse_frame_header(frame[:4]) == (FrameType.PAIR_RESP, len(frame) - 4)
    assert PairResp.parse(frame[4:]) == msg


def _pair_req_raw(
    *,
    flags: int = 0,
    versions: bytes = b"\x02",
    prover_id: bytes = b"phone",
    suites: tuple[int, ...] = (1,),
    service: bytes = b"session",
) -> bytes:
    """A PAIR_REQ body as a peer could write it, without the sender-side checks."""
    w = Writer().u8(2).u8(flags).vec8(versions).vec8(prover_id).raw(b"n" * 32)
    w.u8(len(suites))
    for suite in suites:
        w.u16(suite)
    return w.u32(65536).vec8(service).getvalue()


def _pair_resp_raw(verifier_id: bytes = b"home") -> bytes:
    """A PAIR_RESP body as a peer could write it, without the sender-side checks."""
    w = Writer().u8(2).vec8(verifier_id).vec8(b"s" * 16)
    return w.u32(100_000).u16(1).u32(65536).u32(0).getvalue()


@pytest.mark.parametrize(
    ("parser", "raw"),
    [
        (PairReq.parse, _pair_req_raw(flags=0x02)),
        (PairReq.parse, _pair_req_raw(flags=0x80 | PAIR_FLAG_PAIRING)),
        (PairReq.parse, _pair_req_raw(versions=b"")),
        (PairReq.parse, _pair_req_raw(suites=())),
        (PairReq.parse, _pair_req_raw(prover_id=b"")),
        (PairReq.parse, _pair_req_raw(prover_id=b"p" * 65)),
        (PairReq.parse, _pair_req_raw(service=b"s" * 65)),
        (PairReq.parse, _pair_req_raw(prover_id=b"\xff")),
        (PairReq.parse, _pair_req_raw() + b"\x00"),
        (PairReq.parse, _pair_req_raw()[:-1]),
        (PairReq.parse, _pair_req_raw()[:20]),
        (PairResp.parse, _pair_resp_raw(b"")),
        (PairResp.parse, _pair_resp_raw(b"v" * 65)),
        (PairResp.parse, _pair_resp_raw(b"\xc3")),
        (PairResp.parse, _pair_resp_raw() + b"\x00"),
        (PairResp.parse, _pair_resp_raw()[:-1]),
    ],
    ids=[
        "req-unknown-flag",
        "req-high-flag",
        "req-no-versions",
        "req-no-suites",
        "req-empty-prover-id",
        "req-long-prover-id",
        "req-long-service",
        "req-bad-utf8",
        "req-trailing",
        "req-truncated",
        "req-cut-in-nonce",
        "resp-empty-verifier-id",
        "resp-long-verifier-id",
        "resp-bad-utf8",
        "resp-trailing",
        "resp-truncated",
    ],
)
def test_pake_parsers_refuse_malformed_frames(parser: object, raw: bytes) -> None:
    """Unknown flags, empty lists, empty or over-long ids, bad UTF-8, trailing bytes: refused."""
    with pytest.raises(RemoteProtocolError):
        parser(raw)  # type: ignore[operator]


def test_pake_frames_accept_64_byte_names() -> None:
    """A 64-byte prover id, service and verifier id are the longest a peer may send."""
    req = PairReq.parse(_pair_req_raw(prover_id=b"p" * 64, service=b"s" * 64))
    assert (req.prover_id, req.service) == ("p" * 64, "s" * 64)
    assert PairResp.parse(_pair_resp_raw(b"v" * 64)).verifier_id == "v" * 64
    assert PairReq.parse(_pair_req_raw(flags=PAIR_FLAG_PAIRING)).flags == PAIR_FLAG_PAIRING


def test_pake_frames_refuse_over_long_names_when_writing() -> None:
    """Names over 64 bytes raise ValueError on the sending side."""
    with pytest.raises(ValueError):
        PairReq(2, 0, (2,), "p" * 65, b"n" * 32, (1,), 65536, "session").serialize()
    with pytest.raises(ValueError):
        PairReq(2, 0, (2,), "phone", b"n" * 32, (1,), 65536, "s" * 65).serialize()
    with pytest.raises(ValueError):
        PairResp(2, "v" * 65, b"s" * 16, 100_000, 1, 65536, 0).serialize()
