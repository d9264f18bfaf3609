"""Discovery under a spoofed PING flood (issue 11, item 18; docs/protocol.md §8.3).

Before the reserve, 800 PING/s from 400 spoofed sources (2 a second each: within
the per-source rate) spent the whole global budget, and a paired peer's PING was
answered about one time in four (the device was found 9 times out of 12).  Now
part of the global budget is kept for PINGs that carry a valid key tag.
"""

from __future__ import annotations

import os

import pytest

from pstp.discovery.packets import Ping
from pstp.discovery.protocol import Browser, Responder, discovery_tag

KID_KEY = bytes(range(32))
OTHER_KEYS = [bytes([i]) * 32 for i in range(1, 4)]
PEER = ("192.0.2.200", 40000)
FLOOD_RATE = 800  # PINGs a second
SOURCES = 400
SECONDS = 12


def flood(
    r: Responder, ping: object = None, *, seconds: int = SECONDS, tagged_junk: bool = False
) -> int:
    """Run the flood; once a second (mid-second) the paired peer pings.  How many it got."""
    found = 0
    for tick in range(seconds * FLOOD_RATE):
        now = tick / FLOOD_RATE
        if tagged_junk:
            junk = Ping(os.urandom(16), 0, os.urandom(16)).serialize()
        else:
            junk = Ping(os.urandom(16)).serialize()
        r.receive_datagram(junk, (f"10.0.{tick % SOURCES >> 8}.{tick % SOURCES & 0xFF}", 1), now)
        if tick % FLOOD_RATE == FLOOD_RATE // 2:
            peer = Browser(kid_key=KID_KEY).ping if ping is None else ping
            assert isinstance(peer, bytes)
            r.receive_datagram(peer, PEER, now)
            found += any(addr == PEER for _, addr in r.datagrams_to_send())
        else:
            r.datagrams_to_send()
    return found


def keys() -> list[bytes]:
    """The kid keys of the device's paired peers."""
    return [*OTHER_KEYS, KID_KEY]


def test_a_stealth_device_is_found_through_an_untagged_flood() -> None:
    """Stealth mode: the flood's PINGs are refused, and no longer hide the device either."""
    r = Responder("home", 9000, stealth_keys=keys)
    assert flood(r) == SECONDS
    assert r.dropped_rate > 0  # the flood did exhaust the shared budget


def test_a_paired_peer_finds_a_visible_device_through_the_flood() -> None:
    """Not in stealth mode, the keys given recognize the peer's tagged PING."""
    r = Responder("home", 9000, keys=keys)
    assert flood(r) == SECONDS
    assert r.answered_keyed >= SECONDS - 1  # the shared budget was spent each time (or nearly)


def test_junk_tags_are_checked_at_a_bounded_rate_and_do_not_hide_the_device() -> None:
    """A flood of PINGs with made-up tags costs at most (shared + verify rate) checks a second."""
    calls = 0

    def counted() -> list[bytes]:
        nonlocal calls
        calls += 1
        return keys()

    r = Responder("home", 9000, stealth_keys=counted, global_rate=200.0)
    assert flood(r, seconds=4, tagged_junk=True) == 4
    # 150/s shared + 800/s verification, plus the buckets' initial fill.
    assert calls <= (150 + 800) * 5


def test_without_a_reserve_the_flood_hides_the_device() -> None:
    """keyed_share=0 is the old behaviour: the paired peer loses most of the time."""
    r = Responder("home", 9000, stealth_keys=keys, keyed_share=0.0)
    assert flood(r) < SECONDS // 2


def test_untagged_pings_or_wrong_tags_get_nothing_from_the_reserve() -> None:
    """Past the shared budget an untagged PING, a wrong tag or a keyless responder get nothing."""
    r = Responder("home", 9000, keys=keys, global_rate=4.0, rate=100.0, burst=100.0)
    hosts = [(f"192.0.2.{i}", 1) for i in range(3)]
    for h in hosts:  # the shared 3 of 4
        r.receive_datagram(Browser().ping, h, 0.0)
    assert len(r.datagrams_to_send()) == 3
    r.receive_datagram(Browser().ping, PEER, 0.0)
    r.receive_datagram(Browser(kid_key=bytes(32)).ping, PEER, 0.0)
    assert r.datagrams_to_send() == []
    r.receive_datagram(Browser(kid_key=KID_KEY).ping, PEER, 0.0)  # the reserved 1 of 4
    assert len(r.datagrams_to_send()) == 1
    r.receive_datagram(Browser(kid_key=KID_KEY).ping, PEER, 0.0)  # reserve spent too
    assert r.datagrams_to_send() == []
    keyless = Responder("home", 9000, global_rate=1.0, rate=100.0, burst=100.0, keyed_share=0.5)
    keyless.receive_datagram(Browser(kid_key=KID_KEY).ping, PEER, 0.0)
    keyless.receive_datagram(Browser(kid_key=KID_KEY).ping, PEER, 0.0)
    assert keyless.datagrams_to_send() == []  # 0.5 token each: nothing, and no keys to check


def test_a_stealth_answer_from_the_reserve_is_checked_once() -> None:
    """A PING answered from the reserve had its tag proven: the stealth check passes."""
    r = Responder("home", 9000, stealth_keys=keys, global_rate=4.0, rate=100.0, burst=100.0)
    for _ in range(5):  # 3 from the shared budget, 1 from the reserve, then nothing
        r.receive_datagram(Browser(kid_key=KID_KEY).ping, PEER, 0.0)
    assert len(r.datagrams_to_send()) == 4
    assert r.answered_keyed == 1
    assert discovery_tag(KID_KEY, b"n" * 16) != discovery_tag(OTHER_KEYS[0], b"n" * 16)


def test_the_verification_budget_runs_out_too() -> None:
    """With no verification tokens left, even a valid tag waits for the next refill."""
    r = Responder(
        "home", 9000, keys=keys, global_rate=4.0, rate=100.0, burst=100.0, verify_rate=1.0
    )
    for i in range(3):
        r.receive_datagram(Browser().ping, (f"192.0.2.{i}", 1), 0.0)
    r.receive_datagram(Browser(kid_key=bytes(32)).ping, PEER, 0.0)  # spends the one check
    r.receive_datagram(Browser(kid_key=KID_KEY).ping, PEER, 0.0)
    assert len(r.datagrams_to_send()) == 3
    r.receive_datagram(Browser(kid_key=KID_KEY).ping, PEER, 1.0)
    assert [a for _, a in r.datagrams_to_send()].count(PEER) == 1


@pytest.mark.parametrize("share", [-0.1, 1.0])
def test_keyed_share_is_a_fraction(share: float) -> None:
    """The reserve is a part of the budget, never all of it."""
    with pytest.raises(ValueError):
        Responder("home", 9000, keyed_share=share)
