"""pstp:// links (docs/protocol.md §16.2): one address or several, old links still read."""

from __future__ import annotations

import pytest

from pstp.daemon.pairing import MAX_LINK_ADDRESSES, code_uri, link_uri, parse_link


def test_one_address_is_the_link_of_old() -> None:
    """A single address gives exactly the format links always had."""
    assert code_uri("192.168.1.20", 9000, "home", "12345678") == (
        "pstp://192.168.1.20:9000/pair?id=home&code=12345678"
    )
    assert code_uri(["fd00::20"], 9000, "home", "1") == "pstp://[fd00::20]:9000/pair?id=home&code=1"


def test_several_addresses_ride_in_alt_and_read_back_in_order() -> None:
    """The first is the authority, the rest `alt=` (IPv6 brackets percent-encoded)."""
    uri = code_uri(["198.18.1.10", "fd00::10", "198.18.2.10"], 9000, "home", "12345678")
    assert uri == (
        "pstp://198.18.1.10:9000/pair?id=home&code=12345678"
        "&alt=%5Bfd00::10%5D:9000&alt=198.18.2.10:9000"
    )
    link = parse_link(uri)
    assert link.kind == "pair"
    assert link.addresses == (("198.18.1.10", 9000), ("fd00::10", 9000), ("198.18.2.10", 9000))
    assert link.params == {"id": "home", "code": "12345678"}


def test_old_links_still_parse() -> None:
    """Links written before `alt` existed read as one address."""
    link = parse_link("pstp://192.168.1.20:9000/pair?id=home&code=12345678")
    assert link.addresses == (("192.168.1.20", 9000),) and link.params["code"] == "12345678"
    peer = parse_link("pstp://[fd00::20]:9000/peer?id=home&key=00ff")
    assert peer.kind == "peer" and peer.addresses == (("fd00::20", 9000),)


def test_links_are_bounded_and_bad_input_is_refused() -> None:
    """At most MAX_LINK_ADDRESSES addresses; no address, or not pstp://, is an error."""
    many = [f"198.18.1.{i}" for i in range(1, 20)]
    assert len(parse_link(link_uri("peer", many, 9000, id="h")).addresses) == MAX_LINK_ADDRESSES
    with pytest.raises(ValueError, match="at least one address"):
        link_uri("pair", [], 9000)
    with pytest.raises(ValueError, match="not a pstp:// link"):
        parse_link("http://example.invalid/pair")
