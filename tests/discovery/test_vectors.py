"""Our published discovery vectors (docs/test-vectors/discovery.json) reproduce byte for byte."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pstp.discovery.packets import Ping, Pong
from pstp.discovery.protocol import Responder, discovery_tag
from tests.helpers import OUR_VECTORS

DISC = json.loads((OUR_VECTORS / "discovery.json").read_text())
ADDR = ("192.0.2.10", 40000)


def _tag(kid_key: bytes, nonce: bytes) -> bytes:
    # pyca directly, not our kdf module: HMAC-SHA256(kid_key, label || nonce)[0..16].
    mac = hmac.HMAC(kid_key, hashes.SHA256())
    mac.update(b"PSTP/2 discovery" + nonce)
    return mac.finalize()[:16]


def test_kid_key_and_tag_reproduce() -> None:
    """kid_key = HKDF(pair key, "PSTP/2 key id"); the tag is HMAC(kid_key, label || nonce)[:16]."""
    inp, tag = DISC["inputs"], DISC["tag"]
    pair_key, nonce = bytes.fromhex(inp["pair_key"]), bytes.fromhex(inp["nonce"])
    kid_key = HKDF(hashes.SHA256(), 32, None, b"PSTP/2 key id").derive(pair_key)
    assert kid_key.hex() == inp["kid_key"]
    assert bytes.fromhex(tag["mac_input"]) == tag["label"].encode() + nonce
    assert _tag(kid_key, nonce).hex() == tag["tag"] == DISC["ping_stealth"]["kid_tag"]
    assert discovery_tag(kid_key, nonce).hex() == tag["tag"]


def _ping_bytes(nonce: bytes, wanted: int, kid_tag: bytes | None) -> bytes:
    # The §8.1 layout written out by hand: magic, version, type, flags, reserved,
    # nonce, wanted, [tag], zero padding to 128 bytes.
    flags = 0x01 if kid_tag is not None else 0x00
    raw = b"PSTP" + bytes((2, 0x01, flags, 0)) + nonce + wanted.to_bytes(2, "big")
    raw += kid_tag or b""
    return raw + bytes(128 - len(raw))


def test_ping_vectors_reproduce() -> None:
    """Both PINGs serialize to the published datagrams and parse back to their fields."""
    for name in ("ping", "ping_stealth"):
        v = DISC[name]
        nonce = bytes.fromhex(v["nonce"])
        tag = None if v["kid_tag"] is None else bytes.fromhex(v["kid_tag"])
        datagram = bytes.fromhex(v["datagram"])
        assert _ping_bytes(nonce, v["wanted"], tag) == datagram
        assert len(datagram) == 128
        assert Ping(nonce, v["wanted"], tag).serialize() == datagram
        assert Ping.parse(datagram) == Ping(nonce, v["wanted"], tag)


def test_pong_vector_reproduces() -> None:
    """The PONG serializes to the published datagram and parses back to its fields."""
    v = DISC["pong"]
    nonce, rid = bytes.fromhex(v["nonce"]), v["device_id"].encode()
    datagram = bytes.fromhex(v["datagram"])
    by_hand = (
        b"PSTP"
        + bytes((2, 0x02, 0, 0))
        + nonce
        + v["port"].to_bytes(2, "big")
        + v["caps"].to_bytes(2, "big")
        + bytes((len(rid),))
        + rid
    )
    assert by_hand == datagram
    pong = Pong(nonce, v["port"], v["caps"], v["device_id"])
    assert pong.serialize() == datagram
    assert Pong.parse(datagram) == pong
    assert len(datagram) <= 93 < len(bytes.fromhex(DISC["ping"]["datagram"]))


def test_stealth_responder_answers_only_the_tagged_ping_with_the_vector_pong() -> None:
    """A stealth responder drops the plain PING and answers the tagged one with the PONG."""
    v = DISC["pong"]
    kid_key = bytes.fromhex(DISC["inputs"]["kid_key"])
    r = Responder(v["device_id"], v["port"], caps=v["caps"], stealth_keys=lambda: [kid_key])
    plain = bytes.fromhex(DISC["ping"]["datagram"])
    stealth = bytes.fromhex(DISC["ping_stealth"]["datagram"])
    r.receive_datagram(plain, ADDR, 0.0)
    assert r.datagrams_to_send() == []
    r.receive_datagram(stealth, ADDR, 0.0)
    assert r.datagrams_to_send() == [(bytes.fromhex(v["datagram"]), ADDR)]
    assert r.lookup(bytes.fromhex(v["nonce"]), 0.0) == (stealth, bytes.fromhex(v["datagram"]))
