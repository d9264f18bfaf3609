"""Our published known-answer vectors (docs/test-vectors/) reproduce byte for byte."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pstp.protocol.config import Config
from pstp.protocol.handshake import InitiatorHandshake, KeyRing, ResponderHandshake
from pstp.protocol.record import RecordReceiver, RecordSender, cipher_for_suite
from pstp.wire.frames import InnerType, Suite
from tests.helpers import OUR_VECTORS

HS = json.loads((OUR_VECTORS / "pstp-hs.json").read_text())
REC = json.loads((OUR_VECTORS / "records.json").read_text())


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
