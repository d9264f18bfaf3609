"""The answer of an ``actions`` channel against docs/test-vectors/kinds.json (§17.12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pstp.protocol.kinds import (
    LISTING_MAX,
    ActionInfo,
    ArgInfo,
    decode_listing,
    encode_listing,
)

LISTING = json.loads(
    (Path(__file__).parents[2] / "docs" / "test-vectors" / "kinds.json").read_text()
)["listing"]


def test_the_published_listing_encodes_to_its_bytes_and_back() -> None:
    """The example listing encodes to the published MessagePack bytes, entries in order."""
    listing = msgspec.convert(LISTING["value"], list[ActionInfo])
    assert encode_listing(listing).hex() == LISTING["msgpack"]
    assert decode_listing(bytes.fromhex(LISTING["msgpack"])) == listing
    assert msgspec.to_builtins(listing) == LISTING["value"]
    assert list(LISTING["value"][1]["args"][0]) == list(ArgInfo.__struct_fields__)


@pytest.mark.parametrize("case", LISTING["decode"])
def test_a_receiver_accepts(case: dict[str, Any]) -> None:
    """Empty listings and maps with keys a receiver does not know decode."""
    assert msgspec.to_builtins(decode_listing(bytes.fromhex(case["msgpack"]))) == case["value"]


@pytest.mark.parametrize("case", LISTING["rejected"], ids=lambda c: c["why"])
def test_a_receiver_rejects(case: dict[str, Any]) -> None:
    """What is not a listing is a ValueError naming it."""
    with pytest.raises(ValueError, match="malformed action listing"):
        decode_listing(bytes.fromhex(case["msgpack"]))


def test_a_listing_longer_than_the_limit_is_refused() -> None:
    """More than LISTING_MAX bytes is refused before decoding."""
    with pytest.raises(ValueError, match="longer than"):
        decode_listing(b"\x90" + bytes(LISTING_MAX))
