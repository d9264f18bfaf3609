"""Our published known-answer vectors (docs/test-vectors/) reproduce byte for byte."""

from __future__ import annotations

import hashlib
import hmac
import json
import re

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pstp.protocol.channels import CHANNEL_TRANSITIONS
from pstp.protocol.config import Config
from pstp.protocol.handshake import InitiatorHandshake, KeyRing, ResponderHandshake
from pstp.protocol.record import RecordReceiver, RecordSender, cipher_for_suite
from pstp.wire.frames import InnerType, Suite
from pstp.wire.messages import (
    INITIAL_WINDOW,
    MAX_WINDOW,
    Accept,
    ChannelCode,
    Close,
    Eof,
    Open,
    Reject,
    Window,
    decode_channel_data,
    decode_control,
    encode_channel_data,
    encode_control,
)
from tests.helpers import OUR_VECTORS, ROOT

HS = json.loads((OUR_VECTORS / "pstp-hs.json").read_text())
REC = json.loads((OUR_VECTORS / "records.json").read_text())
CHAN = json.loads((OUR_VECTORS / "channels.json").read_text())

#: Control message classes and their MessagePack tags (docs/protocol.md §14.4, table 2).
CONTROL = {
    "OPEN": (Open, 1),
    "ACCEPT": (Accept, 2),
    "REJECT": (Reject, 3),
    "WINDOW": (Window, 4),
    "EOF": (Eof, 5),
    "CLOSE": (Close, 6),
}


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, info).derive(ikm)


@pytest.mark.parametrize("case", HS["cases"], ids=lambda c: c["name"])
def test_handshake_vectors_reproduce(case: dict) -> None:  # type: ignore[type-arg]
    """Fixed inputs give exactly the published HS_INIT, HS_RESP, confirmations and keys."""
    inp, want = case["inputs"], case["derived"]
    pair_key = bytes.fromhex(inp["pair_key"])
    disc = inp["discovery"]
    binding = (
        None
        if disc is None
        else (
            bytes.fromhex(disc["nonce"]),
            bytes.fromhex(disc["ping"]),
            bytes.fromhex(disc["pong"]),
        )
    )
    icfg = Config(
        versions=tuple(inp["initiator_versions"]),
        suites=tuple(Suite(s) for s in inp["initiator_suites"]),
        max_record_size=inp["initiator_max_record"],
        service=inp["service"],
    )
    rcfg = Config(
        suites=tuple(Suite(s) for s in inp["responder_suites"]),
        max_record_size=inp["responder_max_record"],
    )
    ini = InitiatorHandshake(
        pair_key,
        icfg,
        timestamp=inp["timestamp"],
        responder_id=inp["responder_id"],
        discovery=binding,
        ephemeral=bytes.fromhex(inp["initiator_ephemeral_private"]),
        kid_random=bytes.fromhex(inp["kid_random"]),
        initiator_id=inp["initiator_id"],
    )
    assert ini.message.serialize().hex() == want["hs_init"]
    ring = KeyRing()
    ring.add(inp["initiator_id"], pair_key)
    resp = ResponderHandshake(
        ring,
        rcfg,
        own_id=inp["responder_id"],
        discovery_lookup=(lambda n: binding[1:] if binding and n == binding[0] else None),
        keepalive_ms=inp["responder_keepalive_ms"],
        ephemeral=bytes.fromhex(inp["responder_ephemeral_private"]),
    )
    resp.read_init(bytes.fromhex(want["hs_init"])[4:])
    assert resp.initiator_id == inp["initiator_id"]
    frame, rkeys = resp.write_response()
    assert frame.hex() == want["hs_resp"]
    ikeys = ini.read_response(frame[4:])
    assert ini.confirm.hex() == want["confirm_initiator"]
    assert frame[-32:].hex() == want["confirm_responder"]
    for keys in (ikeys, rkeys):
        assert keys.session_id.hex() == want["session_id"]
        assert keys.i2r_key.hex() == want["i2r_key"]
        assert keys.r2i_key.hex() == want["r2i_key"]
        assert keys.exporter_secret.hex() == want["exporter_secret"]
        assert keys.suite == want["suite"]
    resp.check_confirm(bytes.fromhex(want["confirm_initiator"]))
    # Derivations checked with pyca and the stdlib directly, not through our kdf module.
    assert _hkdf(pair_key, b"PSTP/2 psk").hex() == want["psk"]
    kid_key = _hkdf(pair_key, b"PSTP/2 key id")
    assert kid_key.hex() == want["kid_key"]
    r = bytes.fromhex(inp["kid_random"])
    assert (r + hmac.new(kid_key, r, hashlib.sha256).digest()[:16]).hex() == want["kid"]
    # The CONFIRM record opens with a bare AEAD call: nonce = 0^4 || seq, AAD = 13-byte header.
    rec = bytes.fromhex(want["confirm_record"])
    aead = (AESGCM if want["suite"] == Suite.AES_256_GCM else ChaCha20Poly1305)(
        bytes.fromhex(want["i2r_key"])
    )
    nonce = bytes(4) + (0).to_bytes(8, "big" if want["suite"] == Suite.AES_256_GCM else "little")
    plain = aead.decrypt(nonce, rec[13:], rec[:13])
    assert plain == bytes((InnerType.CONFIRM,)) + bytes.fromhex(want["confirm_initiator"])


@pytest.mark.parametrize("case", REC["cases"], ids=lambda c: f"suite-{c['suite']}")
def test_record_vectors_reproduce(case: dict) -> None:  # type: ignore[type-arg]
    """The sender produces the published frames (incl. KEY_UPDATE) and a receiver opens them."""
    cipher = cipher_for_suite(case["suite"])
    key = bytes.fromhex(case["key"])
    n = case["rekey_after_records"]
    cfg = Config(rekey_after_records=n, reject_after_records=2 * n)
    sender = RecordSender(cipher, key, cfg, 0.0, 65536)
    receiver = RecordReceiver(cipher, key, cfg)
    for rec in case["records"]:
        frames = sender.seal(InnerType(rec["inner_type"]), bytes.fromhex(rec["body"]), 0.0)
        assert frames.hex() == rec["frames"]
        pos, opened = 0, []
        while pos < len(frames):
            end = pos + 4 + int.from_bytes(frames[pos + 1 : pos + 4], "big")
            opened.append(receiver.open(frames[pos:end]))
            pos = end
        assert opened[-1] == (rec["inner_type"], bytes.fromhex(rec["body"]))
    assert receiver.epoch == 1


def test_channel_constants_match_the_vectors() -> None:
    """INITIAL_WINDOW, MAX_WINDOW and the ChannelCode table are the published ones."""
    assert CHAN["initial_window"] == INITIAL_WINDOW == 65536
    assert CHAN["max_window"] == MAX_WINDOW == 2**31 - 1
    assert CHAN["channel_codes"] == {c.name: int(c) for c in ChannelCode}


@pytest.mark.parametrize("case", CHAN["control"], ids=lambda c: f"{c['name']}-{c['note']}")
def test_channel_control_vectors_reproduce(case: dict) -> None:  # type: ignore[type-arg]
    """Each control message encodes to the published bytes and decodes back to its fields."""
    cls, tag = CONTROL[case["name"]]
    msg = cls(**case["fields"])
    raw = bytes.fromhex(case["msgpack"])
    assert encode_control(msg).hex() == case["msgpack"]
    assert decode_control(raw) == msg
    # The shape, read with a schema-less decoder: [tag, fields in declaration order].
    assert msgspec.msgpack.decode(raw) == case["array"] == [tag, *case["fields"].values()]


@pytest.mark.parametrize("case", CHAN["decode_only"], ids=lambda c: c["note"])
def test_channel_control_short_forms_decode(case: dict) -> None:  # type: ignore[type-arg]
    """Trailing fields with defaults may be omitted by a sender."""
    cls, _ = CONTROL[case["name"]]
    assert decode_control(bytes.fromhex(case["msgpack"])) == cls(**case["fields"])


def test_channel_data_vector_reproduces() -> None:
    """A CHANNEL_DATA body is the u32 channel id followed by the raw bytes."""
    v = CHAN["channel_data"]
    data, body = bytes.fromhex(v["data"]), bytes.fromhex(v["body"])
    assert body == v["channel"].to_bytes(4, "big") + data
    assert encode_channel_data(v["channel"], data) == body
    assert decode_channel_data(body) == (v["channel"], data)


def test_channel_flight_vector_reproduces() -> None:
    """OPEN, CHANNEL_DATA and EOF sealed back to back give the published frames."""
    flight = CHAN["flight"]
    key = bytes.fromhex(flight["key"])
    sender = RecordSender(cipher_for_suite(flight["suite"]), key, Config(), 0.0, 65536)
    aead = AESGCM(key)
    assert flight["suite"] == Suite.AES_256_GCM
    assert flight["records"][0]["body"] == CHAN["control"][0]["msgpack"]
    assert flight["records"][1]["body"] == CHAN["channel_data"]["body"]
    for rec in flight["records"]:
        body = bytes.fromhex(rec["body"])
        frame = sender.seal(InnerType(rec["inner_type"]), body, 0.0)
        assert frame.hex() == rec["frame"]
        assert frame[:4] == bytes((0x17,)) + (26 + len(body)).to_bytes(3, "big")
        assert frame[4] == flight["epoch"]
        assert int.from_bytes(frame[5:13], "big") == rec["seq"]
        # Opened with a bare AEAD call: nonce = 0^4 || seq (big-endian), AAD = 13-byte header.
        nonce = bytes(4) + rec["seq"].to_bytes(8, "big")
        assert aead.decrypt(nonce, frame[13:], frame[:13]) == bytes((rec["inner_type"],)) + body


def test_spec_channel_table_matches_the_code() -> None:
    """docs/protocol.md §14.5 table 3 lists exactly CHANNEL_TRANSITIONS."""
    spec = (ROOT / "docs" / "protocol.md").read_text()
    rows = re.findall(r"^\| `(\w+)` +\| ((?:SEND|RECV)_\w+) +\| `(\w+)` +\|$", spec, re.M)
    code = [(s.name, i.name, n.name) for (s, i), n in CHANNEL_TRANSITIONS.items()]
    assert rows == code
