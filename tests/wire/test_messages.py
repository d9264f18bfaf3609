"""Tests for pstp.wire.messages: channel control messages and CHANNEL_DATA bodies."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pstp.exceptions import RemoteProtocolError
from pstp.wire.messages import (
    CHANNEL_DATA_HEADER_LEN,
    INITIAL_WINDOW,
    MAX_WINDOW,
    Accept,
    Close,
    ControlMessage,
    Eof,
    Open,
    Reject,
    Window,
    decode_channel_data,
    decode_control,
    encode_channel_data,
    encode_control,
)

u32 = st.integers(0, 0xFFFFFFFF)
windows = st.integers(0, MAX_WINDOW)
codes = st.integers(0, 0xFFFF)
reasons = st.text(max_size=200).filter(lambda s: len(s.encode()) <= 200)
param_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.lists(st.text(max_size=10), max_size=4),
)
messages: st.SearchStrategy[ControlMessage] = st.one_of(
    st.builds(
        Open,
        u32,
        st.text(min_size=1, max_size=64).filter(lambda s: len(s.encode()) <= 64),
        windows,
        st.dictionaries(st.text(max_size=10), param_values, max_size=4),
    ),
    st.builds(Accept, u32, windows),
    st.builds(Reject, u32, codes, reasons),
    st.builds(Window, u32, st.integers(1, MAX_WINDOW)),
    st.builds(Eof, u32),
    st.builds(
        Close, u32, codes, st.one_of(st.none(), st.integers(-(1 << 31), (1 << 31) - 1)), reasons
    ),
)


@given(messages)
def test_control_messages_round_trip(msg: ControlMessage) -> None:
    """decode_control(encode_control(m)) == m for every message type."""
    assert decode_control(encode_control(msg)) == msg


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    """decode_control on arbitrary bytes returns a message or raises RemoteProtocolError."""
    with contextlib.suppress(RemoteProtocolError):
        decode_control(data)


def test_wire_form_is_a_tagged_msgpack_array() -> None:
    """Each message is a MessagePack array whose first element is its tag (§14)."""
    assert msgspec.msgpack.decode(encode_control(Open(1, "exec", INITIAL_WINDOW))) == [
        1,
        1,
        "exec",
        INITIAL_WINDOW,
        {},
    ]
    assert msgspec.msgpack.decode(encode_control(Accept(3, INITIAL_WINDOW))) == [
        2,
        3,
        INITIAL_WINDOW,
    ]
    assert msgspec.msgpack.decode(encode_control(Eof(5))) == [5, 5]
    # Trailing optional fields may be left out by the sender.
    assert decode_control(msgspec.msgpack.encode([6, 7])) == Close(7)
    assert decode_control(msgspec.msgpack.encode([3, 7, 2])) == Reject(7, 2, "")


@pytest.mark.parametrize(
    "raw",
    [
        [7, 1],  # unknown tag
        [2, 1, INITIAL_WINDOW, 5],  # extra field
        [4, 1, 0],  # WINDOW increment of zero
        [4, 1, MAX_WINDOW + 1],  # increment past 2^31-1
        [2, 1, MAX_WINDOW + 1],  # window past 2^31-1
        [5, -1],  # negative channel id
        [5, 1 << 32],  # channel id past 32 bits
        [1, 1, "", INITIAL_WINDOW],  # empty kind
        [1, 1, "k" * 65, INITIAL_WINDOW],  # kind too long
        [1, 1, "k", INITIAL_WINDOW, {"a": {"b": 1}}],  # nested parameter
        [1, 1, "k", INITIAL_WINDOW, {"a": [1]}],  # list of non-strings
        [1, 1, "k", INITIAL_WINDOW, {"a": b"x"}],  # bytes parameter
        [3, 1, 0x10000, ""],  # code past 16 bits
        [3, 1, 2, "r" * 201],  # reason too long
        [6, 1, 0, 1 << 31, ""],  # exit status past int32
        [6, 1, 0, -(1 << 31) - 1, ""],  # exit status below int32
        {"channel": 1},  # a map, not an array
    ],
)
def test_invalid_messages_are_refused(raw: object) -> None:
    """Out-of-range integers, bad strings, unknown tags and extra fields are refused."""
    with pytest.raises(RemoteProtocolError, match="bad channel control message"):
        decode_control(msgspec.msgpack.encode(raw))


@given(u32, st.binary(max_size=100))
def test_channel_data_round_trips(channel: int, data: bytes) -> None:
    """decode_channel_data(encode_channel_data(c, d)) == (c, d), with a 4-byte id prefix."""
    body = encode_channel_data(channel, data)
    assert len(body) == CHANNEL_DATA_HEADER_LEN + len(data)
    assert body[:4] == channel.to_bytes(4, "big")
    assert decode_channel_data(body) == (channel, data)
    assert encode_channel_data(channel, memoryview(data)) == body


@pytest.mark.parametrize("body", [b"", b"\x00", b"\x00\x00\x01"])
def test_channel_data_shorter_than_the_id_is_refused(body: bytes) -> None:
    """A CHANNEL_DATA body shorter than its 4-byte channel id is a protocol error."""
    with pytest.raises(RemoteProtocolError, match="too short"):
        decode_channel_data(body)


def test_channel_data_may_be_empty() -> None:
    """A bare channel id is a valid, empty CHANNEL_DATA body."""
    assert decode_channel_data(b"\x00\x00\x00\x09") == (9, b"")


def test_limits_count_utf8_bytes_and_bad_utf8_is_a_protocol_error() -> None:
    """A 64-character kind of 2-byte characters is too long; invalid UTF-8 is refused."""
    from pstp.exceptions import RemoteProtocolError
    from pstp.wire.messages import Open, decode_control, encode_control

    with pytest.raises(RemoteProtocolError):
        decode_control(encode_control(Open(1, "é" * 64, 65536)))
    assert decode_control(encode_control(Open(1, "é" * 32, 65536))).kind == "é" * 32
    raw = bytearray(encode_control(Open(1, "ab", 65536)))
    raw[raw.index(b"ab")] = 0xFF
    with pytest.raises(RemoteProtocolError):
        decode_control(bytes(raw))
