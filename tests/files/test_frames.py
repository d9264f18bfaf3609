"""File frames, their messages and the sans-I/O decoder (docs/protocol.md §18.2-§18.4, §18.7)."""

from __future__ import annotations

import msgspec
import pytest

from pstp.files.frames import Done, LeftOut

ENCODER = msgspec.msgpack.Encoder()


def test_done_encodes_as_the_spec_example_and_accepts_the_old_empty_array() -> None:
    """DONE with nothing left out is `92 90 00`; an empty array still decodes to it."""
    assert ENCODER.encode(Done()) == bytes.fromhex("929000")
    assert msgspec.msgpack.decode(b"\x90", type=Done) == Done()
    done = Done([LeftOut("t/link", "symlink (not followed)")], 3)
    assert msgspec.msgpack.decode(ENCODER.encode(done), type=Done) == done


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
        msgspec.msgpack.decode(raw, type=Done)
