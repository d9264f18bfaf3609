"""Write docs/test-vectors/*.json from fixed inputs.

pstp-hs.json and records.json (handshake and records), channels.json (channel
messages, §14) and discovery.json (PING, PONG and the stealth tag, §8).  Run
``python scripts/make_test_vectors.py`` after a deliberate wire change; the
tests in tests/protocol/test_vectors.py and tests/discovery/test_vectors.py
check the code against the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from pstp.crypto.aead import Aead
from pstp.discovery.packets import Caps, Ping, Pong
from pstp.discovery.protocol import discovery_tag
from pstp.protocol.config import Config
from pstp.protocol.handshake import InitiatorHandshake, KeyRing, PeerKey, ResponderHandshake
from pstp.protocol.record import RecordSender, cipher_for_suite
from pstp.wire.frames import HsInit, InnerType, Suite
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


def main() -> None:
    """Write the files."""
    hs, rec = build()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pstp-hs.json").write_text(json.dumps(hs, indent=2) + "\n")
    (OUT / "records.json").write_text(json.dumps(rec, indent=2) + "\n")
    (OUT / "channels.json").write_text(json.dumps(build_channels(), indent=2) + "\n")
    (OUT / "discovery.json").write_text(json.dumps(build_discovery(), indent=2) + "\n")


if __name__ == "__main__":
    main()
