"""Write docs/test-vectors/pstp-hs.json and records.json from fixed inputs.

Run ``python scripts/make_test_vectors.py`` after a deliberate wire change; the
tests in tests/protocol/test_vectors.py check the code against the files.
"""

from __future__ import annotations

import json
from pathlib import Path

from pstp.crypto.aead import Aead
from pstp.protocol.config import Config
from pstp.protocol.handshake import InitiatorHandshake, KeyRing, PeerKey, ResponderHandshake
from pstp.protocol.record import RecordSender, cipher_for_suite
from pstp.wire.frames import HsInit, InnerType, Suite

OUT = Path(__file__).resolve().parents[1] / "docs" / "test-vectors"


def _hs_case(
    name: str, discovery: tuple[bytes, bytes, bytes] | None, suite_pref: list[int]
) -> dict[str, object]:
    pair_key = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    init_e = bytes.fromhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721")
    resp_e = bytes.fromhex("519b423d715f8b581f4fa8ee59f4771a5b44c8130b4e3eacca54a56dda72b464")
    kid_random = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
    inputs = {
        "pair_key": pair_key.hex(),
        "initiator_id": "phone",
        "responder_id": "home",
        "timestamp": 1_763_769_600_000_000_000,
        "kid_random": kid_random.hex(),
        "initiator_ephemeral_private": init_e.hex(),
        "responder_ephemeral_private": resp_e.hex(),
        "initiator_versions": [2],
        "initiator_suites": [1, 2],
        "initiator_max_record": 65536,
        "service": "session",
        "responder_suites": suite_pref,
        "responder_max_record": 262144,
        "responder_keepalive_ms": 15000,
        "discovery": None
        if discovery is None
        else {"nonce": discovery[0].hex(), "ping": discovery[1].hex(), "pong": discovery[2].hex()},
    }
    icfg = Config(suites=(Suite.AES_256_GCM, Suite.CHACHA20_POLY1305), max_record_size=65536)
    rcfg = Config(suites=tuple(Suite(s) for s in suite_pref), max_record_size=262144)
    ini = InitiatorHandshake(
        pair_key,
        icfg,
        timestamp=inputs["timestamp"],  # type: ignore[arg-type]
        responder_id="home",
        discovery=discovery,
        ephemeral=init_e,
        kid_random=kid_random,
        initiator_id="phone",
    )
    ring = KeyRing()
    ring.add("phone", pair_key)
    lookup = (
        (lambda n: (discovery[1], discovery[2]) if n == discovery[0] else None)
        if discovery
        else None
    )
    resp = ResponderHandshake(
        ring, rcfg, own_id="home", discovery_lookup=lookup, keepalive_ms=15000, ephemeral=resp_e
    )
    init_frame = ini.message.serialize()
    resp.read_init(init_frame[4:])
    resp_frame, rkeys = resp.write_response()
    ikeys = ini.read_response(resp_frame[4:])
    assert (ikeys.session_id, ikeys.i2r_key, ikeys.r2i_key) == (
        rkeys.session_id,
        rkeys.i2r_key,
        rkeys.r2i_key,
    )
    sender = RecordSender(cipher_for_suite(ikeys.suite), ikeys.i2r_key, icfg, 0.0, 65536)
    confirm_record = sender.seal(InnerType.CONFIRM, ini.confirm, 0.0)
    peer = PeerKey.from_pair_key("phone", pair_key)
    return {
        "name": name,
        "inputs": inputs,
        "derived": {
            "psk": peer.psk.hex(),
            "kid_key": peer.kid_key.hex(),
            "kid": ini.message.kid.hex(),
            "hs_init": init_frame.hex(),
            "hs_resp": resp_frame.hex(),
            "confirm_initiator": ini.confirm.hex(),
            "confirm_responder": resp_frame[-32:].hex(),
            "session_id": ikeys.session_id.hex(),
            "suite": ikeys.suite,
            "i2r_key": ikeys.i2r_key.hex(),
            "r2i_key": ikeys.r2i_key.hex(),
            "exporter_secret": ikeys.exporter_secret.hex(),
            "confirm_record": confirm_record.hex(),
        },
        "check": {"hs_init_header": HsInit.parse(init_frame[4:]).header_bytes().hex()},
    }


def _record_case(suite: Suite) -> dict[str, object]:
    key = bytes(range(0x40, 0x60))
    cfg = Config(rekey_after_records=4, reject_after_records=8)
    sender = RecordSender(cipher_for_suite(suite), key, cfg, 0.0, 65536)
    plan = [
        (InnerType.DATA, b"kettle.on"),
        (InnerType.PING, (1).to_bytes(8, "big")),
        (InnerType.DATA, b""),
        (InnerType.DATA, b"after rekey"),
        (InnerType.CLOSE, bytes.fromhex("0000") + b"\x03bye"),
    ]
    records = []
    for inner, body in plan:
        frame = sender.seal(inner, body, 0.0)
        records.append({"inner_type": int(inner), "body": body.hex(), "frames": frame.hex()})
    return {
        "suite": int(suite),
        "key": key.hex(),
        "rekey_after_records": 4,
        "rekeyed_key": Aead(cipher_for_suite(suite), key).rekey().hex(),
        "records": records,
    }


def build() -> tuple[dict[str, object], dict[str, object]]:
    """Compute both vector files."""
    hs = {
        "description": "PSTP-HS known-answer vectors (docs/protocol.md §5, §13). Hex strings.",
        "protocol": "Noise_NNpsk0_P256_AESGCM_SHA256",
        "cases": [
            _hs_case("plain", None, [1, 2]),
            _hs_case(
                "discovery-bound, ChaCha20-Poly1305 preferred",
                (bytes(range(16)), b"PING-bytes-as-sent", b"PONG-bytes-as-received"),
                [2, 1],
            ),
        ],
    }
    rec = {
        "description": (
            "PSTP/2 record known-answer vectors (docs/protocol.md §6, §13). 'frames' is the "
            "sender output for one call; when a KEY_UPDATE is due it precedes the record."
        ),
        "cases": [_record_case(Suite.AES_256_GCM), _record_case(Suite.CHACHA20_POLY1305)],
    }
    return hs, rec


def main() -> None:
    """Write the files."""
    hs, rec = build()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pstp-hs.json").write_text(json.dumps(hs, indent=2) + "\n")
    (OUT / "records.json").write_text(json.dumps(rec, indent=2) + "\n")


if __name__ == "__main__":
    main()
