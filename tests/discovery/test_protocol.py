"""Tests for pstp.discovery.protocol: responder and browser, bytes only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pstp.discovery.packets import Caps, Ping, Pong
from pstp.discovery.protocol import Browser, Responder, discovery_tag

ADDR = ("192.0.2.10", 40000)


def answer(
    responder: Responder, ping: bytes, addr: tuple[str, int] = ADDR, now: float = 0.0
) -> list[bytes]:
    """Feed one PING and return the PONGs queued."""
    responder.receive_datagram(ping, addr, now)
    return [d for d, _ in responder.datagrams_to_send()]


def test_browser_finds_a_responder_and_both_keep_the_exact_bytes() -> None:
    """A PING answered by a PONG yields a Found whose binding the responder can look up."""
    r = Responder("home", 9000)
    b = Browser()
    (pong,) = answer(r, b.ping)
    found = b.receive_datagram(pong, ("192.0.2.1", 9000), 0.0)
    assert found is not None
    assert (found.device_id, found.host, found.port) == ("home", "192.0.2.1", 9000)
    assert r.lookup(found.nonce) == (found.ping, found.pong)
    assert b.receive_datagram(pong, ("192.0.2.1", 9000), 0.0) is None  # de-duplicated
    assert b.found == [found]


def test_pong_is_never_larger_than_its_ping() -> None:
    """Whatever the device id, the answer is no larger than the query."""
    r = Responder("d" * 64, 65535)
    ping = Browser().ping
    (pong,) = answer(r, ping)
    assert len(pong) <= len(ping)


def test_rate_limit_per_source_and_recovery() -> None:
    """A flood from one source is cut at the burst; another source is still answered."""
    r = Responder("home", 9000, rate=2.0, burst=5.0)
    answered = sum(len(answer(r, Browser().ping)) for _ in range(100))
    assert answered == 5
    assert r.dropped_rate == 95
    assert answer(r, Browser().ping, ("192.0.2.99", 1))
    assert answer(r, Browser().ping, ADDR, now=1.0)  # tokens refill with time


def test_malformed_datagrams_are_dropped_and_the_responder_keeps_answering() -> None:
    """Garbage and PONG floods are counted and ignored; a real PING still gets an answer."""
    r = Responder("home", 9000)
    for junk in (b"", b"PSTP", Pong(b"x" * 16, 1, 0, "evil").serialize(), bytes(200)):
        assert answer(r, junk, ("192.0.2.66", 1)) == []
    assert r.dropped_malformed == 4
    assert answer(r, Browser().ping)


def test_stealth_answers_only_pings_proving_a_key() -> None:
    """In stealth mode a PING without a valid key id tag gets silence."""
    key = b"k" * 32
    r = Responder("home", 9000, stealth_keys=lambda: [key])
    assert answer(r, Browser().ping) == []
    assert answer(r, Browser(kid_key=b"w" * 32).ping) == []
    assert len(answer(r, Browser(kid_key=key).ping)) == 1
    assert r.dropped_stealth == 2
    # A tag for another nonce does not transfer.
    ping = Ping(b"a" * 16, 0, discovery_tag(key, b"b" * 16)).serialize()
    assert answer(r, ping) == []


def test_browser_ignores_foreign_nonces_and_missing_caps() -> None:
    """PONGs for another PING, or lacking wanted capabilities, are dropped."""
    b = Browser(wanted=Caps.MQTT)
    other = Pong(b"z" * 16, 9000, Caps.MQTT, "x").serialize()
    lacking = Pong(b.nonce, 9000, Caps.AES_256_GCM, "x").serialize()
    assert b.receive_datagram(other, ADDR, 0.0) is None
    assert b.receive_datagram(lacking, ADDR, 0.0) is None
    assert b.dropped == 2


def test_remembered_pairs_expire() -> None:
    """A (PING, PONG) pair is forgotten after `remember` seconds or beyond the cap."""
    r = Responder("home", 9000, remember=10.0, max_remembered=3, rate=100, burst=100)
    pings = [Browser() for _ in range(5)]
    for i, b in enumerate(pings):
        answer(r, b.ping, now=float(i))
    assert r.lookup(pings[0].nonce) is None  # beyond the cap
    assert r.lookup(pings[4].nonce) is not None
    assert r.lookup(pings[4].nonce, now=100.0) is None  # expired


@given(st.binary(max_size=600))
def test_receive_datagram_never_raises(data: bytes) -> None:
    """Arbitrary bytes into either side never raise."""
    Responder("home", 9000).receive_datagram(data, ADDR, 0.0)
    Browser().receive_datagram(data, ADDR, 0.0)


@pytest.mark.parametrize(
    ("device_id", "port"),
    [("", 9000), ("d" * 65, 9000), ("é" * 33, 9000), ("home", 0), ("home", 65536)],
)
def test_responder_refuses_an_id_or_port_it_could_not_advertise(device_id: str, port: int) -> None:
    """A device id that is empty or over 64 bytes, or a port outside 1..65535, is refused."""
    with pytest.raises(ValueError):
        Responder(device_id, port)


def test_global_rate_limit_caps_answers_across_sources() -> None:
    """Many sources together get at most the shared part of global_rate (3 of 4) a second."""
    r = Responder("home", 9000, global_rate=4.0, rate=100.0, burst=100.0)
    hosts = [f"192.0.2.{i}" for i in range(10)]
    answered = sum(len(answer(r, Browser().ping, (h, 1))) for h in hosts)
    assert answered == 3
    assert r.dropped_rate == 7
    # A refused source was not charged: it is answered once the global bucket refills.
    assert answer(r, Browser().ping, (hosts[-1], 1), now=1.0)


def test_source_table_is_bounded_and_forgets_the_least_recent() -> None:
    """Beyond 4096 sources the least recently seen source's bucket is dropped."""
    r = Responder("home", 9000, global_rate=1e9, rate=0.001, burst=1.0)
    first = ("198.51.100.1", 1)
    assert answer(r, Browser().ping, first)
    assert answer(r, Browser().ping, first) == []  # its one-answer burst is spent
    for i in range(4096):
        r.receive_datagram(Browser().ping, (f"10.{i >> 8}.{i & 0xFF}.1", 1), 0.0)
    r.datagrams_to_send()
    assert len(r._buckets) == 4096
    assert answer(r, Browser().ping, first)  # forgotten, so it has a full bucket again
    assert len(r._buckets) == 4096


def test_repeated_nonce_is_answered_once_and_never_overwrites() -> None:
    """A replayed PING (same nonce) gets no answer and leaves the stored pair intact."""
    r = Responder("home", 9000, remember=10.0, rate=100, burst=100)
    a = Browser()
    (pong,) = answer(r, a.ping, now=0.0)
    tampered = a.ping[:-1] + b"\x00"  # same nonce, still a valid PING
    assert answer(r, tampered, ("192.0.2.77", 5), now=1.0) == []
    assert answer(r, a.ping, now=2.0) == []
    assert r.dropped_replay == 2
    assert r.lookup(a.nonce, now=3.0) == (a.ping, pong)
    assert r.lookup(a.nonce, now=10.5) is None  # expired: remembered for 10 s


def test_pings_wanting_capabilities_we_lack_are_not_answered() -> None:
    """A PING asking for a capability the device lacks gets no PONG."""
    r = Responder("home", 9000, caps=Caps.AES_256_GCM)
    assert answer(r, Browser(wanted=Caps.MQTT).ping) == []
    assert answer(r, Browser(wanted=Caps.AES_256_GCM).ping)


def test_found_binding_is_the_exact_exchange() -> None:
    """Found.binding is (nonce, PING, PONG) byte for byte, as the responder remembers it."""
    r = Responder("home", 9000)
    b = Browser(kid_key=b"k" * 32)
    (pong,) = answer(r, b.ping)
    found = b.receive_datagram(pong, ADDR, 0.0)
    assert found is not None
    assert found.binding == (b.nonce, b.ping, pong)
    assert r.lookup(found.binding[0]) == found.binding[1:]
