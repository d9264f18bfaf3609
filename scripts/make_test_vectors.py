"""Write docs/test-vectors/*.json from fixed inputs.

pstp-hs.json and records.json (handshake and records), channels.json (channel
messages, §14), discovery.json (PING, PONG and the stealth tag, §8),
pake.json (a PSTP-PAKE pairing run, §15), streams.json (the stream frames
of exec, shell and action channels, §17.2), kinds.json (the OPEN params of
every channel kind and an actions listing, §17.4 to §17.15), tokens.json
(§20), transports.json (channel addresses and WebSocket framing, §19.1,
§19.2) and mqtt.json (the MQTT mapping's rendezvous ids, topics, record sizes
and prefixes, §19.3).  Run ``python scripts/make_test_vectors.py`` after a
deliberate wire change; the tests in tests/protocol/test_vectors.py,
tests/discovery/test_vectors.py, tests/protocol/test_kinds.py and
tests/protocol/test_listing.py check the code against the files.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import msgspec

from pstp.crypto import spake2plus
from pstp.crypto.aead import Aead
from pstp.crypto.kdf import hkdf_expand_sha256, hkdf_sha256
from pstp.discovery.packets import Caps, Ping, Pong
from pstp.discovery.protocol import discovery_tag
from pstp.exceptions import RemoteProtocolError
from pstp.protocol.config import Config
from pstp.protocol.handshake import InitiatorHandshake, KeyRing, PeerKey, ResponderHandshake
from pstp.protocol.pake import PakeInitiator, PakeProver, PakeResponder, PakeVerifier
from pstp.protocol.record import RecordSender, cipher_for_suite
from pstp.protocol.streams import (
    FRAME_HEADER_LEN,
    MAX_FRAME,
    RESIZE,
    SIGNAL,
    SIGNALS,
    STDERR,
    STDIN,
    STDOUT,
    Direction,
    FrameDecoder,
    decode_resize,
    decode_signal,
    encode_frame,
    encode_resize,
    encode_signal,
)
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


#: Stream frame type names per direction (§17.2).
STREAM_TYPES = {
    Direction.TO_SERVER: {STDIN: "STDIN", RESIZE: "RESIZE", SIGNAL: "SIGNAL"},
    Direction.TO_CLIENT: {STDOUT: "STDOUT", STDERR: "STDERR"},
}


def _stream_frame(
    note: str,
    direction: Direction,
    frame_type: int,
    payload: bytes,
    frame: bytes | None = None,
    **fields: object,
) -> dict[str, object]:
    """One valid frame: what encode_* emits, checked to decode back in one piece."""
    whole = encode_frame(frame_type, payload)
    assert frame is None or frame == whole
    got = FrameDecoder(direction).feed(whole)
    assert [(f.type, f.payload) for f in got] == [(frame_type, payload)]
    return {
        "name": STREAM_TYPES[direction][frame_type],
        "note": note,
        "direction": direction.value,
        "type": frame_type,
        "length": len(payload),
        "payload": payload.hex(),
        **fields,
        "frame": whole.hex(),
    }


def _resize_case(note: str, rows: int, cols: int) -> dict[str, object]:
    frame = encode_resize(rows, cols)
    assert decode_resize(frame[FRAME_HEADER_LEN:]) == (rows, cols)
    return _stream_frame(
        note, Direction.TO_SERVER, RESIZE, frame[FRAME_HEADER_LEN:], frame, rows=rows, cols=cols
    )


def _signal_case(name: str) -> dict[str, object]:
    frame = encode_signal(name)
    assert decode_signal(frame[FRAME_HEADER_LEN:]) == name
    return _stream_frame(
        f"SIG{name}",
        Direction.TO_SERVER,
        SIGNAL,
        frame[FRAME_HEADER_LEN:],
        frame,
        signal=name,
        index=SIGNALS.index(name),
    )


def _split_case(
    note: str, direction: Direction, frames: list[tuple[int, bytes]], cuts: list[int]
) -> dict[str, object]:
    """Frames back to back, fed to a decoder in the pieces ``cuts`` make."""
    stream = b"".join(encode_frame(t, p) for t, p in frames)
    points = [0, *cuts, len(stream)]
    assert points == sorted(set(points))
    decoder = FrameDecoder(direction)
    pieces, done = [], 0
    for a, b in itertools.pairwise(points):
        got = decoder.feed(stream[a:b])
        assert [(f.type, f.payload) for f in got] == frames[done : done + len(got)]
        pieces.append(
            {
                "data": stream[a:b].hex(),
                "completes": list(range(done, done + len(got))),
                "pending": decoder.pending,
            }
        )
        done += len(got)
    decoder.eof()
    assert done == len(frames)
    return {
        "note": note,
        "direction": direction.value,
        "frames": [
            {"name": STREAM_TYPES[direction][t], "type": t, "payload": p.hex()} for t, p in frames
        ],
        "stream": stream.hex(),
        "pieces": pieces,
    }


def _reject_case(note: str, direction: Direction, stream: bytes) -> dict[str, object]:
    """A stream the decoder refuses: fed one byte at a time, where and how it fails."""
    decoder = FrameDecoder(direction)
    delivered = []
    fails_after: int | None = None
    pending: int | None = None
    try:
        for i in range(len(stream)):
            fails_after = i + 1
            delivered += decoder.feed(stream[i : i + 1])
        fails_after, pending = None, decoder.pending
        decoder.eof()
    except RemoteProtocolError as exc:
        error = type(exc).__name__
    else:
        raise AssertionError(f"{note}: accepted")
    # Fed whole, the stream fails the same way.
    whole = FrameDecoder(direction)
    try:
        whole.feed(stream)
        whole.eof()
    except RemoteProtocolError as exc:
        assert type(exc).__name__ == error
    else:
        raise AssertionError(f"{note}: accepted whole")
    assert fails_after is None or not delivered  # frames before a bad one: none here
    return {
        "note": note,
        "direction": direction.value,
        "stream": stream.hex(),
        "error": error,
        "fails_after": fails_after,
        "pending_at_eof": pending,
        "frames": [
            {"name": STREAM_TYPES[direction][f.type], "type": f.type, "payload": f.payload.hex()}
            for f in delivered
        ],
    }


def _header(frame_type: int, length: int) -> bytes:
    return frame_type.to_bytes(1, "big") + length.to_bytes(4, "big")


def build_streams() -> dict[str, object]:
    """streams.json: stream frames of exec, shell and action channels (§17.2)."""
    up, down = Direction.TO_SERVER, Direction.TO_CLIENT
    text_in = "grüße, 世界 ✓\n"
    text_out = "total 0\n"
    text_err = "ls: /nope: No such file or directory\n"
    frames = [
        _stream_frame("empty (a receiver ignores it)", up, STDIN, b""),
        _stream_frame("64 bytes 0x00..0x3f", up, STDIN, bytes(range(64))),
        _stream_frame("UTF-8 text", up, STDIN, text_in.encode(), text=text_in),
        _resize_case("a 24x80 terminal", 24, 80),
        _resize_case("largest rows, one column", 0xFFFF, 1),
        _resize_case("zero rows and columns (any u16 is accepted)", 0, 0),
        *(_signal_case(name) for name in SIGNALS),
        _stream_frame("UTF-8 text", down, STDOUT, text_out.encode(), text=text_out),
        _stream_frame("64 bytes 0xc0..0xff", down, STDOUT, bytes(range(0xC0, 0x100))),
        _stream_frame("UTF-8 text", down, STDERR, text_err.encode(), text=text_err),
    ]
    split = [
        _split_case(
            "client to device: STDIN, RESIZE, SIGNAL INT, empty STDIN, STDIN",
            up,
            [
                (STDIN, b"ls -l\n"),
                (RESIZE, bytes.fromhex("00180050")),
                (SIGNAL, bytes([SIGNALS.index("INT")])),
                (STDIN, b""),
                (STDIN, text_in.encode()),
            ],
            [1, 4, 12, 31, 33, 40],
        ),
        _split_case(
            "device to client: STDOUT, STDERR, STDOUT",
            down,
            [
                (STDOUT, text_out.encode()),
                (STDERR, text_err.encode()),
                (STDOUT, bytes(range(0xC0, 0x100))),
            ],
            [5, 13, 14, 30, 60],
        ),
    ]
    reject = [
        _reject_case("unknown type 0x03, refused from the header", up, _header(3, 3) + b"abc"),
        _reject_case("unknown type 0xff", up, _header(0xFF, 0)),
        _reject_case(
            "length 1 MiB + 1, refused from the header", up, _header(STDIN, MAX_FRAME + 1)
        ),
        _reject_case("length 2^32 - 1", up, _header(RESIZE, 0xFFFFFFFF)),
        _reject_case("RESIZE payload of 3 bytes", up, _header(RESIZE, 3) + b"\x00\x18\x00"),
        _reject_case(
            "RESIZE payload of 5 bytes", up, _header(RESIZE, 5) + bytes.fromhex("0018005000")
        ),
        _reject_case("RESIZE with no payload", up, _header(RESIZE, 0)),
        _reject_case("SIGNAL index 8 (past WINCH)", up, _header(SIGNAL, 1) + b"\x08"),
        _reject_case("SIGNAL index 255", up, _header(SIGNAL, 1) + b"\xff"),
        _reject_case("SIGNAL with no payload", up, _header(SIGNAL, 0)),
        _reject_case("SIGNAL payload of 2 bytes", up, _header(SIGNAL, 2) + b"\x00\x00"),
        _reject_case("stream ends inside a header", up, _header(STDIN, 5)[:3]),
        _reject_case("stream ends inside a payload", up, _header(STDIN, 5) + b"ab"),
        _reject_case(
            "header announcing exactly 1 MiB is accepted; the stream then ends",
            up,
            _header(STDIN, MAX_FRAME),
        ),
        _reject_case("type 0x02 (SIGNAL) is client to device only", down, _header(2, 1) + b"\x01"),
        _reject_case("unknown type 0xff", down, _header(0xFF, 0)),
        _reject_case("length 1 MiB + 1", down, _header(STDOUT, MAX_FRAME + 1)),
        _reject_case("length 2^32 - 1", down, _header(STDERR, 0xFFFFFFFF)),
        _reject_case(
            "a whole STDOUT frame, then the stream ends inside a header",
            down,
            encode_frame(STDOUT, text_out.encode()) + _header(STDERR, 4)[:3],
        ),
        _reject_case(
            "stream ends inside a payload", down, _header(STDERR, 10) + text_err.encode()[:4]
        ),
    ]
    return {
        "description": (
            "Stream frame known-answer vectors for action, exec and shell channels "
            "(docs/protocol.md §17.2). Hex strings. 'frames': single frames, 'frame' being "
            "the exact bytes a sender emits. 'split': frames back to back fed to a decoder "
            "in the given pieces; 'completes' lists the indexes of the frames a piece "
            "completes, 'pending' the bytes then left buffered. 'reject': streams a "
            "receiver refuses; 'error' is this implementation's exception (FrameTooLarge "
            "is a kind of RemoteProtocolError), 'fails_after' the number of bytes fed, one "
            "at a time, when it is raised (null: at the end of the stream, with "
            "'pending_at_eof' bytes left over), 'frames' those delivered before."
        ),
        "header_len": FRAME_HEADER_LEN,
        "max_frame": MAX_FRAME,
        "types": {d.value: {n: t for t, n in STREAM_TYPES[d].items()} for d in Direction},
        "signals": list(SIGNALS),
        "frames": frames,
        "split": split,
        "reject": reject,
    }


_X255 = "x" * 255
#: Inputs of kinds.json, per kind (§17.4 to §17.8, §17.12 to §17.15): the fields of
#: each valid case, params a receiver accepts, and params it refuses.  The params,
#: their bytes, the decoded fields and the refusals' reasons come from the code.
_KIND_CASES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]] = {
    "action": (
        [
            {"name": "gate.open", "reason": "delivery", "args": {"seconds": 30}},
            {"name": "lamp.set", "reason": None, "args": {"level": "40", "on": True}},
        ],
        [{"name": "x", "arg.": 1, "other": "kept out"}],
        [{}, {"name": 3}, {"name": "x", "reason": 3}],
    ),
    "actions": (
        [{"reason": "which?"}, {"reason": None}],
        [{}, {"reason": "x", "other": 1}],
        [{"reason": 3}],
    ),
    "exec": (
        [{"argv": ["uname", "-a"], "reason": "check"}, {"argv": ["true"], "reason": None}],
        [{"argv": ["ls"], "extra": 1}],
        [
            {},
            {"argv": []},
            {"argv": "ls"},
            {"argv": [""]},
            {"argv": ["ls", 1]},
            {"argv": ["ls"], "reason": 3},
        ],
    ),
    "shell": (
        [
            {"term": "xterm-256color", "rows": 50, "cols": 132, "reason": "debug"},
            {"term": "dumb", "rows": 24, "cols": 80, "reason": None},
            {"term": "dumb", "rows": 24, "cols": 80, "reason": None, "pty": False},
        ],
        [{}, {"rows": 0, "cols": 65535}, {"pty": True}, {"pty": False, "term": "xterm"}],
        [
            {"rows": "24"},
            {"cols": -1},
            {"rows": True},
            {"cols": 65536},
            {"term": "x y"},
            {"term": ""},
            {"term": "dumb\n"},
            {"reason": ["a"]},
            {"pty": 1},
            {"pty": None},
            {"pty": "false"},
        ],
    ),
    "ping": ([{}], [{"anything": [1]}], []),
    "file": (
        [
            {"op": "put", "path": "/srv/share/", "force": False, "into": True, "reason": "backup"},
            {
                "op": "get",
                "path": "/srv/share/a.txt",
                "force": False,
                "into": False,
                "reason": None,
            },
        ],
        [
            {"op": "put", "path": "/a", "force": 1, "into": "yes", "reason": 3},
            {"op": "get", "path": "/a"},
        ],
        [{}, {"op": "move", "path": "/a"}, {"op": "get", "path": 1}],
    ),
    "forward": (
        [
            {"host": "127.0.0.1", "port": 8080, "reason": None},
            {"host": "camera.local", "port": 554, "reason": "check the door"},
            {"host": "2001:db8::7", "port": 443, "reason": None},
        ],
        [{"host": "router.lan", "port": 80}, {"host": _X255, "port": 65535, "other": 1}],
        [
            {"port": 22},
            {"host": "", "port": 22},
            {"host": 7, "port": 22},
            {"host": _X255 + "x", "port": 22},
            {"host": "h"},
            {"host": "h", "port": 0},
            {"host": "h", "port": 65536},
            {"host": "h", "port": True},
            {"host": "h", "port": "80"},
            {"host": "h", "port": 22, "reason": 1},
        ],
    ),
    "forward-listen": (
        [
            {"port": 2222, "host": "127.0.0.1", "reason": "ssh home"},
            {"port": 0, "host": "::1", "reason": None},
        ],
        [{"port": 9090}, {"host": "0.0.0.0", "port": 65535, "other": 1}],  # noqa: S104
        [
            {"host": "localhost", "port": 2222},
            {"host": "", "port": 2222},
            {"host": "[::1]", "port": 2222},
            {"host": 7, "port": 2222},
            {},
            {"port": -1},
            {"port": 65536},
            {"port": False},
            {"port": None},
            {"port": 2222, "reason": 1},
        ],
    ),
    "forward-in": (
        [
            {"listen": 3, "origin": "127.0.0.1:50312"},
            {"listen": 4_294_967_295, "origin": "[::1]:40000"},
        ],
        [{"listen": 5}, {"listen": 7, "origin": "", "other": 1}],
        [
            {},
            {"listen": -1},
            {"listen": 1 << 32},
            {"listen": True},
            {"listen": "3"},
            {"listen": 3, "origin": 5},
            {"listen": 3, "origin": _X255 + "x"},
        ],
    ),
    "token": (
        [
            {"ttl": 3600, "uses": None, "kinds": [], "actions": [], "reason": None},
            {
                "ttl": 7200,
                "uses": 5,
                "kinds": ["ping", "action"],
                "actions": ["gate.*"],
                "reason": "guest",
            },
        ],
        [{"ttl": 60}, {"ttl": 60, "kinds": [], "other": 1}],
        [
            {},
            {"ttl": 59},
            {"ttl": 2592001},
            {"ttl": True},
            {"ttl": 60, "uses": 0},
            {"ttl": 60, "kinds": "ping"},
            {"ttl": 60, "kinds": ["forward"]},
            {"ttl": 60, "actions": ["a,b"]},
            {"ttl": 60, "actions": ["x"] * 33},
        ],
    ),
}


def _kind_entry(kind: str) -> dict[str, object]:
    """One kind's cases: valid (fields, params, bytes), accepted, and refused with the reason."""
    from pstp.protocol.kinds import (
        ActionOpen,
        ActionsOpen,
        BadParams,
        ExecOpen,
        FileOpen,
        ForwardInOpen,
        ForwardOpen,
        ListenOpen,
        PingOpen,
        ShellOpen,
        TokenOpen,
    )

    classes = (
        ActionOpen,
        ActionsOpen,
        ExecOpen,
        ShellOpen,
        PingOpen,
        FileOpen,
        ForwardOpen,
        ListenOpen,
        ForwardInOpen,
        TokenOpen,
    )
    cls: Any = {c.KIND: c for c in classes}[kind]
    valid_fields, accepted, refused = _KIND_CASES[kind]
    valid = []
    for fields in valid_fields:
        obj = cls(**fields)
        params = obj.to_params()
        assert cls.from_params(params) == obj
        valid.append(
            {
                "fields": fields,
                "params": params,
                "msgpack": msgspec.msgpack.encode(params).hex(),
            }
        )
    decode = [
        {"params": params, "fields": msgspec.structs.asdict(cls.from_params(params))}
        for params in accepted
    ]
    rejected = []
    for params in refused:
        try:
            cls.from_params(params)
        except BadParams as exc:
            rejected.append({"params": params, "reason": exc.reason})
        else:
            raise AssertionError(f"{kind}: {params!r} was accepted")
    return {"reserved": False, "valid": valid, "decode": decode, "rejected": rejected}


def build_kinds() -> dict[str, object]:
    """kinds.json: the OPEN params of each channel kind (§17.4 to §17.15) and a listing."""
    from pstp.protocol.kinds import ActionInfo, ArgInfo, decode_listing, encode_listing

    listing = [
        ActionInfo(
            name="gate.open",
            description="open the gate",
            args=[ArgInfo(name="seconds", type="int", required=True, min=1, max=600)],
        ),
        ActionInfo(
            name="lamp.set",
            args=[
                ArgInfo(name="level", type="int", required=False, default=50, min=0, max=100),
                ArgInfo(
                    name="room",
                    type="str",
                    required=False,
                    default="hall",
                    max_len=20,
                    choices=["hall", "desk"],
                ),
                ArgInfo(name="tag", type="str", required=True, max_len=1024, pattern="[a-z]+"),
            ],
        ),
        ActionInfo(name="reboot"),
    ]
    accepted = [encode_listing([]), msgspec.msgpack.encode([{"name": "x", "future": [1, 2]}])]
    refused = [
        (msgspec.msgpack.encode({"name": "x"}), "not an array"),
        (msgspec.msgpack.encode([{"description": "no name"}]), "an action without a name"),
        (
            msgspec.msgpack.encode(
                [{"name": "x", "args": [{"name": "a", "type": "list", "required": True}]}]
            ),
            "an unknown argument type",
        ),
        (encode_listing([]) + b"\x00", "trailing bytes"),
    ]
    for data, _why in refused:
        try:
            decode_listing(data)
        except ValueError:
            continue
        raise AssertionError(f"listing {data.hex()} was accepted")
    return {
        "description": (
            "OPEN params of each channel kind (docs/protocol.md §17.4 to §17.8, §17.12 to "
            "§17.15, §13). 'valid': the struct's fields, the params map a sender puts in "
            "OPEN (as JSON, null = nil) and its exact MessagePack bytes (hex, entries in "
            "this order); decoding the map gives the fields back. 'decode': params a "
            "receiver accepts and the fields they decode to. 'rejected': params a receiver "
            "refuses with code BAD_PARAMS (9) and 'reason' (§17.3). 'reserved' is false "
            "for every kind (it was true for 'forward' before §17.14). 'listing': the "
            "answer of an 'actions' channel."
        ),
        "bad_params_code": ChannelCode.BAD_PARAMS,
        "kinds": {kind: _kind_entry(kind) for kind in _KIND_CASES},
        "listing": {
            "description": (
                "The answer to an 'actions' channel (docs/protocol.md §17.12): 'value' is the "
                "MessagePack array as JSON (null = nil), 'msgpack' its exact bytes (hex; map "
                "entries in this order). 'decode': bytes (hex) a receiver accepts, and the "
                "value it reads (a map key it does not know is ignored). 'rejected': bytes "
                "(hex) a receiver refuses."
            ),
            "value": msgspec.to_builtins(listing),
            "msgpack": encode_listing(listing).hex(),
            "decode": [
                {"msgpack": data.hex(), "value": msgspec.to_builtins(decode_listing(data))}
                for data in accepted
            ],
            "rejected": [{"msgpack": data.hex(), "why": why} for data, why in refused],
        },
    }


#: Fixed inputs of tokens.json (§20): the session is pstp-hs.json's first case.
_TOKEN_ID = "tok_abcdefghijkl"  # noqa: S105  (a public id)
_TOKEN_R = bytes(range(0x40, 0x50))


def build_tokens(hs: dict[str, object]) -> dict[str, object]:
    """tokens.json: a session-derived token's secret, keys and string; its OPEN and grant."""
    from pstp.protocol.handshake import make_kid
    from pstp.protocol.kinds import TokenGrant, TokenOpen
    from pstp.protocol.tokens import encode_token_string, token_label

    case = hs["cases"][0]  # type: ignore[index]
    exporter = bytes.fromhex(case["derived"]["exporter_secret"])  # type: ignore[index]
    label = token_label(_TOKEN_ID)
    secret = hkdf_expand_sha256(exporter, b"PSTP/2 export " + label.encode(), 32)
    key = PeerKey.from_pair_key("phone", secret)
    ask = TokenOpen(ttl=7200, uses=5, kinds=["ping", "action"], actions=["gate.*"])
    grant = TokenGrant(
        id=_TOKEN_ID,
        expires=1_767_225_600.0,
        uses=5,
        kinds=["ping", "action"],
        actions=["gate.*"],
        addresses=["wss://home.example.org/pstp", "192.0.2.20:9000"],
    )
    return {
        "description": (
            "Token known-answer vectors (docs/protocol.md §17.13, §20). The session is the "
            "first case of pstp-hs.json; hex strings."
        ),
        "session_exporter_secret": exporter.hex(),
        "token_id": _TOKEN_ID,
        "export_label": label,
        "hkdf_info": (b"PSTP/2 export " + label.encode()).hex(),
        "secret": secret.hex(),
        "psk": key.psk.hex(),
        "kid_key": key.kid_key.hex(),
        "kid_r": _TOKEN_R.hex(),
        "kid": make_kid(key.kid_key, _TOKEN_R).hex(),
        "token_string": encode_token_string(_TOKEN_ID, secret),
        "open_params": {
            "fields": ask.to_params(),
            "msgpack": msgspec.msgpack.encode(ask.to_params()).hex(),
        },
        "grant": {
            "fields": msgspec.to_builtins(grant),
            "msgpack": msgspec.msgpack.encode(grant).hex(),
        },
        "bad_token_strings": [
            {
                "text": "pstp_tok_" + encode_token_string(_TOKEN_ID, secret)[9:-1] + "A",
                "error": "checksum",
            },
            {"text": "pstp_key_" + encode_token_string(_TOKEN_ID, secret)[9:], "error": "prefix"},
            {"text": encode_token_string(_TOKEN_ID, secret)[:-4], "error": "length"},
        ],
    }


#: The mask key of the WebSocket frame in transports.json (a client picks it at random).
_WS_MASK = bytes.fromhex("37fa213d")


def _ws_frame(payload: bytes, mask: bytes | None) -> bytes:
    """One final binary WebSocket frame (RFC 6455 §5.2), masked when ``mask`` is given."""
    head = bytearray([0x82])
    bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if mask is None:
        return bytes(head) + payload
    return bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def build_transports(hs: dict[str, object]) -> dict[str, object]:
    """transports.json: channel addresses (§19.1) and the WebSocket framing of HS_INIT (§19.2)."""
    from pstp.address import parse

    good = [
        "192.0.2.20:9000",
        "home.local",
        "[2001:db8::20]:7000",
        "tcp://pi-4.home.arpa:9001",
        "ws://127.0.0.1:8080/pstp",
        "wss://home.example.org/pstp",
        "wss://[2001:db8::1]:8443/a/b",
        "mqtt://broker.example.org",
        "mqtts://broker.example.org:8884/home/pstp",
        "mqtt://[2001:db8::5]/site-1/",
    ]
    bad = [
        "http://home/pstp",
        "ws://home/pstp?token=x",
        "wss://user@home/pstp",
        "tcp://home:9000/x",
        "ws://home:0/p",
        "ws://::1/p",
        "my_host:9000",
        "9000",
        "mqtt://broker/a//b",
        "mqtt://broker/pstp/+",
        "mqtts://broker/$SYS",
        "mqtts://user@broker/pstp",
    ]
    addresses = []
    for text in good:
        a = parse(text)
        addresses.append(
            {"text": text, "scheme": a.scheme, "host": a.host, "port": a.port, "path": a.path}
        )
    case = hs["cases"][0]  # type: ignore[index]
    hs_init = bytes.fromhex(case["derived"]["hs_init"])  # type: ignore[index]
    hs_resp = bytes.fromhex(case["derived"]["hs_resp"])  # type: ignore[index]
    return {
        "description": (
            "Transport vectors (docs/protocol.md §19): channel addresses a parser accepts "
            "(with their parts) and refuses; the WebSocket upgrade's required headers; "
            "HS_INIT and HS_RESP of pstp-hs.json's first case as WebSocket binary frames."
        ),
        "addresses": addresses,
        "refused": bad,
        "websocket": {
            "subprotocol": "pstp.v2",
            "request_headers": {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Protocol": "pstp.v2",
            },
            "max_message": 4 + 65536 + 26,
            "mask": _WS_MASK.hex(),
            "hs_init": hs_init.hex(),
            "hs_init_client_frame": _ws_frame(hs_init, _WS_MASK).hex(),
            "hs_resp": hs_resp.hex(),
            "hs_resp_server_frame": _ws_frame(hs_resp, None).hex(),
        },
    }


#: Fixed inputs of mqtt.json (§19.3).  The session ids stand for 16 random bytes.
_MQTT_SIDS = (bytes(range(0x10, 0x20)).hex(), bytes(range(0xA0, 0xB0)).hex())
#: The longest prefix: 8 levels of 64 characters.
_MQTT_LONGEST = "/".join(c * 64 for c in "abcdefgh")
_MQTT_LEVEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _mqtt_prefix(path: str) -> str | None:
    """§19.3's PREFIX of an address path, written out here rather than imported."""
    text = path.strip("/")
    if not text:
        return "pstp"
    levels = text.split("/")
    if len(levels) > 8 or not all(_MQTT_LEVEL.fullmatch(level) for level in levels):
        return None
    return text


def build_mqtt(hs: dict[str, object], tokens: dict[str, object]) -> dict[str, object]:
    """mqtt.json: rendezvous ids, a session's topics, record sizes and prefixes (§19.3).

    HKDF is pyca/cryptography's own (extract with an absent salt, then expand),
    so the file does not depend on pstp's KDF; topics and sizes are written out
    from the text of §19.3.
    """
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

    label = b"PSTP/2 mqtt topic"
    hs_key = hs["cases"][0]["inputs"]["pair_key"]  # type: ignore[index]
    keys = [
        ("32 bytes of 0x00", bytes(32)),
        ("pstp-hs.json's pair key, 0x00..0x1f", bytes.fromhex(hs_key)),
        ("0x01..0x20", bytes(range(1, 33))),
        ("tokens.json's token secret", bytes.fromhex(str(tokens["secret"]))),
    ]
    rendezvous = []
    for note, key in keys:
        extract = hmac.HMAC(bytes(32), hashes.SHA256())
        extract.update(key)
        prk = extract.finalize()
        okm = HKDF(hashes.SHA256(), 32, None, label).derive(key)
        assert okm == HKDFExpand(hashes.SHA256(), 32, label).derive(prk)
        rendezvous.append(
            {
                "note": note,
                "key": key.hex(),
                "prk": prk.hex(),
                "okm": okm.hex(),
                "rid": okm[:16].hex(),
            }
        )
    rid = rendezvous[2]["rid"]
    topics = []
    for prefix, sid in (
        ("pstp", _MQTT_SIDS[0]),
        ("home/site-1", _MQTT_SIDS[1]),
        (_MQTT_LONGEST, _MQTT_SIDS[0]),
    ):
        topics.append(
            {
                "prefix": prefix,
                "rid": rid,
                "sid": sid,
                "up": f"{prefix}/{rid}/{sid}/i",
                "down": f"{prefix}/{rid}/{sid}/r",
                "responder_filter": f"{prefix}/{rid}/+/i",
            }
        )
    up = topics[0]["up"]
    split = [
        {"prefix": "pstp", "topic": up, "rid": rid, "sid": _MQTT_SIDS[0]},
        {"prefix": "home/site-1", "topic": topics[1]["up"], "rid": rid, "sid": _MQTT_SIDS[1]},
        {"prefix": "pstp", "topic": topics[0]["down"], "rid": None, "sid": None},
        {
            "prefix": "pstp",
            "topic": f"pstp/{rid.upper()}/{_MQTT_SIDS[0]}/i",
            "rid": None,
            "sid": None,
        },
        {"prefix": "pstp", "topic": f"pstp/{rid}/{_MQTT_SIDS[0][:30]}/i", "rid": None, "sid": None},
        {"prefix": "pstp", "topic": f"pstp/{rid}/x/{_MQTT_SIDS[0]}/i", "rid": None, "sid": None},
        {"prefix": "home", "topic": up, "rid": None, "sid": None},
        {"prefix": "pstp", "topic": f"pstp/{rid}/+/i", "rid": None, "sid": None},
    ]
    short = topics[0]["down"]
    longest = topics[2]["down"]
    extra = 10 + 30
    sizes = []
    for note, limit, topic, wanted in (
        ("the broker sets no Maximum Packet Size", None, short, 65536),
        ("MQTT's own ceiling, 256 MiB", 268435455, short, 65536),
        ("64 KiB packets", 65536, short, 65536),
        ("64 KiB packets, a smaller max_record_size configured", 65536, short, 4096),
        ("16 KiB packets", 16384, short, 65536),
        (
            "the smallest limit that still carries 1024-byte records",
            1024 + extra + len(short),
            short,
            65536,
        ),
        ("one byte less: refused", 1023 + extra + len(short), short, 65536),
        ("2 KiB packets, the longest topic", 2048, longest, 65536),
        ("1 KiB packets: refused", 1024, short, 65536),
    ):
        room = None if limit is None else limit - extra - len(topic.encode())
        if room is not None and room < 1024:
            result: int | None = None
        else:
            result = wanted if room is None else min(wanted, room)
        sizes.append(
            {
                "note": note,
                "packet_limit": limit,
                "topic": topic,
                "wanted": wanted,
                "max_record": result,
            }
        )
    accepted = [
        "",
        "/",
        "/pstp",
        "/home/site-1",
        "/a/b.c/d_e-f/",
        "/" + "/".join("abcdefgh"),
        "/" + "x" * 64,
        "/" + _MQTT_LONGEST,
    ]
    refused = [
        "/a//b",
        "/pstp/+",
        "/pstp/#",
        "/$SYS",
        "/a b",
        "/caf\u00e9",
        "/" + "/".join("abcdefghi"),
        "/" + "x" * 65,
    ]
    prefixes = []
    for path in accepted:
        prefix = _mqtt_prefix(path)
        assert prefix is not None, path
        prefixes.append({"path": path, "prefix": prefix})
    for path in refused:
        assert _mqtt_prefix(path) is None, path
    return {
        "description": (
            "MQTT mapping vectors (docs/protocol.md §19.3, §13). 'rendezvous': a key K (pair "
            'key or token secret) and RID = HKDF(K, "PSTP/2 mqtt topic", 32)[0..16] in '
            "lower-case hex, with the HKDF-Extract output 'prk' (salt: 32 zero bytes) and the "
            "32-byte output 'okm'. 'topics': a session's up (initiator to responder) and down "
            "topics and the responder's filter. 'split': topics a responder receives under a "
            "prefix, with the RID and SID it reads from them (null: not a session topic, "
            "ignored). 'max_record': the largest record body whose RECORD frame fits a "
            "broker's Maximum Packet Size in a PUBLISH to 'topic' (packet_limit null: none "
            "set), at most 'wanted' (null: the broker is refused). 'prefixes': address paths "
            "and the topic prefix they give, and paths a parser refuses."
        ),
        "label": label.decode(),
        "default_prefix": "pstp",
        "rendezvous": rendezvous,
        "topics": topics,
        "split": split,
        "max_record": {
            "publish_overhead": 10,
            "record_overhead": 30,
            "minimum": 1024,
            "cases": sizes,
        },
        "prefixes": {"accepted": prefixes, "refused": refused},
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
    (OUT / "streams.json").write_text(json.dumps(build_streams(), indent=2) + "\n")
    (OUT / "kinds.json").write_text(json.dumps(build_kinds(), indent=2) + "\n")
    tokens = build_tokens(hs)
    (OUT / "tokens.json").write_text(json.dumps(tokens, indent=2) + "\n")
    (OUT / "transports.json").write_text(json.dumps(build_transports(hs), indent=2) + "\n")
    (OUT / "mqtt.json").write_text(json.dumps(build_mqtt(hs, tokens), indent=2) + "\n")


if __name__ == "__main__":
    main()
