"""Tests for pstp.wire.buffer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pstp.exceptions import RemoteProtocolError
from pstp.wire.buffer import Reader, Writer


@given(
    st.integers(0, 255),
    st.integers(0, 65535),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=255),
    st.text(max_size=50),
)
def test_writer_and_reader_agree(a: int, b: int, c: int, d: int, blob: bytes, text: str) -> None:
    """Every field written reads back the same, and nothing is left over."""
    raw = Writer().u8(a).u16(b).u32(c).u64(d).vec8(blob).text8(text[:60]).vec16(blob).getvalue()
    r = Reader(raw)
    assert (r.u8(), r.u16(), r.u32(), r.u64(), r.vec8(), r.text8()) == (a, b, c, d, blob, text[:60])
    assert r.take(r.u16()) == blob
    r.expect_end()


def test_short_reads_and_bad_text_raise_protocol_errors() -> None:
    """Truncation, invalid UTF-8 and leftovers raise RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError):
        Reader(b"\x00").u16()
    with pytest.raises(RemoteProtocolError):
        Reader(b"\x02\xff\xfe").text8()
    with pytest.raises(RemoteProtocolError):
        Reader(b"\x05ab").vec8()
    with pytest.raises(RemoteProtocolError):
        Reader(b"x").expect_end()
    with pytest.raises(ValueError):
        Writer().vec8(b"x" * 256)
    with pytest.raises(ValueError):
        Writer().vec16(b"x" * 65536)


def test_position_and_remaining_track_each_read() -> None:
    """position counts bytes consumed; a failed read consumes nothing."""
    r = Reader(bytearray(b"\x01\x00\x02\x03abc"))
    assert (r.position, r.remaining) == (0, 7)
    r.u8()
    r.u16()
    assert (r.position, r.remaining) == (3, 4)
    with pytest.raises(RemoteProtocolError):
        r.u64()
    with pytest.raises(RemoteProtocolError):
        r.take(-1)
    assert (r.position, r.remaining) == (3, 4)
    assert r.vec8() == b"abc"
    assert r.rest() == b""
    assert (r.position, r.remaining) == (7, 0)
