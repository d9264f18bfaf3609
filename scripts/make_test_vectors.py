"""Write docs/test-vectors/*.json from fixed inputs.

pstp-hs.json and records.json (handshake and records), channels.json (channel
messages, §14), discovery.json (PING, PONG and the stealth tag, §8) and
pake.json (a PSTP-PAKE pairing run, §15).  Run
``python scripts/make_test_vectors.py`` after a deliberate wire change; the
tests in tests/protocol/test_vectors.py and tests/discovery/test_vectors.py
check the code against the files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec

from pstp.crypto import spake2plus
from pstp.crypto.aead import Aead
from pstp.crypto.kdf import hkdf_expand_sha256, hkdf_sha256
from pstp.discovery.packets import Caps, Ping, Pong
from pstp.discovery.protocol import discovery_tag
from pstp.protocol.config import Config
from pstp.protocol.handshake import InitiatorHandshake, KeyRing, PeerKey, ResponderHandshake
from pstp.protocol.pake import PakeInitiator, PakeProver, PakeResponder, PakeVerifier
from pstp.protocol.record import RecordSender, cipher_for_suite
from pstp.wire.frames import PAIR_FLAG_PAIRING, FrameType, HsInit, InnerType, Suite
from pstp.wire.messages import (
    INITIAL_WINDOW,
    MAX_WINDOW,
    Accept,
    ChannelCode,
    Close,
    ControlMessage,
    Eof,
    Open,
    Reject,
    Window,
    decode_control,
    encode_channel_data,
    encode_control,
)

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


#: The pair key of pstp-hs.json; its kid_key signs the stealth PING of discovery.json.
_PAIR_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")

#: Names of the control messages in channels.json, by MessagePack tag (§14.4).
CONTROL_NAMES = {1: "OPEN", 2: "ACCEPT", 3: "REJECT", 4: "WINDOW", 5: "EOF", 6: "CLOSE"}


def _fields(msg: ControlMessage) -> dict[str, object]:
    """A control message's fields by name (MessagePack order), as JSON values."""
    return {f: msgspec.to_builtins(getattr(msg, f)) for f in msg.__struct_fields__}


def _control_case(note: str, msg: ControlMessage) -> dict[str, object]:
    raw = encode_control(msg)
    assert decode_control(raw) == msg
    tag = msgspec.msgpack.decode(raw)[0]
    return {
        "name": CONTROL_NAMES[tag],
        "note": note,
        "fields": _fields(msg),
        "array": msgspec.msgpack.decode(raw),
        "msgpack": raw.hex(),
    }


def build_channels() -> dict[str, object]:
    """channels.json: control messages, a CHANNEL_DATA body, and a sealed request flight."""
    opened = Open(
        1,
        "exec",
        1 << 20,
        {"argv": ["uptime", "-p"], "tty": False, "rows": 24, "timeout": 2.5, "cwd": None},
    )
    control = [
        _control_case("initiator opens channel 1 with parameters", opened),
        _control_case(
            "responder opens channel 2, no parameters (empty map)", Open(2, "ping", 65536)
        ),
        _control_case("accept channel 1 with a 1 MiB window", Accept(1, 1 << 20)),
        _control_case(
            "automatic reject beyond max_channels",
            Reject(3, ChannelCode.RESOURCE_LIMIT, "too many channels"),
        ),
        _control_case("grant 512 KiB more on channel 1", Window(1, 1 << 19)),
        _control_case("half-close channel 1", Eof(1)),
        _control_case("close with exit status 0", Close(1, ChannelCode.OK, 0)),
        _control_case("close, no exit status (nil)", Close(2)),
        _control_case(
            "close with an error code and a negative exit status",
            Close(5, ChannelCode.APPLICATION_ERROR, -1, "killed"),
        ),
        _control_case("largest window increment", Window(0xFFFFFFFF, MAX_WINDOW)),
    ]
    # Trailing fields that have defaults may be left out by a sender.
    decode_only = []
    for note, arr in (
        ("CLOSE with code, exit_status and reason omitted", [6, 7]),
        ("OPEN with params omitted", [1, 9, "shell", 65536]),
        ("REJECT with reason omitted", [3, 11, ChannelCode.UNKNOWN_KIND]),
    ):
        raw = msgspec.msgpack.encode(arr)
        msg = decode_control(raw)
        decode_only.append(
            {
                "name": CONTROL_NAMES[arr[0]],
                "note": note,
                "msgpack": raw.hex(),
                "fields": _fields(msg),
            }
        )
    request = b"uptime?\n"
    data_body = encode_channel_data(1, request)
    # One flight: OPEN, CHANNEL_DATA and EOF sealed back to back (seq 0, 1, 2).
    key = bytes(range(0x60, 0x80))
    sender = RecordSender(cipher_for_suite(Suite.AES_256_GCM), key, Config(), 0.0, 65536)
    flight = []
    for inner, body in (
        (InnerType.CHANNEL_CONTROL, encode_control(opened)),
        (InnerType.CHANNEL_DATA, data_body),
        (InnerType.CHANNEL_CONTROL, encode_control(Eof(1))),
    ):
        seq = sender.seq
        frame = sender.seal(inner, body, 0.0)
        flight.append(
            {"seq": seq, "inner_type": int(inner), "body": body.hex(), "frame": frame.hex()}
        )
    return {
        "description": (
            "PSTP/2 channel known-answer vectors (docs/protocol.md §14, §13). 'array' is the "
            "MessagePack value as JSON (null = nil); 'msgpack' the exact bytes a sender "
            "emits. 'flight' is a request sent in one flight under a fixed key, epoch 0."
        ),
        "initial_window": INITIAL_WINDOW,
        "max_window": MAX_WINDOW,
        "channel_codes": {c.name: int(c) for c in ChannelCode},
        "control": control,
        "decode_only": decode_only,
        "channel_data": {"channel": 1, "data": request.hex(), "body": data_body.hex()},
        "flight": {
            "suite": int(Suite.AES_256_GCM),
            "key": key.hex(),
            "epoch": 0,
            "records": flight,
        },
    }


def build_discovery() -> dict[str, object]:
    """discovery.json: a PING without and with a stealth tag, a PONG, and the tag."""
    kid_key = PeerKey.from_pair_key("phone", _PAIR_KEY).kid_key
    nonce = bytes(range(0xF0, 0x100))
    tag = discovery_tag(kid_key, nonce)
    plain = Ping(nonce)
    stealth = Ping(nonce, int(Caps.CHACHA20_POLY1305), tag)
    pong = Pong(nonce, 9000, int(Caps.AES_256_GCM | Caps.CHACHA20_POLY1305), "home")
    return {
        "description": (
            "PSTP/2 discovery known-answer vectors (docs/protocol.md §8, §13). Hex strings; "
            "'datagram' is the exact UDP payload."
        ),
        "inputs": {
            "pair_key": _PAIR_KEY.hex(),
            "kid_key": kid_key.hex(),
            "nonce": nonce.hex(),
        },
        "tag": {
            "label": "PSTP/2 discovery",
            "mac_input": (b"PSTP/2 discovery" + nonce).hex(),
            "tag": tag.hex(),
        },
        "ping": {
            "nonce": nonce.hex(),
            "wanted": 0,
            "kid_tag": None,
            "datagram": plain.serialize().hex(),
        },
        "ping_stealth": {
            "nonce": nonce.hex(),
            "wanted": stealth.wanted,
            "kid_tag": tag.hex(),
            "datagram": stealth.serialize().hex(),
        },
        "pong": {
            "nonce": nonce.hex(),
            "port": pong.port,
            "caps": pong.caps,
            "device_id": pong.device_id,
            "datagram": pong.serialize().hex(),
        },
    }


#: Fixed inputs of pake.json (§15).  x and y are the ephemeral scalars of
#: RFC 9383 Appendix C; everything else is PSTP's own.
PAKE_CODE = b"31415926"
PAKE_VERIFIER_ID = "home"
PAKE_PROVER_ID = "phone"
PAKE_SALT = bytes(range(0x10, 0x20))
PAKE_ITERATIONS = 100_000
PAKE_NONCE = bytes(range(0x20, 0x40))
PAKE_X = 0xD1232C8E8693D02368976C174E2088851B8365D0D79A9EEE709C6A05A2FAD539
PAKE_Y = 0x717A72348A182085109C8D3917D6C43D59B224DC6A7FC4F0483232FA6516D8B3


def _len8(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def build_pake() -> dict[str, object]:
    """pake.json: one PSTP-PAKE run in pairing mode, every frame and every derived value."""
    config = Config()
    keepalive = config.keepalive_interval
    keepalive_ms = int(keepalive * 1000) if keepalive else 0
    # Registration: the prover id is not in the PBKDF2 input (§15.4).
    w0, w1 = spake2plus.derive_w0_w1(
        PAKE_CODE,
        salt=PAKE_SALT,
        iterations=PAKE_ITERATIONS,
        id_prover=b"",
        id_verifier=PAKE_VERIFIER_ID.encode(),
    )
    big_l = spake2plus.compute_L(w1)
    verifier = PakeVerifier(PAKE_VERIFIER_ID, w0, big_l, PAKE_SALT, PAKE_ITERATIONS, pairing=True)
    prover = PakeProver(PAKE_CODE, PAKE_PROVER_ID, pairing=True)
    initiator = PakeInitiator(
        prover, config, verifier_id=PAKE_VERIFIER_ID, nonce=PAKE_NONCE, x=PAKE_X
    )
    responder = PakeResponder(verifier, config, keepalive_ms=keepalive_ms, y=PAKE_Y)
    pair_req = initiator.request_frame
    pair_resp = responder.read_request(pair_req[4:], 0.0)
    pair_share_p = initiator.read_response(pair_resp[4:])
    pair_share_v = responder.read_share_p(pair_share_p[4:])
    pair_confirm_p, pkeys = initiator.read_share_v(pair_share_v[4:])
    vkeys = responder.read_confirm_p(pair_confirm_p[4:])
    responder.release(success=True)
    assert pkeys == vkeys
    assert verifier.closed and verifier.successes == 1
    assert [f[0] for f in (pair_req, pair_resp, pair_share_p, pair_share_v, pair_confirm_p)] == [
        FrameType.PAIR_REQ,
        FrameType.PAIR_RESP,
        FrameType.PAIR_SHARE_P,
        FrameType.PAIR_SHARE_V,
        FrameType.PAIR_CONFIRM_P,
    ]
    assert pair_req[5] == PAIR_FLAG_PAIRING
    share_p, share_v = pair_share_p[4:], pair_share_v[4:69]
    confirm_v, confirm_p = pair_share_v[69:], pair_confirm_p[4:]
    # The SPAKE2+ intermediates, recomputed with the primitive and the same inputs.
    password = _len8(PAKE_CODE) + _len8(b"") + _len8(PAKE_VERIFIER_ID.encode())
    stretched = hashlib.pbkdf2_hmac("sha256", password, PAKE_SALT, PAKE_ITERATIONS, 32)
    seed = hkdf_sha256(stretched, salt=None, info=spake2plus.W0W1_INFO, length=80)
    context = hashlib.sha256(b"PSTP/2 PAKE context" + pair_req + pair_resp).digest()
    ids = (PAKE_PROVER_ID.encode(), PAKE_VERIFIER_ID.encode())
    sp = spake2plus.Prover(context, *ids, w0, w1, x=PAKE_X)
    sv = spake2plus.Verifier(context, *ids, w0, big_l, y=PAKE_Y)
    assert sp.share() == share_p
    assert sv.respond(share_p) == (share_v, confirm_v)
    assert sp.finish(share_v, confirm_v) == confirm_p
    sv.finish(confirm_p)
    assert sp.K_shared == sv.K_shared and sp.TT == sv.TT
    k_shared = sp.K_shared
    assert hkdf_sha256(k_shared, salt=None, info=b"PSTP/2 PAKE i2r", length=32) == pkeys.i2r_key
    pair_key = hkdf_expand_sha256(pkeys.exporter_secret, b"PSTP/2 export pair key", 32)

    def scalar(v: int) -> str:
        return v.to_bytes(32, "big").hex()

    return {
        "description": (
            "PSTP-PAKE known-answer vectors (docs/protocol.md §15, §13): one pairing run, "
            "SPAKE2+ P256-SHA256-HKDF-SHA256-HMAC-SHA256 (RFC 9383). Hex strings; frames "
            "are whole frames, 4-byte header included; scalars are 32-byte big-endian."
        ),
        "inputs": {
            "code": PAKE_CODE.hex(),
            "code_text": PAKE_CODE.decode(),
            "verifier_id": PAKE_VERIFIER_ID,
            "prover_id": PAKE_PROVER_ID,
            "salt": PAKE_SALT.hex(),
            "iterations": PAKE_ITERATIONS,
            "pairing": True,
            "nonce": PAKE_NONCE.hex(),
            "x": scalar(PAKE_X),
            "y": scalar(PAKE_Y),
            "versions": list(config.versions),
            "prover_suites": [int(s) for s in config.suites],
            "verifier_suites": [int(s) for s in config.suites],
            "prover_max_record": config.max_record_size,
            "verifier_max_record": config.max_record_size,
            "service": config.service,
            "verifier_keepalive_ms": keepalive_ms,
        },
        "derived": {
            "pbkdf2_input": password.hex(),
            "pbkdf2_output": stretched.hex(),
            "w0w1_seed": seed.hex(),
            "w0": scalar(w0),
            "w1": scalar(w1),
            "L": big_l.hex(),
            "pair_req": pair_req.hex(),
            "pair_resp": pair_resp.hex(),
            "pair_share_p": pair_share_p.hex(),
            "pair_share_v": pair_share_v.hex(),
            "pair_confirm_p": pair_confirm_p.hex(),
            "context": context.hex(),
            "share_p": share_p.hex(),
            "share_v": share_v.hex(),
            "confirm_v": confirm_v.hex(),
            "confirm_p": confirm_p.hex(),
            "Z": sp.Z.hex(),
            "V": sp.V.hex(),
            "TT": sp.TT.hex(),
            "K_main": sp.K_main.hex(),
            "K_confirmP": sp.K_confirmP.hex(),
            "K_confirmV": sp.K_confirmV.hex(),
            "K_shared": k_shared.hex(),
            "suite": pkeys.suite,
            "i2r_key": pkeys.i2r_key.hex(),
            "r2i_key": pkeys.r2i_key.hex(),
            "exporter_secret": pkeys.exporter_secret.hex(),
            "session_id": pkeys.session_id.hex(),
            "export_pair_key": pair_key.hex(),
        },
    }


def main() -> None:
    """Write the files."""
    hs, rec = build()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pstp-hs.json").write_text(json.dumps(hs, indent=2) + "\n")
    (OUT / "records.json").write_text(json.dumps(rec, indent=2) + "\n")
    (OUT / "channels.json").write_text(json.dumps(build_channels(), indent=2) + "\n")
    (OUT / "discovery.json").write_text(json.dumps(build_discovery(), indent=2) + "\n")
    (OUT / "pake.json").write_text(json.dumps(build_pake(), indent=2) + "\n")


if __name__ == "__main__":
    main()
