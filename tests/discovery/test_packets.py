"""Tests for pstp.discovery.packets."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pstp.discovery.packets import PING_MIN_LEN, PONG_MAX_LEN, Ping, Pong
from pstp.exceptions import RemoteProtocolError


@given(
    st.binary(min_size=16, max_size=16),
    st.integers(0, 65535),
    st.one_of(st.none(), st.binary(min_size=16, max_size=16)),
)
def test_ping_round_trips_and_is_padded(nonce: bytes, wanted: int, tag: bytes | None) -> None:
    """parse(serialize(p)) == p, and every PING is at least PING_MIN_LEN bytes."""
    raw = Ping(nonce, wanted, tag).serialize()
    assert len(raw) == PING_MIN_LEN
    assert Ping.parse(raw) == Ping(nonce, wanted, tag)


@given(
    st.binary(min_size=16, max_size=16),
    st.integers(1, 65535),
    st.integers(0, 65535),
    st.text(min_size=1, max_size=16).filter(lambda s: 0 < len(s.encode()) <= 64),
)
def test_pong_round_trips_and_never_exceeds_a_ping(
    nonce: bytes, port: int, caps: int, device_id: str
) -> None:
    """parse(serialize(p)) == p, and a PONG is never larger than the smallest PING."""
    raw = Pong(nonce, port, caps, device_id).serialize()
    assert len(raw) <= PONG_MAX_LEN < PING_MIN_LEN
    assert Pong.parse(raw) == Pong(nonce, port, caps, device_id)


@given(st.binary(max_size=600))
def test_parsers_raise_only_protocol_errors(data: bytes) -> None:
    """Arbitrary datagrams parse or raise RemoteProtocolError."""
    for parser in (Ping.parse, Pong.parse):
        with contextlib.suppress(RemoteProtocolError):
            parser(data)


def test_bad_pings_are_refused() -> None:
    """Short, oversized, non-zero padding, unknown flags and wrong magic are refused."""
    good = Ping(b"n" * 16).serialize()
    for bad in (
        good[:-1],
        good + bytes(400),
        good[:-1] + b"\x01",
        good[:6] + b"\x80" + good[7:],
        b"XSTP" + good[4:],
        good[:4] + b"\x03" + good[5:],
    ):
        with pytest.raises(RemoteProtocolError):
            Ping.parse(bad)
    with pytest.raises(ValueError):
        Ping(b"short").serialize()
    with pytest.raises(ValueError):
        Pong(b"n" * 16, 1, 0, "").serialize()


def pong_bytes(
    *, flags: int = 0, port: int = 9000, device_id: bytes = b"home", tail: bytes = b""
) -> bytes:
    """A PONG datagram built by hand, so that fields serialize() refuses can be sent."""
    head = b"PSTP\x02\x02" + bytes((flags, 0))
    body = b"n" * 16 + port.to_bytes(2, "big") + b"\x00\x03"
    return head + body + bytes((len(device_id),)) + device_id + tail


def test_hand_built_pong_matches_serialize() -> None:
    """The hand-built PONG used below is exactly what serialize() produces."""
    assert pong_bytes() == Pong(b"n" * 16, 9000, 3, "home").serialize()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (pong_bytes(flags=0x01), "unknown PONG flags"),
        (pong_bytes(flags=0x80), "unknown PONG flags"),
        (pong_bytes(device_id=b""), "without device id or port"),
        (pong_bytes(port=0), "without device id or port"),
        (pong_bytes(tail=b"\x00"), "trailing bytes"),
        (pong_bytes(device_id=b"\xff\xfe"), "invalid UTF-8"),
        (pong_bytes()[:-1], "truncated"),
        (pong_bytes(device_id=b"d" * 65), "PONG too large"),
        (pong_bytes() + bytes(PONG_MAX_LEN), "PONG too large"),
        (b"PSTP\x02\x01" + pong_bytes()[6:], "unexpected datagram type"),
        (b"PSTP\x03" + pong_bytes()[5:], "unsupported discovery version"),
        (pong_bytes()[:7] + b"\x01" + pong_bytes()[8:], "reserved byte not zero"),
        (b"", "truncated"),
    ],
)
def test_bad_pongs_are_refused(data: bytes, error: str) -> None:
    """Flags, empty id, port 0, trailing or missing bytes and oversize PONGs are refused."""
    with pytest.raises(RemoteProtocolError, match=error):
        Pong.parse(data)


def test_largest_pong_is_accepted() -> None:
    """A PONG with a 64-byte device id is exactly PONG_MAX_LEN and parses."""
    raw = pong_bytes(device_id=b"d" * 64)
    assert len(raw) == PONG_MAX_LEN
    assert Pong.parse(raw).device_id == "d" * 64


def test_ping_header_errors_are_refused() -> None:
    """A PING with a PONG's type byte or a non-zero reserved byte is refused."""
    good = Ping(b"n" * 16).serialize()
    with pytest.raises(RemoteProtocolError, match="unexpected datagram type"):
        Ping.parse(good[:5] + b"\x02" + good[6:])
    with pytest.raises(RemoteProtocolError, match="reserved byte not zero"):
        Ping.parse(good[:7] + b"\x01" + good[8:])
    # A PONG padded to PING size is still not a PING.
    pong = Pong(b"n" * 16, 9000, 0, "home").serialize()
    with pytest.raises(RemoteProtocolError, match="unexpected datagram type"):
        Ping.parse(pong + bytes(PING_MIN_LEN - len(pong)))


def test_ping_with_tag_flag_but_no_room_for_it_is_refused() -> None:
    """A PING whose flag announces a key id tag but whose padding was cut is refused."""
    head = Ping(b"n" * 16, 0, b"t" * 16).serialize()[:24]
    assert Ping.parse(head + bytes(PING_MIN_LEN - 24)).kid_tag == bytes(16)
    with pytest.raises(RemoteProtocolError):
        Ping.parse(head)


@pytest.mark.parametrize("tag", [b"", b"t" * 15, b"t" * 17, b"t" * 32])
def test_ping_serialize_refuses_a_bad_tag_length(tag: bytes) -> None:
    """A key id tag must be exactly 16 bytes."""
    with pytest.raises(ValueError, match="16 bytes"):
        Ping(b"n" * 16, 0, tag).serialize()


@pytest.mark.parametrize(
    "pong",
    [
        Pong(b"n" * 16, 9000, 0, ""),
        Pong(b"n" * 16, 9000, 0, "d" * 65),
        Pong(b"n" * 16, 9000, 0, "é" * 33),  # 66 bytes of UTF-8
        Pong(b"n" * 16, 0, 0, "home"),
        Pong(b"n" * 16, 65536, 0, "home"),
        Pong(b"n" * 16, -1, 0, "home"),
        Pong(b"n" * 15, 9000, 0, "home"),
        Pong(b"n" * 17, 9000, 0, "home"),
    ],
)
def test_pong_serialize_refuses_what_parse_would_refuse(pong: Pong) -> None:
    """serialize() raises ValueError rather than emit a PONG no browser can read back."""
    with pytest.raises(ValueError):
        pong.serialize()


@given(
    st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20)),
    st.one_of(st.integers(1, 65535), st.integers(-1, 70000)),
    st.integers(0, 65535),
    st.text(max_size=70),
)
def test_pong_serialize_round_trips_or_raises(
    nonce: bytes, port: int, caps: int, device_id: str
) -> None:
    """Whatever the fields, serialize() either raises ValueError or parses back equal."""
    pong = Pong(nonce, port, caps, device_id)
    try:
        raw = pong.serialize()
    except ValueError:
        return
    assert Pong.parse(raw) == pong
