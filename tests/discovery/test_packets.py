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
