"""Our published known-answer vectors (docs/test-vectors/) reproduce byte for byte."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import struct

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from ecdsa import NIST256p
from ecdsa.ellipticcurve import PointJacobi

from pstp.exceptions import FrameTooLarge, RemoteProtocolError
from pstp.protocol.channels import CHANNEL_TRANSITIONS
from pstp.protocol.config import Config
from pstp.protocol.connection import TRANSITIONS
from pstp.protocol.handshake import InitiatorHandshake, KeyRing, ResponderHandshake
from pstp.protocol.pake import PakeInitiator, PakeProver, PakeResponder, PakeVerifier
from pstp.protocol.record import RecordReceiver, RecordSender, cipher_for_suite
from pstp.protocol.streams import (
    FRAME_HEADER_LEN,
    MAX_FRAME,
    SIGNALS,
    Direction,
    Frame,
    FrameDecoder,
    decode_resize,
    decode_signal,
    encode_frame,
    encode_resize,
    encode_signal,
)
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
PAKE = json.loads((OUR_VECTORS / "pake.json").read_text())
STREAMS = json.loads((OUR_VECTORS / "streams.json").read_text())

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


def test_spec_connection_table_matches_the_code() -> None:
    """docs/protocol.md §4.2 table 1 lists exactly TRANSITIONS, in order."""
    spec = (ROOT / "docs" / "protocol.md").read_text()
    rows = re.findall(r"^\| `(\w+)` +\| (\w+) +\| `(\w+)` +\| .+\|$", spec, re.M)
    code = [(s.name, i.name, n.name) for (s, i), n in TRANSITIONS.items()]
    assert rows == code


def test_diagram_connection_states_match_the_code() -> None:
    """docs/diagram.md's connection stateDiagram has exactly the TRANSITIONS edges."""
    diagram = (ROOT / "docs" / "diagram.md").read_text()
    block = diagram.split("## Connection states", 1)[1].split("```", 2)[1]
    edges = re.findall(r"^ +(\w+) --> (\w+): (\w+)$", block, re.M)
    code = [(s.name, n.name, i.name) for (s, i), n in TRANSITIONS.items()]
    assert sorted(edges) == sorted(code)


# -- PSTP-PAKE (docs/protocol.md §15) -------------------------------------------------

#: The P-256 group order n (SEC 2 §2.4.2), written out here, not imported.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
#: RFC 9383 §4, M and N for P-256 as the RFC prints them (compressed).
RFC9383_M = "02886e2f97ace46e55ba9dd7242579f2993b64e16ef3dcab95afd497333d8fa12f"
RFC9383_N = "03d8bbd6c639c62937b04d997f38c3770719c629d7014d49a24b4f98baa1292b49"


def _len8(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def _uncompressed(compressed_hex: str) -> bytes:
    key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), bytes.fromhex(compressed_hex)
    )
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _point(data: bytes) -> PointJacobi:
    return PointJacobi.from_bytes(NIST256p.curve, data)


def _enc(point: PointJacobi) -> bytes:
    return bytes(point.to_bytes("uncompressed"))


def _text8(s: str) -> bytes:
    raw = s.encode()
    return bytes((len(raw),)) + raw


def test_pake_vectors_reproduce() -> None:
    """pake.json: w0/w1, the five frames, Context, SPAKE2+ and the key schedule, byte for byte.

    The frames come from our code (PakeInitiator, PakeResponder) and are also
    rebuilt from the §15.2 layouts; every derived value is recomputed here with
    hashlib, pyca and python-ecdsa, not through pstp.protocol.pake or
    pstp.crypto.spake2plus.
    """
    inp, want = PAKE["inputs"], PAKE["derived"]
    code = bytes.fromhex(inp["code"])
    assert code.decode() == inp["code_text"]
    salt, iterations = bytes.fromhex(inp["salt"]), inp["iterations"]
    id_p, id_v = inp["prover_id"].encode(), inp["verifier_id"].encode()
    nonce = bytes.fromhex(inp["nonce"])
    x, y = int(inp["x"], 16), int(inp["y"], 16)

    # §15.4: w0, w1 and L.  The prover id is not in the PBKDF2 input.
    password = _len8(code) + _len8(b"") + _len8(id_v)
    assert password.hex() == want["pbkdf2_input"]
    stretched = hashlib.pbkdf2_hmac("sha256", password, salt, iterations, 32)
    assert stretched.hex() == want["pbkdf2_output"]
    seed = HKDF(hashes.SHA256(), 80, None, b"PSTP/2 pake w0w1").derive(stretched)
    assert seed.hex() == want["w0w1_seed"]
    w0 = int.from_bytes(seed[:40], "big") % P256_N
    w1 = int.from_bytes(seed[40:], "big") % P256_N
    assert (w0.to_bytes(32, "big").hex(), w1.to_bytes(32, "big").hex()) == (
        want["w0"],
        want["w1"],
    )
    big_l = (
        ec.derive_private_key(w1, ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    assert big_l.hex() == want["L"]

    # The five frames, through our code.
    pcfg = Config(
        versions=tuple(inp["versions"]),
        suites=tuple(Suite(s) for s in inp["prover_suites"]),
        max_record_size=inp["prover_max_record"],
        service=inp["service"],
    )
    vcfg = Config(
        versions=tuple(inp["versions"]),
        suites=tuple(Suite(s) for s in inp["verifier_suites"]),
        max_record_size=inp["verifier_max_record"],
    )
    verifier = PakeVerifier(inp["verifier_id"], w0, big_l, salt, iterations, pairing=True)
    prover = PakeProver(code, inp["prover_id"], pairing=inp["pairing"])
    initiator = PakeInitiator(prover, pcfg, verifier_id=inp["verifier_id"], nonce=nonce, x=x)
    responder = PakeResponder(verifier, vcfg, keepalive_ms=inp["verifier_keepalive_ms"], y=y)
    req = initiator.request_frame
    assert req.hex() == want["pair_req"]
    resp = responder.read_request(req[4:], 0.0)
    assert resp.hex() == want["pair_resp"]
    share_p_frame = initiator.read_response(resp[4:])
    assert share_p_frame.hex() == want["pair_share_p"]
    share_v_frame = responder.read_share_p(share_p_frame[4:])
    assert share_v_frame.hex() == want["pair_share_v"]
    confirm_p_frame, pkeys = initiator.read_share_v(share_v_frame[4:])
    assert confirm_p_frame.hex() == want["pair_confirm_p"]
    vkeys = responder.read_confirm_p(confirm_p_frame[4:])

    # The same frames rebuilt from the §15.2 layouts.
    suites = b"".join(s.to_bytes(2, "big") for s in inp["prover_suites"])
    req_body = (
        bytes((max(inp["versions"]), int(inp["pairing"]), len(inp["versions"]), *inp["versions"]))
        + _text8(inp["prover_id"])
        + nonce
        + bytes((len(inp["prover_suites"]),))
        + suites
        + inp["prover_max_record"].to_bytes(4, "big")
        + _text8(inp["service"])
    )
    assert req == b"\x03" + len(req_body).to_bytes(3, "big") + req_body
    resp_body = (
        bytes((max(inp["versions"]),))
        + _text8(inp["verifier_id"])
        + bytes((len(salt),))
        + salt
        + iterations.to_bytes(4, "big")
        + want["suite"].to_bytes(2, "big")
        + inp["verifier_max_record"].to_bytes(4, "big")
        + inp["verifier_keepalive_ms"].to_bytes(4, "big")
    )
    assert resp == b"\x04" + len(resp_body).to_bytes(3, "big") + resp_body
    share_p, share_v = bytes.fromhex(want["share_p"]), bytes.fromhex(want["share_v"])
    confirm_v, confirm_p = bytes.fromhex(want["confirm_v"]), bytes.fromhex(want["confirm_p"])
    assert share_p_frame == b"\x05\x00\x00\x41" + share_p
    assert share_v_frame == b"\x06\x00\x00\x61" + share_v + confirm_v
    assert confirm_p_frame == b"\x07\x00\x00\x20" + confirm_p

    # Context: whole PAIR_REQ and PAIR_RESP frames, headers included.
    context = hashlib.sha256(b"PSTP/2 PAKE context" + req + resp).digest()
    assert context.hex() == want["context"]

    # SPAKE2+ (RFC 9383 §3.3-§3.4) with python-ecdsa arithmetic and M, N from the RFC.
    m_point, n_point = _point(_uncompressed(RFC9383_M)), _point(_uncompressed(RFC9383_N))
    g = NIST256p.generator
    assert _enc(g * x + m_point * w0) == share_p
    assert _enc(g * y + n_point * w0) == share_v
    z = _enc((_point(share_v) + -(n_point * w0)) * x)
    v = _enc((_point(share_v) + -(n_point * w0)) * w1)
    assert z == _enc((_point(share_p) + -(m_point * w0)) * y) == bytes.fromhex(want["Z"])
    assert v == _enc(_point(big_l) * y) == bytes.fromhex(want["V"])
    tt = b"".join(
        _len8(part)
        for part in (
            context,
            id_p,
            id_v,
            _uncompressed(RFC9383_M),
            _uncompressed(RFC9383_N),
            share_p,
            share_v,
            z,
            v,
            w0.to_bytes(32, "big"),
        )
    )
    assert tt.hex() == want["TT"]
    k_main = hashlib.sha256(tt).digest()
    assert k_main.hex() == want["K_main"]
    conf = HKDF(hashes.SHA256(), 64, None, b"ConfirmationKeys").derive(k_main)
    assert (conf[:32].hex(), conf[32:].hex()) == (want["K_confirmP"], want["K_confirmV"])
    assert hmac.new(conf[32:], share_p, hashlib.sha256).digest() == confirm_v
    assert hmac.new(conf[:32], share_v, hashlib.sha256).digest() == confirm_p
    k_shared = _hkdf(k_main, b"SharedKey")
    assert k_shared.hex() == want["K_shared"]

    # §15.5: key schedule and session id, and the pair key export (§5.6).
    assert _hkdf(k_shared, b"PSTP/2 PAKE i2r").hex() == want["i2r_key"]
    assert _hkdf(k_shared, b"PSTP/2 PAKE r2i").hex() == want["r2i_key"]
    exporter = _hkdf(k_shared, b"PSTP/2 PAKE exporter")
    assert exporter.hex() == want["exporter_secret"]
    session_id = hashlib.sha256(b"PSTP/2 PAKE session" + context + share_p + share_v).digest()
    assert session_id.hex() == want["session_id"]
    pair_key = HKDFExpand(hashes.SHA256(), 32, b"PSTP/2 export pair key").derive(exporter)
    assert pair_key.hex() == want["export_pair_key"]
    for keys in (pkeys, vkeys):
        assert keys.suite == want["suite"]
        assert keys.i2r_key.hex() == want["i2r_key"]
        assert keys.r2i_key.hex() == want["r2i_key"]
        assert keys.exporter_secret.hex() == want["exporter_secret"]
        assert keys.session_id.hex() == want["session_id"]
    assert pkeys.responder_id == vkeys.responder_id == inp["verifier_id"]
    responder.release(success=True)
    assert (verifier.successes, verifier.failures, verifier.closed) == (1, 0, True)


# -- Stream frames of action, exec and shell channels (docs/protocol.md §17.2) --------

#: §17.2, written out here: frame types per direction, and the signal table.
STREAM_TYPES = {
    "to_server": {"STDIN": 0x00, "RESIZE": 0x01, "SIGNAL": 0x02},
    "to_client": {"STDOUT": 0x00, "STDERR": 0x01},
}
SIGNAL_TABLE = ["INT", "TERM", "HUP", "KILL", "QUIT", "USR1", "USR2", "WINCH"]
#: Error classes named by streams.json's reject cases.
STREAM_ERRORS: dict[str, type[RemoteProtocolError]] = {
    "RemoteProtocolError": RemoteProtocolError,
    "FrameTooLarge": FrameTooLarge,
}


def _frame(frame_type: int, payload: bytes) -> bytes:
    """A stream frame built from §17.2 alone: ``type u8 | length u32 | payload``."""
    return struct.pack(">BI", frame_type, len(payload)) + payload


def _wire_frames(frames: list[dict]) -> list[tuple[int, bytes]]:  # type: ignore[type-arg]
    return [(f["type"], bytes.fromhex(f["payload"])) for f in frames]


def _decoded(frames: list[Frame]) -> list[tuple[int, bytes]]:
    return [(f.type, f.payload) for f in frames]


def _reference_decode(
    direction: str, stream: bytes
) -> tuple[list[tuple[int, bytes]], str | None, int | None, int]:
    """§17.2 rules, applied to ``stream`` fed one byte at a time, without pstp code.

    Returns:
        The frames delivered, the error's class name (``None``: none), the bytes
        fed when it is raised (``None``: at end of stream, or no error), and the
        bytes left over at the end.
    """
    types = STREAM_TYPES[direction]
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while len(stream) - pos >= 5:
        frame_type, length = struct.unpack_from(">BI", stream, pos)
        if frame_type not in types.values():
            return frames, "RemoteProtocolError", pos + 5, 0
        if length > 1 << 20:
            return frames, "FrameTooLarge", pos + 5, 0
        end = pos + 5 + length
        if end > len(stream):
            break
        payload = stream[pos + 5 : end]
        if direction == "to_server" and (
            (frame_type == types["RESIZE"] and len(payload) != 4)
            or (frame_type == types["SIGNAL"] and (len(payload) != 1 or payload[0] >= 8))
        ):
            return frames, "RemoteProtocolError", end, 0
        frames.append((frame_type, payload))
        pos = end
    left = len(stream) - pos
    return frames, ("RemoteProtocolError" if left else None), None, left


def test_stream_constants_match_the_vectors() -> None:
    """Header length, MAX_FRAME, the type tables and the signal table are the published ones."""
    assert STREAMS["header_len"] == FRAME_HEADER_LEN == 5
    assert STREAMS["max_frame"] == MAX_FRAME == 1 << 20
    assert STREAMS["types"] == STREAM_TYPES
    assert STREAMS["signals"] == list(SIGNALS) == SIGNAL_TABLE


@pytest.mark.parametrize(
    "case", STREAMS["frames"], ids=lambda c: f"{c['direction']}-{c['name']}-{c['note']}"
)
def test_stream_frame_vectors_reproduce(case: dict) -> None:  # type: ignore[type-arg]
    """Each frame is the §17.2 layout, what encode_* emits, and what FrameDecoder yields."""
    frame_type, payload = case["type"], bytes.fromhex(case["payload"])
    frame = bytes.fromhex(case["frame"])
    # Independently: the layout and the payload fields, with struct only.
    assert STREAM_TYPES[case["direction"]][case["name"]] == frame_type
    assert len(payload) == case["length"]
    assert _frame(frame_type, payload) == frame
    if "text" in case:
        assert case["text"].encode() == payload
    if case["name"] == "RESIZE":
        assert struct.pack(">HH", case["rows"], case["cols"]) == payload
    if case["name"] == "SIGNAL":
        assert SIGNAL_TABLE[case["index"]] == case["signal"]
        assert bytes((case["index"],)) == payload
    # Through pstp.protocol.streams.
    assert encode_frame(frame_type, payload) == frame
    if case["name"] == "RESIZE":
        assert encode_resize(case["rows"], case["cols"]) == frame
        assert decode_resize(payload) == (case["rows"], case["cols"])
    if case["name"] == "SIGNAL":
        assert encode_signal(case["signal"]) == encode_signal(f"SIG{case['signal']}") == frame
        assert decode_signal(payload) == case["signal"]
    for pieces in ([frame], [frame[i : i + 1] for i in range(len(frame))]):
        decoder = FrameDecoder(Direction(case["direction"]))
        got = [f for piece in pieces for f in decoder.feed(piece)]
        decoder.eof()
        assert got == [Frame(frame_type, payload)]
        assert decoder.pending == 0


@pytest.mark.parametrize("case", STREAMS["split"], ids=lambda c: c["note"])
def test_stream_split_vectors_reproduce(case: dict) -> None:  # type: ignore[type-arg]
    """Frames back to back split into frames the same way whatever pieces the bytes come in."""
    frames = _wire_frames(case["frames"])
    stream = bytes.fromhex(case["stream"])
    pieces = [bytes.fromhex(p["data"]) for p in case["pieces"]]
    # Independently: the stream is the frames' layouts concatenated, and each piece
    # completes exactly the frames whose last byte it holds.
    assert b"".join(_frame(t, p) for t, p in frames) == stream == b"".join(pieces)
    ends = list(itertools.accumulate(5 + len(p) for _, p in frames))
    fed = 0
    for piece, want in zip(pieces, case["pieces"], strict=True):
        before, fed = fed, fed + len(piece)
        done = [i for i, end in enumerate(ends) if before < end <= fed]
        assert want["completes"] == done
        assert want["pending"] == fed - max([0, *(e for e in ends if e <= fed)])
    assert _reference_decode(case["direction"], stream) == (frames, None, None, 0)
    # Through pstp.protocol.streams: encoders, then the decoder in the published pieces.
    assert b"".join(encode_frame(t, p) for t, p in frames) == stream
    decoder = FrameDecoder(Direction(case["direction"]))
    for piece, want in zip(pieces, case["pieces"], strict=True):
        got = _decoded(decoder.feed(piece))
        assert got == [frames[i] for i in want["completes"]]
        assert decoder.pending == want["pending"]
    decoder.eof()
    # ... one byte at a time, and all at once.
    decoder = FrameDecoder(Direction(case["direction"]))
    assert [f for i in range(len(stream)) for f in _decoded(decoder.feed(stream[i : i + 1]))] == (
        frames
    )
    decoder.eof()
    decoder = FrameDecoder(Direction(case["direction"]))
    assert _decoded(decoder.feed(stream)) == frames
    decoder.eof()


@pytest.mark.parametrize("case", STREAMS["reject"], ids=lambda c: f"{c['direction']}-{c['note']}")
def test_stream_reject_vectors_fail(case: dict) -> None:  # type: ignore[type-arg]
    """Bad streams fail with the named error, as soon as the bytes show it, and stay failed."""
    stream = bytes.fromhex(case["stream"])
    frames = _wire_frames(case["frames"])
    error = STREAM_ERRORS[case["error"]]
    # Independently, from the §17.2 rules.
    assert _reference_decode(case["direction"], stream) == (
        frames,
        case["error"],
        case["fails_after"],
        case["pending_at_eof"] or 0,
    )
    # Through pstp.protocol.streams, one byte at a time: nothing fails before the bytes show it.
    decoder = FrameDecoder(Direction(case["direction"]))
    fail_at = case["fails_after"] or len(stream) + 1
    got = [f for i in range(fail_at - 1) for f in _decoded(decoder.feed(stream[i : i + 1]))]
    assert got == frames
    if case["fails_after"] is None:
        assert decoder.pending == case["pending_at_eof"]
    with pytest.raises(error) as caught:
        if case["fails_after"] is None:
            decoder.eof()
        else:
            decoder.feed(stream[fail_at - 1 : fail_at])
    assert type(caught.value) is error
    # The decoder stays failed.
    with pytest.raises(RemoteProtocolError):
        decoder.feed(stream[fail_at:] or b"\x00")
    with pytest.raises(RemoteProtocolError):
        decoder.eof()
    # All at once: the same error.
    decoder = FrameDecoder(Direction(case["direction"]))
    with pytest.raises(error) as caught:
        decoder.feed(stream)
        decoder.eof()
    assert type(caught.value) is error


# --- tokens.json (§17.13, §20) and transports.json (§19), recomputed independently --------

TOKENS = json.loads((OUR_VECTORS / "tokens.json").read_text())
TRANSPORTS = json.loads((OUR_VECTORS / "transports.json").read_text())


def test_token_vectors_follow_from_the_session() -> None:
    """secret = HKDF-Expand(exporter, "PSTP/2 export token ID"); psk, kid as from a pair key."""
    from pstp.protocol.kinds import TokenGrant, TokenOpen
    from pstp.protocol.tokens import decode_token_string, encode_token_string

    v = TOKENS
    assert v["session_exporter_secret"] == HS["cases"][0]["derived"]["exporter_secret"]
    info = b"PSTP/2 export token " + v["token_id"].encode()
    assert bytes.fromhex(v["hkdf_info"]) == info
    secret = HKDFExpand(hashes.SHA256(), 32, info).derive(
        bytes.fromhex(v["session_exporter_secret"])
    )
    assert secret.hex() == v["secret"]

    def derive(label: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 32, None, label).derive(secret)

    assert derive(b"PSTP/2 psk").hex() == v["psk"]
    kid_key = derive(b"PSTP/2 key id")
    assert kid_key.hex() == v["kid_key"]
    r = bytes.fromhex(v["kid_r"])
    assert (r + hmac.new(kid_key, r, hashlib.sha256).digest()[:16]).hex() == v["kid"]
    # The token string: prefix, base64url of id letters, secret and CRC-32, no padding.
    import base64
    import binascii

    body = v["token_id"][4:].encode() + secret
    raw = body + binascii.crc32(body).to_bytes(4, "big")
    assert v["token_string"] == "pstp_tok_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert encode_token_string(v["token_id"], secret) == v["token_string"]
    assert decode_token_string(v["token_string"]) == (v["token_id"], secret)
    for bad in v["bad_token_strings"]:
        with pytest.raises(ValueError, match=bad["error"]):
            decode_token_string(bad["text"])
    # The OPEN params and the grant, as MessagePack.
    params = v["open_params"]
    assert msgspec.msgpack.decode(bytes.fromhex(params["msgpack"])) == params["fields"]
    ask = TokenOpen.from_params(params["fields"])
    assert msgspec.msgpack.encode(ask.to_params()).hex() == params["msgpack"]
    grant = msgspec.msgpack.decode(bytes.fromhex(v["grant"]["msgpack"]), type=TokenGrant)
    assert msgspec.to_builtins(grant) == v["grant"]["fields"]


@pytest.mark.parametrize("case", TRANSPORTS["addresses"], ids=lambda c: c["text"])
def test_transport_address_vectors_parse(case: dict) -> None:  # type: ignore[type-arg]
    """Each address gives its scheme, host, port and path (§19.1)."""
    from pstp.address import parse

    a = parse(case["text"])
    assert (a.scheme, a.host, a.port, a.path) == (
        case["scheme"],
        case["host"],
        case["port"],
        case["path"],
    )


@pytest.mark.parametrize("text", TRANSPORTS["refused"])
def test_transport_refused_address_vectors_are_refused(text: str) -> None:
    """Each refused address raises ValueError (the CLI's check also refuses a bare port)."""
    from pstp.settings import check_channel

    with pytest.raises(ValueError):
        check_channel(text)


def test_websocket_frame_vectors_parse_with_an_independent_reader() -> None:
    """websockets' own frame parser reads HS_INIT (masked) and HS_RESP back (§19.2)."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    from pstp.asyncio.websocket import SUBPROTOCOL, max_message

    ws = TRANSPORTS["websocket"]
    assert ws["subprotocol"] == SUBPROTOCOL and ws["max_message"] == max_message(Config())
    assert ws["hs_init"] == HS["cases"][0]["derived"]["hs_init"]
    for key, mask in (("hs_init_client_frame", True), ("hs_resp_server_frame", False)):
        reader = StreamReader()
        reader.feed_data(bytes.fromhex(ws[key]))
        parser = Frame.parse(reader.read_exact, mask=mask)
        try:
            next(parser)
            raise AssertionError("the frame is incomplete")
        except StopIteration as done:
            frame = done.value
        assert frame.opcode is Opcode.BINARY and frame.fin
        assert frame.data.hex() == ws[key.rsplit("_", 2)[0]]
    client = bytes.fromhex(ws["hs_init_client_frame"])
    start = {126: 4, 127: 10}.get(client[1] & 0x7F, 2)  # after the extended length
    assert client[start : start + 4].hex() == ws["mask"]
