"""Tests for pstp.protocol.connection: the handshake, records and the attacks of §12."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pstp.crypto import keys as dh_keys
from pstp.exceptions import (
    ConnectionClosed,
    DecryptError,
    ErrorCode,
    FrameTooLarge,
    HandshakeFailed,
    InvalidState,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayError,
)
from pstp.protocol.config import Config
from pstp.protocol.connection import (
    TRANSITIONS,
    Connection,
    ConnectionState,
    Input,
    Role,
)
from pstp.protocol.events import (
    ConnectionTerminated,
    DataReceived,
    HandshakeCompleted,
    HeartbeatAcknowledged,
)
from pstp.protocol.handshake import (
    NOISE_PROTOCOL,
    InitiatorHandshake,
    KeyRing,
    PeerKey,
    build_prologue,
)
from pstp.protocol.noise import HandshakeState
from pstp.protocol.pake import PakeProver, PakeVerifier
from pstp.protocol.record import RecordReceiver, cipher_for_suite
from pstp.wire.frames import FrameType, HsInit, HsResp, InitPayload, InnerType, Suite
from tests.helpers import (
    CLIENT_ID,
    EXTERNAL_VECTORS,
    PAIR_KEY,
    SERVER_ID,
    FakeClock,
    Pair,
    feed_all_ways,
    make_client,
    make_keyring,
    make_server,
    next_timestamp,
)


def started_server(keyring: KeyRing | None = None, config: Config | None = None) -> Connection:
    """A responder waiting for HS_INIT."""
    server = make_server(config, keyring)
    server.start(1_000.0)
    return server


def hs_init_bytes(config: Config | None = None, pair_key: bytes = PAIR_KEY) -> bytes:
    """A fresh client's HS_INIT frame."""
    client = make_client(config, pair_key)
    client.start(1_000.0)
    return client.data_to_send()


def terminated(events: list[object]) -> ConnectionTerminated:
    """The ConnectionTerminated among ``events``."""
    found = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert len(found) == 1
    return found[0]


class DhCounter:
    """Counts ECDH operations by wrapping the real P-256 implementation."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = dh_keys.P256.dh

        def counting(dh_self: object, keypair: object, public: bytes) -> bytes:
            self.calls += 1
            return real(dh_self, keypair, public)  # type: ignore[arg-type]

        monkeypatch.setattr(dh_keys.P256, "dh", counting)


# -- the happy path ---------------------------------------------------------


def test_handshake_completes_and_both_sides_agree() -> None:
    """Both sides reach ESTABLISHED with the same session id, suite and peer ids."""
    pair = Pair.new().established()
    c = [e for e in pair.client_events if isinstance(e, HandshakeCompleted)]
    s = [e for e in pair.server_events if isinstance(e, HandshakeCompleted)]
    assert len(c) == len(s) == 1
    assert c[0].session_id == s[0].session_id == pair.client.session_id
    assert c[0].suite == s[0].suite == Suite.AES_256_GCM
    assert c[0].peer_id == SERVER_ID
    assert s[0].peer_id == CLIENT_ID
    assert pair.client.export_secret("x") == pair.server.export_secret("x")
    assert pair.client.export_secret("x") != pair.client.export_secret("y")


def test_data_flows_both_ways_and_large_data_is_split() -> None:
    """DATA arrives intact both ways; data above the record limit spans several records."""
    pair = Pair.new().established()
    pair.client.send_data(b"kettle.on")
    blob = bytes(range(256)) * 1000
    pair.server.send_data(blob)
    pair.roundtrip()
    assert DataReceived(data=b"kettle.on") in pair.server_events
    got = b"".join(e.data for e in pair.client_events if isinstance(e, DataReceived))
    assert got == blob


def test_chacha_is_negotiated_when_the_responder_prefers_it() -> None:
    """The responder's preference among offered suites wins."""
    server_cfg = Config(suites=(Suite.CHACHA20_POLY1305, Suite.AES_256_GCM))
    pair = Pair.new(server_config=server_cfg).established()
    assert pair.client.suite == pair.server.suite == Suite.CHACHA20_POLY1305
    pair.client.send_data(b"x")
    pair.roundtrip()
    assert DataReceived(data=b"x") in pair.server_events


def test_close_is_authenticated_and_reported_to_the_peer() -> None:
    """close() sends CLOSE with code and reason; the peer reports by_peer=True."""
    pair = Pair.new().established()
    pair.client.close(ErrorCode.GOING_AWAY, "bye")
    pair.roundtrip()
    ev = terminated(pair.server_events)
    assert (ev.code, ev.reason, ev.by_peer) == (ErrorCode.GOING_AWAY, "bye", True)
    assert pair.server.state is ConnectionState.CLOSED
    assert isinstance(pair.server.close_exc, ConnectionClosed)


def test_eof_without_close_is_truncation() -> None:
    """The transport ending without a CLOSE record is reported as TRUNCATED."""
    pair = Pair.new().established()
    pair.server.receive_eof(pair.clock.now)
    assert terminated(pair.server.events_received()).code == ErrorCode.TRUNCATED


def test_close_code_is_set_however_the_connection_ends() -> None:
    """close_code equals the reported code after CLOSE, failure, or the transport ending."""
    pair = Pair.new().established()
    pair.client.close(ErrorCode.GOING_AWAY)
    pair.roundtrip()
    assert pair.client.close_code == pair.server.close_code == ErrorCode.GOING_AWAY
    for conn, code in (
        (Pair.new().established().server, ErrorCode.TRUNCATED),
        (started_server(), ErrorCode.HANDSHAKE_FAILED),
    ):
        assert conn.close_code is None
        conn.receive_eof(1_000.0)
        assert conn.close_code == terminated(conn.events_received()).code == code
    conn = started_server()
    conn.receive_data(b"\x42\x00\x00\x00", 1_000.0)
    assert conn.close_code == terminated(conn.events_received()).code


# -- feeding in every way ---------------------------------------------------


def test_hs_init_fed_whole_bytewise_and_with_garbage_gives_the_same_result() -> None:
    """HS_INIT has the same effect whole, byte by byte, and followed by garbage."""
    # Each feeding consumes the key's replay guard, so each gets its own key ring.
    results = feed_all_ways(lambda: started_server(make_keyring()), hs_init_bytes())
    assert results["whole"] == results["bytewise"] == results["garbage"]
    assert results["whole"][1] > 0  # HS_RESP was produced


def test_hs_resp_fed_every_way_gives_the_same_result() -> None:
    """HS_RESP completes the handshake whole, byte by byte, and followed by garbage."""
    outcomes = []
    for way in ("whole", "bytewise", "garbage"):
        client = make_client()
        client.start(1_000.0)
        server = started_server()
        server.receive_data(client.data_to_send(), 1_000.0)
        resp = server.data_to_send()
        if way == "whole":
            client.receive_data(resp, 1_000.0)
        elif way == "bytewise":
            for i in range(len(resp)):
                client.receive_data(resp[i : i + 1], 1_000.0)
        else:
            client.receive_data(resp + b"\x17\x00\x00\x01X", 1_000.0)
        events = [type(e).__name__ for e in client.events_received()]
        outcomes.append(events[:1])
        # The CONFIRM record goes out in every case.
        assert len(client.data_to_send()) >= 4 + 9 + 1 + 32 + 16
    assert outcomes == [["HandshakeCompleted"]] * 3


def test_records_fed_every_way_deliver_the_same_data() -> None:
    """A burst of records is delivered identically whole, bytewise and with garbage."""

    def server_after_confirm() -> tuple[Connection, bytes]:
        pair = Pair.new()
        pair.roundtrip()
        pair.client.send_data(b"one")
        pair.client.send_data(b"two" * 100)
        return pair.server, pair.client.data_to_send()

    seen = []
    for way in ("whole", "bytewise", "garbage"):
        server, data = server_after_confirm()
        server.events_received()
        if way == "whole":
            server.receive_data(data, 1_000.0)
        elif way == "bytewise":
            for i in range(len(data)):
                server.receive_data(data[i : i + 1], 1_000.0)
        else:
            server.receive_data(data + b"\x17\x00\x00\x05junk!", 1_000.0)
        seen.append([e.data for e in server.events_received() if isinstance(e, DataReceived)])
    assert seen[0] == seen[1] == seen[2] == [b"one", b"two" * 100]


# -- attacks (docs/protocol.md §12): replay, floods, silence ------------------------------------


def test_replayed_hs_init_costs_no_ecdh_and_no_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replayed HS_INIT (in or out of order) gets silence, no ECDH, no state change."""
    ring = make_keyring()
    old = hs_init_bytes()
    new = hs_init_bytes()
    for first in (new, old):  # concurrent handshakes may arrive newest first
        server = started_server(ring)
        server.receive_data(first, 1_000.0)
        assert server.data_to_send()  # accepted: HS_RESP
    last = next(iter(ring)).last_timestamp
    counter = DhCounter(monkeypatch)
    for replay in (new, old):
        s = started_server(ring)
        s.receive_data(replay, 1_000.0)
        assert s.data_to_send() == b""
        assert s.state is ConnectionState.CLOSED
        assert terminated(s.events_received()).code == ErrorCode.HANDSHAKE_FAILED
    assert counter.calls == 0
    assert next(iter(ring)).last_timestamp == last


def test_bad_tag_flood_gets_no_reply_and_no_ecdh(monkeypatch: pytest.MonkeyPatch) -> None:
    """HS_INITs with corrupted payload tags are dropped silently, without ECDH."""
    ring = make_keyring()
    counter = DhCounter(monkeypatch)
    for i in range(200):
        frame = bytearray(hs_init_bytes())
        frame[-1 - (i % 16)] ^= 0x01
        s = started_server(ring)
        s.receive_data(bytes(frame), 1_000.0)
        assert s.data_to_send() == b""
        assert isinstance(s.close_exc, DecryptError)
    assert counter.calls == 0
    assert next(iter(ring)).last_timestamp == 0


def test_unknown_key_id_and_bad_tag_look_the_same_to_the_sender() -> None:
    """An unknown key id and a bad tag produce the same bytes, events and state."""
    unknown = started_server()
    unknown.receive_data(hs_init_bytes(pair_key=b"\x99" * 32), 1_000.0)
    bad_tag = started_server()
    frame = bytearray(hs_init_bytes())
    frame[-1] ^= 0x80
    bad_tag.receive_data(bytes(frame), 1_000.0)
    views = []
    for s in (unknown, bad_tag):
        ev = s.events_received()
        views.append((s.data_to_send(), s.state, [(e.code, e.by_peer) for e in ev]))  # type: ignore[attr-defined]
    assert views[0] == views[1]
    assert views[0][0] == b""


def test_every_bit_flip_of_hs_init_is_rejected_silently() -> None:
    """Flipping any single bit of HS_INIT leaves the responder silent (no HS_RESP)."""
    ring = make_keyring()
    frame = hs_init_bytes()
    for bit in range(len(frame) * 8):
        tampered = bytearray(frame)
        tampered[bit // 8] ^= 1 << (bit % 8)
        s = started_server(ring)
        s.receive_data(bytes(tampered), 1_000.0)
        assert s.data_to_send() == b"", f"bit {bit} accepted"
        assert s.state is not ConnectionState.SERVER_EXPECT_CONFIRM


def test_every_bit_flip_of_hs_resp_fails_the_initiator() -> None:
    """Flipping any single bit of HS_RESP makes the initiator fail and send nothing."""
    resp_len = 4 + 2 + 65 + 10 + len(SERVER_ID) + 1 + 16 + 32
    for bit in range(resp_len * 8):
        c = make_client()
        c.start(1_000.0)
        i = c.data_to_send()
        s = started_server()
        s.receive_data(i, 1_000.0)
        r = bytearray(s.data_to_send())
        assert len(r) == resp_len
        r[bit // 8] ^= 1 << (bit % 8)
        c.receive_data(bytes(r), 1_000.0)
        # A flipped length bit leaves the frame incomplete: the stream then ends.
        c.receive_eof(1_000.0)
        assert c.state is ConnectionState.CLOSED, f"bit {bit} accepted"
        assert c.data_to_send() == b""
        assert not any(isinstance(e, HandshakeCompleted) for e in c.events_received())


def test_every_bit_flip_of_a_record_is_rejected() -> None:
    """Flipping any bit of a record's header, ciphertext or tag is rejected, never delivered."""
    pair = Pair.new().established()
    pair.client.send_data(b"open the gate")
    frame = pair.client.data_to_send()
    keys = pair.server._keys
    assert keys is not None
    cipher = cipher_for_suite(keys.suite)
    # The untampered record opens under a fresh receiver positioned after CONFIRM (seq 0).
    rx = RecordReceiver(cipher, keys.i2r_key, Config())
    rx._cur.next_seq = 1
    assert rx.open(frame) == (InnerType.DATA, b"open the gate")
    for bit in range(len(frame) * 8):
        tampered = bytearray(frame)
        tampered[bit // 8] ^= 1 << (bit % 8)
        rx = RecordReceiver(cipher, keys.i2r_key, Config())
        rx._cur.next_seq = 1
        with pytest.raises(RemoteProtocolError):
            rx.open(bytes(tampered))
    # And through the connection: a flipped record ends the session, delivers nothing.
    tampered = bytearray(frame)
    tampered[len(frame) // 2] ^= 0x04
    pair.server.receive_data(bytes(tampered), pair.clock.now)
    ev = pair.server.events_received()
    assert not any(isinstance(e, DataReceived) for e in ev)
    assert terminated(ev).code == ErrorCode.DECRYPT_ERROR


# -- attacks (docs/protocol.md §12): record replay, reorder, duplicate ----------------------------


def test_record_replay_reorder_and_duplicate_are_fatal_on_streams() -> None:
    """On an ordered transport a replayed, reordered or duplicated record ends the session."""
    for attack in ("replay", "reorder", "duplicate"):
        pair = Pair.new().established()
        pair.client.send_data(b"a")
        r1 = pair.client.data_to_send()
        pair.client.send_data(b"b")
        r2 = pair.client.data_to_send()
        if attack == "replay":
            stream = r1 + r2 + r1
        elif attack == "reorder":
            stream = r2 + r1
        else:
            stream = r1 + r1
        pair.server.receive_data(stream, pair.clock.now)
        ev = pair.server.events_received()
        assert pair.server.state is ConnectionState.CLOSED, attack
        assert isinstance(pair.server.close_exc, ReplayError), attack
        delivered = [e.data for e in ev if isinstance(e, DataReceived)]
        assert delivered == {"replay": [b"a", b"b"], "reorder": [], "duplicate": [b"a"]}[attack]


def test_window_mode_drops_replays_and_forgeries_and_ends_on_a_gap() -> None:
    """In window mode duplicates and forgeries are dropped; a lost or overtaken record
    ends the session (channels rely on order, §14.1) instead of leaving a hole."""
    cfg = Config(ordered=False, replay_window=64)
    pair = Pair.new(cfg, cfg).established()
    records = []
    for i in range(5):
        pair.client.send_data(bytes([i]))
        records.append(pair.client.data_to_send())
    order = [records[0], records[0], records[1], records[0], records[2], records[1], records[3]]
    for rec in order:
        pair.server.receive_data(rec, pair.clock.now)
    got = [e.data for e in pair.server.events_received() if isinstance(e, DataReceived)]
    assert got == [b"\x00", b"\x01", b"\x02", b"\x03"]
    assert pair.server.dropped_records == 3
    # A forged record with a far-ahead sequence number must not move the window.
    forged = bytearray(records[4])
    forged[5:13] = (10_000).to_bytes(8, "big")
    pair.server.receive_data(bytes(forged), pair.clock.now)
    pair.server.receive_data(records[4], pair.clock.now)
    got = [e.data for e in pair.server.events_received() if isinstance(e, DataReceived)]
    assert got == [b"\x04"]
    assert pair.server.state is ConnectionState.ESTABLISHED
    # A genuine record after a gap: the session ends with PROTOCOL_ERROR.
    pair.client.send_data(b"lost")
    pair.client.data_to_send()
    pair.client.send_data(b"after")
    pair.server.receive_data(pair.client.data_to_send(), pair.clock.now)
    assert pair.server.state is ConnectionState.CLOSED
    assert pair.server.close_code == ErrorCode.PROTOCOL_ERROR


# -- attacks (docs/protocol.md §12): reflection, stripping, cross-protocol ------------------------


def test_reflected_messages_fail() -> None:
    """HS_INIT reflected to the initiator, HS_RESP and records reflected to their sender, fail."""
    client = make_client()
    client.start(1_000.0)
    init = client.data_to_send()
    client.receive_data(init, 1_000.0)
    assert client.state is ConnectionState.CLOSED
    pair = Pair.new()
    init = pair.client.data_to_send()
    pair.server.receive_data(init, 1_000.0)
    resp = pair.server.data_to_send()
    pair.server.receive_data(resp, 1_000.0)
    assert pair.server.state is ConnectionState.CLOSED
    pair = Pair.new().established()
    pair.client.send_data(b"mine")
    own = pair.client.data_to_send()
    pair.client.receive_data(own, 1_000.0)
    assert pair.client.state is ConnectionState.CLOSED
    assert not any(isinstance(e, DataReceived) for e in pair.client.events_received())


def test_confirm_values_are_role_separated() -> None:
    """confirm_I differs from confirm_R, so neither can be reflected as the other."""
    ini = InitiatorHandshake(PAIR_KEY, Config(), timestamp=next_timestamp(), responder_id=SERVER_ID)
    server = started_server()
    server.receive_data(ini.message.serialize(), 1_000.0)
    resp = HsResp.parse(server.data_to_send()[4:])
    ini.read_response(resp.serialize()[4:])
    assert ini.confirm != resp.confirm
    assert len(ini.confirm) == len(resp.confirm) == 32


def test_cleartext_header_and_flags_are_bound_into_the_transcript() -> None:
    """Stripping the responder-id or discovery flag, or changing the version, breaks HS_INIT."""
    frame = hs_init_bytes()
    msg = HsInit.parse(frame[4:])
    variants = [
        HsInit(msg.version, 0, msg.kid, None, msg.ephemeral, msg.ciphertext),
        HsInit(3, msg.flags, msg.kid, None, msg.ephemeral, msg.ciphertext),
    ]
    for v in variants:
        s = started_server(config=Config(versions=(2, 3)))
        s.receive_data(v.serialize(), 1_000.0)
        assert s.data_to_send() == b""


def test_version_downgrade_is_detected() -> None:
    """An HS_INIT whose header version is below the best common one is refused."""
    ring = make_keyring()
    ini = InitiatorHandshake(
        PAIR_KEY,
        Config(versions=(2, 3)),
        timestamp=next_timestamp(),
        responder_id=SERVER_ID,
        version=2,
    )
    s = started_server(ring, Config(versions=(2, 3)))
    s.receive_data(ini.message.serialize(), 1_000.0)
    assert s.data_to_send() == b""
    assert "downgrade" in str(s.close_exc)
    # The same offer against a responder that only speaks 2 is fine.
    ini = InitiatorHandshake(
        PAIR_KEY,
        Config(versions=(2, 3)),
        timestamp=next_timestamp(),
        responder_id=SERVER_ID,
        version=2,
    )
    s = started_server(ring, Config(versions=(2,)))
    s.receive_data(ini.message.serialize(), 1_000.0)
    assert s.data_to_send() != b""


def test_suite_not_offered_is_refused_by_the_initiator() -> None:
    """A responder that picks a suite the initiator did not offer fails the handshake."""
    client = make_client(Config(suites=(Suite.AES_256_GCM,)))
    client.start(1_000.0)
    init = HsInit.parse(client.data_to_send()[4:])
    # A responder that knows the pair key but ignores the offer (we play it by hand).
    peer = PeerKey.from_pair_key(CLIENT_ID, PAIR_KEY)
    noise = HandshakeState(
        NOISE_PROTOCOL,
        initiator=False,
        prologue=build_prologue(init.header_bytes(), SERVER_ID, b"", b""),
        psks=[peer.psk],
    )
    InitPayload.parse(noise.read_message(init.ephemeral + init.ciphertext))
    from pstp.protocol import handshake as hs
    from pstp.wire.frames import RespPayload

    raw = noise.write_message(RespPayload(Suite.CHACHA20_POLY1305, 65536, 0, SERVER_ID).serialize())
    confirm = hs._confirm(noise.chaining_key, hs.LABEL_CONFIRM_R, noise.handshake_hash)
    client.receive_data(HsResp(2, raw[:65], raw[65:], confirm).serialize(), 1_000.0)
    assert client.state is ConnectionState.CLOSED
    assert "did not offer" in str(client.close_exc)


def test_same_pair_key_under_another_protocol_label_is_useless() -> None:
    """HS_INIT built with the same key under another Noise name or prologue label is refused."""
    client = make_client()
    client.start(1_000.0)
    real = HsInit.parse(client.data_to_send()[4:])
    peer = PeerKey.from_pair_key(CLIENT_ID, PAIR_KEY)
    payload = InitPayload(next_timestamp(), (2,), (1,), 65536, "session").serialize()
    others = [
        (
            "Noise_NNpsk0_P256_ChaChaPoly_SHA256",
            build_prologue(real.header_bytes(), SERVER_ID, b"", b""),
        ),
        (
            "Noise_NNpsk0_25519_AESGCM_SHA256",
            build_prologue(real.header_bytes(), SERVER_ID, b"", b""),
        ),
        (NOISE_PROTOCOL, b"PSTP/3 prologue" + real.header_bytes()),
    ]
    for name, prologue in others:
        noise = HandshakeState(name, initiator=True, prologue=prologue, psks=[peer.psk])
        raw = noise.write_message(payload)
        if len(raw) - 16 - len(payload) != 65:
            raw = b"\x04" + raw[:64].ljust(64, b"\x00") + raw[-(len(payload) + 16) :]
        frame = HsInit(2, real.flags, real.kid, None, raw[:65], raw[65:]).serialize()
        s = started_server()
        s.receive_data(frame, 1_000.0)
        assert s.data_to_send() == b"", name
    # And the raw pair key used directly as psk (no label) is refused too.
    noise = HandshakeState(
        NOISE_PROTOCOL,
        initiator=True,
        prologue=build_prologue(real.header_bytes(), SERVER_ID, b"", b""),
        psks=[PAIR_KEY],
    )
    raw = noise.write_message(payload)
    s = started_server()
    s.receive_data(HsInit(2, real.flags, real.kid, None, raw[:65], raw[65:]).serialize(), 1.0)
    assert s.data_to_send() == b""


# -- attacks (docs/protocol.md §12): invalid points ---------------------------------------------


def _wycheproof_invalid_points() -> list[bytes]:
    data = json.loads(
        (EXTERNAL_VECTORS / "wycheproof" / "ecdh_secp256r1_ecpoint_test.json").read_text()
    )
    points = []
    for group in data["testGroups"]:
        for case in group["tests"]:
            raw = bytes.fromhex(case["public"])
            if case["result"] == "invalid" and len(raw) == 65:
                points.append(raw)
    return points


def test_invalid_points_in_hs_resp_are_rejected() -> None:
    """HS_RESP carrying an invalid or off-curve P-256 point fails as HandshakeFailed."""
    points = [*_wycheproof_invalid_points(), b"\x04" + b"\x00" * 64, b"\x00" * 65]
    assert points
    for point in points:
        c = make_client()
        c.start(1_000.0)
        s = started_server()
        s.receive_data(c.data_to_send(), 1_000.0)
        resp = HsResp.parse(s.data_to_send()[4:])
        c.receive_data(HsResp(2, point, resp.ciphertext, resp.confirm).serialize(), 1_000.0)
        assert isinstance(c.close_exc, HandshakeFailed), point.hex()
        assert c.data_to_send() == b""


def test_invalid_point_in_hs_init_fails_silently_at_ecdh() -> None:
    """An HS_INIT that authenticates but carries an invalid point gets no reply."""
    peer = PeerKey.from_pair_key(CLIENT_ID, PAIR_KEY)
    from pstp.protocol.handshake import make_kid
    from pstp.wire.frames import HS_FLAG_RESPONDER_ID, hs_init_header

    for point in [*_wycheproof_invalid_points()[:5], b"\x04" + b"\x00" * 64]:
        kid = make_kid(peer.kid_key, b"\x01" * 16)
        header = hs_init_header(2, HS_FLAG_RESPONDER_ID, kid, None)
        # Build message 1 by hand with the Noise symmetric state, e = the bad point.
        from pstp.protocol.noise import SymmetricState

        ss = SymmetricState(NOISE_PROTOCOL, cipher="AESGCM", hash_name="SHA256")
        ss.mix_hash(build_prologue(header, SERVER_ID, b"", b""))
        ss.mix_key_and_hash(peer.psk)
        ss.mix_hash(point)
        ss.mix_key(point)
        ct = ss.encrypt_and_hash(
            InitPayload(next_timestamp(), (2,), (1,), 65536, "session").serialize()
        )
        s = started_server()
        s.receive_data(HsInit(2, HS_FLAG_RESPONDER_ID, kid, None, point, ct).serialize(), 1.0)
        assert s.data_to_send() == b""
        assert isinstance(s.close_exc, HandshakeFailed)


# -- attacks (docs/protocol.md §12): ordering, data before the handshake ---------------------------


def test_data_before_handshake_completion_is_refused() -> None:
    """A record before HS_INIT, or DATA before CONFIRM, aborts; sending early raises."""
    pair = Pair.new().established()
    pair.client.send_data(b"x")
    record = pair.client.data_to_send()
    s = started_server()
    s.receive_data(record, 1_000.0)
    assert s.state is ConnectionState.CLOSED and s.data_to_send() == b""
    # DATA in place of CONFIRM: take a fresh pair and drop the CONFIRM record.
    pair = Pair.new()
    pair.server.receive_data(pair.client.data_to_send(), 1_000.0)
    pair.client.receive_data(pair.server.data_to_send(), 1_000.0)
    with pytest.raises(InvalidState):
        pair.server.send_data(b"too early")
    out = pair.client.data_to_send()
    confirm_len = 4 + 9 + 1 + 32 + 16
    pair.client.send_data(b"sneaky")
    data_only = pair.client.data_to_send()
    # Re-seal would be needed to forge seq 0; any record but CONFIRM first is refused.
    pair.server.receive_data(data_only, 1_000.0)
    assert pair.server.state is ConnectionState.CLOSED
    assert not any(isinstance(e, DataReceived) for e in pair.server.events_received())
    assert len(out) == confirm_len


@pytest.mark.parametrize("length", [0, 1, 60_000, 65_600])
def test_a_record_header_before_the_keys_is_refused_before_its_body(length: int) -> None:
    """Only the 4-byte header of a RECORD arrives before HS_INIT: refused at once.

    The responder used to keep up to 64 KiB of such a body before judging the frame,
    so every keyless connection could hold that much (docs/protocol.md §6.1).
    """
    s = started_server()
    s.receive_data(bytes([FrameType.RECORD]) + length.to_bytes(3, "big"), 1_000.0)
    assert s.state is ConnectionState.CLOSED
    assert isinstance(s.close_exc, RemoteProtocolError)
    assert "record before the handshake" in str(s.close_exc)


def test_wrong_confirm_gets_silence_from_the_responder() -> None:
    """A CONFIRM record that decrypts but carries a wrong confirm_I gets no reply at all."""
    for body in (b"\x00" * 32, b"\x00" * 33):
        pair = Pair.new()
        pair.server.receive_data(pair.client.data_to_send(), 1_000.0)
        pair.client.receive_data(pair.server.data_to_send(), 1_000.0)
        pair.client.data_to_send()  # drop the real CONFIRM
        sender = pair.client._sender
        assert sender is not None
        sender.seq = 0
        forged = sender.seal(InnerType.CONFIRM, body, 1_000.0)
        pair.server.receive_data(forged, 1_000.0)
        assert pair.server.state is ConnectionState.CLOSED
        assert pair.server.data_to_send() == b""
        assert terminated(pair.server.events_received()).code == ErrorCode.HANDSHAKE_FAILED


def test_out_of_order_and_second_handshake_messages_abort() -> None:
    """HS_RESP to a responder, HS_INIT to an initiator, a second HS_INIT, all abort."""
    pair = Pair.new()
    init = pair.client.data_to_send()
    pair.server.receive_data(init, 1_000.0)
    resp = pair.server.data_to_send()
    s = started_server()
    s.receive_data(resp, 1_000.0)
    assert s.state is ConnectionState.CLOSED
    pair.client.receive_data(resp, 1_000.0)
    pair.server.receive_data(pair.client.data_to_send(), 1_000.0)
    assert pair.server.state is ConnectionState.ESTABLISHED
    pair.server.receive_data(hs_init_bytes(), 1_000.0)
    assert pair.server.state is ConnectionState.CLOSED
    assert terminated(pair.server.events_received()).code == ErrorCode.PROTOCOL_ERROR


# -- attacks (docs/protocol.md §12): forward secrecy ---------------------------------------------


def test_recorded_traffic_stays_sealed_after_the_pair_key_leaks() -> None:
    """With the pair key and the whole transcript, recorded records still cannot be opened."""
    pair = Pair.new().established()
    pair.client.send_data(b"secret: the door code is 4711")
    pair.roundtrip()
    init = HsInit.parse(pair.wire[0][1][4:])
    resp = HsResp.parse(pair.wire[1][1][4 : 4 + int.from_bytes(pair.wire[1][1][1:4], "big")])
    records = pair.wire[-1][1]
    # The attacker now holds PAIR_KEY.  It can read HS_INIT's payload (documented, §12) ...
    peer = PeerKey.from_pair_key(CLIENT_ID, PAIR_KEY)
    noise = HandshakeState(
        NOISE_PROTOCOL,
        initiator=False,
        prologue=build_prologue(init.header_bytes(), SERVER_ID, b"", b""),
        psks=[peer.psk],
    )
    InitPayload.parse(noise.read_message(init.ephemeral + init.ciphertext))
    # ... but every key it can derive uses its own ephemeral, not e_R's secret.
    noise.write_message(b"")
    i2r, _ = noise.split()
    rx = RecordReceiver("AESGCM", i2r.key, Config())
    rx._cur.next_seq = 1  # the data record follows CONFIRM (seq 0)
    with pytest.raises(DecryptError):
        rx.open(records[: 4 + int.from_bytes(records[1:4], "big")])
    # Nor can it play initiator against the recorded HS_RESP without e_I's secret.
    att = HandshakeState(
        NOISE_PROTOCOL,
        initiator=True,
        prologue=build_prologue(init.header_bytes(), SERVER_ID, b"", b""),
        psks=[peer.psk],
    )
    att.write_message(InitPayload(1, (2,), (1,), 65536, "session").serialize())
    with pytest.raises(DecryptError):
        att.read_message(resp.ephemeral + resp.ciphertext)


# -- heartbeats and timeouts -------------------------------------------------


def test_heartbeats_answer_and_silent_peer_is_declared_dead() -> None:
    """Idle sessions exchange PING/PONG; a silent peer is declared dead after N misses."""
    cfg = Config(keepalive_interval=5.0, keepalive_count_max=3)
    pair = Pair.new(cfg, cfg).established()
    deadline = pair.client.next_deadline()
    assert deadline == pytest.approx(pair.clock.now + 5.0)
    pair.client.handle_timer(pair.clock.advance(5.0))
    pair.roundtrip()
    assert any(isinstance(e, HeartbeatAcknowledged) for e in pair.client_events)
    # Now the server goes silent: the client pings 3 times, then gives up.
    for _ in range(3):
        pair.client.handle_timer(pair.clock.advance(5.0))
        assert pair.client.data_to_send()  # a PING, never answered
    pair.client.handle_timer(pair.clock.advance(5.0))
    ev = terminated(pair.client.events_received())
    assert ev.code == ErrorCode.TIMEOUT
    assert pair.client.state is ConnectionState.CLOSED


def test_handshake_timeout() -> None:
    """A responder that never gets HS_INIT, and an initiator never answered, time out."""
    clock = FakeClock()
    for conn in (make_server(), make_client()):
        conn.start(clock.now)
        conn.data_to_send()
        conn.handle_timer(clock.now + 9.9)
        assert conn.state is not ConnectionState.CLOSED
        conn.handle_timer(clock.now + 10.0)
        assert terminated(conn.events_received()).code == ErrorCode.TIMEOUT


# -- limits ------------------------------------------------------------------


def test_oversized_frames_are_refused_from_the_header() -> None:
    """A frame header announcing more than the limit is refused before its body arrives."""
    s = started_server()
    s.receive_data(bytes((FrameType.HS_INIT,)) + (5000).to_bytes(3, "big"), 1_000.0)
    assert isinstance(s.close_exc, FrameTooLarge)
    pair = Pair.new().established()
    big = Config().max_record_size + 9 + 1 + 16 + 1
    pair.server.receive_data(bytes((FrameType.RECORD,)) + big.to_bytes(3, "big"), 1.0)
    assert isinstance(pair.server.close_exc, FrameTooLarge)
    assert terminated(pair.server.events_received()).code == ErrorCode.FRAME_TOO_LARGE


def test_nonces_never_repeat_and_rekey_happens_at_the_limit() -> None:
    """Across many records and several ratchets, no (epoch, seq) repeats and all decrypt."""
    cfg = Config(rekey_after_records=16, reject_after_records=32)
    pair = Pair.new(cfg, cfg).established()
    sender = pair.client._sender
    assert sender is not None
    sender.nonce_log = []
    keys_seen = set()
    for i in range(100):
        pair.client.send_data(i.to_bytes(2, "big"))
        keys_seen.add(sender._aead.rekey())
    pair.roundtrip()
    log = sender.nonce_log
    assert len(log) == len(set(log))
    assert max(seq for _, seq in log) <= 15
    assert len({e for e, _ in log}) >= 6
    got = [e.data for e in pair.server_events if isinstance(e, DataReceived)]
    assert got == [i.to_bytes(2, "big") for i in range(100)]


def test_rekey_by_time_and_by_bytes() -> None:
    """A key is ratcheted after rekey_after_seconds and after rekey_after_bytes."""
    cfg = Config(rekey_after_seconds=60.0, rekey_after_bytes=4096, reject_after_bytes=8192)
    pair = Pair.new(cfg, cfg).established()
    sender = pair.client._sender
    assert sender is not None
    pair.client.send_data(b"a")
    assert sender.epoch == 0
    pair.clock.advance(61.0)
    pair.client.handle_timer(pair.clock.now)
    pair.client.send_data(b"b")
    assert sender.epoch == 1
    for _ in range(3):
        pair.client.send_data(b"x" * 2000)
    assert sender.epoch == 2
    pair.roundtrip()
    assert pair.server.state is ConnectionState.ESTABLISHED


def test_receiver_refuses_records_past_the_hard_limit() -> None:
    """A peer that never rekeys is cut off at reject_after_records."""
    loose = Config(rekey_after_records=1000, reject_after_records=2000)
    strict = Config(rekey_after_records=10, reject_after_records=20)
    pair = Pair.new(loose, strict).established()
    for i in range(25):
        pair.client.send_data(bytes([i]))
    pair.roundtrip()
    assert pair.server.state is ConnectionState.CLOSED
    assert terminated(pair.server_events).code == ErrorCode.KEY_EXHAUSTED
    got = [e for e in pair.server_events if isinstance(e, DataReceived)]
    assert len(got) == 19  # CONFIRM took seq 0; seqs 1..19 delivered


# -- state machine -----------------------------------------------------------


@given(st.sampled_from(list(ConnectionState)), st.sampled_from(list(Input)))
def test_every_state_input_pair_is_legal_or_refused(state: ConnectionState, inp: Input) -> None:
    """Each (state, input) either has a table entry or is refused with RemoteProtocolError."""
    conn = make_server()
    conn._state = state
    if (state, inp) in TRANSITIONS:
        assert conn._next_state(inp) is TRANSITIONS[(state, inp)]
    else:
        with pytest.raises(RemoteProtocolError):
            conn._next_state(inp)
    assert conn.state is state  # looking a move up never changes the state


def test_misuse_raises_local_errors() -> None:
    """Calling verbs in the wrong state or without role arguments raises at once."""
    with pytest.raises(LocalProtocolError):
        Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        Connection(Role.SERVER)
    conn = make_client()
    with pytest.raises(InvalidState):
        conn.receive_data(b"x", 1.0)
    conn.start(1.0)
    with pytest.raises(InvalidState):
        conn.start(1.0)
    with pytest.raises(InvalidState):
        conn.send_data(b"x")
    with pytest.raises(InvalidState):
        _ = conn.session_id


# -- robustness --------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_from_receive_data(data: bytes) -> None:
    """receive_data never raises on arbitrary input, in any state."""
    for conn in (started_server(), make_client()):
        if conn.state is ConnectionState.IDLE:
            conn.start(1.0)
            conn.data_to_send()
        conn.receive_data(data, 1.0)
        conn.events_received()
    pair = Pair.new().established()
    pair.server.receive_data(data, 1.0)
    pair.client.receive_data(data, 1.0)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_arbitrary_record_bodies_only_raise_documented_errors(data: bytes) -> None:
    """A record frame with an arbitrary body raises only RemoteProtocolError subclasses."""
    rx = RecordReceiver("AESGCM", b"\x01" * 32, Config())
    frame = bytes((FrameType.RECORD,)) + len(data).to_bytes(3, "big") + data
    with pytest.raises(RemoteProtocolError):
        rx.open(frame)


def test_close_record_reason_is_not_sent_for_local_errors() -> None:
    """When a local check fails, the CLOSE sent carries the code but no error text."""
    pair = Pair.new().established()
    pair.server.receive_data(b"\x42\x00\x00\x00", 1.0)  # unknown frame type
    out = pair.server.data_to_send()
    pair.client.receive_data(out, 1.0)
    ev = terminated(pair.client.events_received())
    assert ev.code == ErrorCode.PROTOCOL_ERROR and ev.reason == "" and ev.by_peer


def test_inner_type_enum_matches_the_table() -> None:
    """Every inner record type maps to a state-machine input."""
    from pstp.protocol.connection import _INNER_INPUT

    assert set(_INNER_INPUT) == set(InnerType)


# -- records a peer may forge --------------------------------------------------


def forged(sender_side: Connection, inner: int, body: bytes) -> bytes:
    """A record sealed by ``sender_side``'s real keys, with any inner type and body."""
    sender = sender_side._sender
    assert sender is not None
    return sender.seal(inner, body, 1_000.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("inner", [0x00, 0x07, 0x12, 0xFF])
def test_unknown_inner_record_type_ends_the_session(inner: int) -> None:
    """An authenticated record with an unassigned inner type is a protocol error."""
    pair = Pair.new().established()
    pair.server.receive_data(forged(pair.client, inner, b"x"), pair.clock.now)
    assert pair.server.state is ConnectionState.CLOSED
    assert terminated(pair.server.events_received()).code == ErrorCode.PROTOCOL_ERROR
    assert f"unknown record type 0x{inner:02x}" in str(pair.server.close_exc)
    pair.client.receive_data(pair.server.data_to_send(), pair.clock.now)
    assert terminated(pair.client.events_received()).by_peer


@pytest.mark.parametrize("inner", [InnerType.PING, InnerType.PONG])
@pytest.mark.parametrize("size", [0, 7, 9, 64])
def test_heartbeat_bodies_other_than_eight_bytes_end_the_session(
    inner: InnerType, size: int
) -> None:
    """A PING or PONG whose body is not the 8-byte counter is a protocol error."""
    pair = Pair.new().established()
    pair.server.receive_data(forged(pair.client, inner, bytes(size)), pair.clock.now)
    assert terminated(pair.server.events_received()).code == ErrorCode.PROTOCOL_ERROR
    assert f"bad {inner.name} length" in str(pair.server.close_exc)


def test_ping_is_echoed_with_the_same_counter() -> None:
    """A peer's PING is answered by a PONG carrying its 8 bytes unchanged."""
    pair = Pair.new().established()
    pair.server.receive_data(forged(pair.client, InnerType.PING, b"12345678"), pair.clock.now)
    keys = pair.client._keys
    assert keys is not None
    rx = RecordReceiver(cipher_for_suite(keys.suite), keys.r2i_key, Config())
    assert rx.open(pair.server.data_to_send()) == (InnerType.PONG, b"12345678")


def test_unsolicited_pong_is_ignored() -> None:
    """A PONG for a counter we never sent reports nothing and keeps the session."""
    pair = Pair.new().established()
    pair.client.send_ping()
    pair.client.data_to_send()  # lost: the server never answers it
    pong = forged(pair.server, InnerType.PONG, (999).to_bytes(8, "big"))
    pair.client.receive_data(pong, pair.clock.now)
    assert pair.client.events_received() == []
    assert pair.client.state is ConnectionState.ESTABLISHED


def test_pong_reports_the_round_trip_time() -> None:
    """HeartbeatAcknowledged carries the time between our PING and its PONG."""
    pair = Pair.new().established()
    pair.client.send_ping()
    ping = pair.client.data_to_send()
    pair.server.receive_data(ping, pair.clock.advance(0.25))
    pair.client.receive_data(pair.server.data_to_send(), pair.clock.advance(0.5))
    (ack,) = pair.client.events_received()
    assert ack == HeartbeatAcknowledged(rtt=pytest.approx(0.75))


def test_only_the_latest_sixteen_pings_are_remembered() -> None:
    """Unanswered PINGs do not pile up: PONGs to the oldest of 20 are ignored."""
    pair = Pair.new().established()
    for _ in range(20):
        pair.client.send_ping()
    assert len(pair.client._ping_sent_at) == 16
    pair.roundtrip()
    acks = [e for e in pair.client_events if isinstance(e, HeartbeatAcknowledged)]
    assert len(acks) == 16
    assert pair.client.state is ConnectionState.ESTABLISHED


def test_send_ping_outside_established_raises() -> None:
    """send_ping before the handshake completes or after the session ends raises."""
    conn = make_client()
    with pytest.raises(InvalidState):
        conn.send_ping()
    conn.start(1.0)
    with pytest.raises(InvalidState):
        conn.send_ping()
    pair = Pair.new().established()
    pair.client.close()
    with pytest.raises(InvalidState):
        pair.client.send_ping()


# -- challenge and response -----------------------------------------------------


def test_challenge_response_is_e_r_and_the_confirm_sent() -> None:
    """The initiator's (challenge, response) are HS_RESP's e_R and CONFIRM's body."""
    pair = Pair.new().established()
    challenge, response = pair.client.challenge_response
    resp_frame = pair.wire[1][1]
    assert challenge == HsResp.parse(resp_frame[4:]).ephemeral
    keys = pair.server._keys
    assert keys is not None
    rx = RecordReceiver(cipher_for_suite(keys.suite), keys.i2r_key, Config())
    assert rx.open(pair.wire[2][1]) == (InnerType.CONFIRM, response)
    assert len(challenge) == 65 and len(response) == 32


def test_challenge_response_needs_an_established_initiator() -> None:
    """A responder, or an initiator before the handshake completes, has no challenge."""
    pair = Pair.new()
    with pytest.raises(InvalidState):
        _ = pair.client.challenge_response
    pair.established()
    with pytest.raises(InvalidState, match="only the initiator"):
        _ = pair.server.challenge_response
    pair.client.close()
    with pytest.raises(InvalidState):
        _ = pair.client.challenge_response


# -- closing and timers -----------------------------------------------------------


def test_closing_twice_sends_and_reports_once() -> None:
    """A second close() queues no bytes and reports no second termination."""
    pair = Pair.new().established()
    pair.client.close(ErrorCode.GOING_AWAY)
    assert pair.client.data_to_send()
    assert terminated(pair.client.events_received()).code == ErrorCode.GOING_AWAY
    pair.client.close(ErrorCode.NORMAL)
    assert pair.client.data_to_send() == b""
    assert pair.client.events_received() == []
    assert pair.client.close_code == ErrorCode.GOING_AWAY


def test_no_deadline_before_start_or_after_close() -> None:
    """next_deadline is None while IDLE and once CLOSED; handle_timer then does nothing."""
    conn = make_client()
    assert conn.next_deadline() is None
    conn.handle_timer(1e9)
    assert conn.state is ConnectionState.IDLE
    pair = Pair.new().established()
    pair.client.close()
    pair.client.events_received()
    pair.client.data_to_send()
    assert pair.client.next_deadline() is None
    pair.client.handle_timer(pair.clock.advance(1e6))
    assert pair.client.data_to_send() == b""
    assert pair.client.events_received() == []


def test_keepalive_disabled_on_either_side() -> None:
    """The initiator adopts a shorter responder keepalive, but never one it disabled."""
    quiet = Config(keepalive_interval=None)
    pair = Pair.new(quiet, Config(keepalive_interval=5.0)).established()
    assert pair.client.next_deadline() is None
    pair.client.handle_timer(pair.clock.advance(1e6))
    assert pair.client.data_to_send() == b""
    # A responder without keepalive leaves the initiator's own interval in force.
    pair = Pair.new(Config(keepalive_interval=7.0), quiet).established()
    assert pair.client.next_deadline() == pytest.approx(pair.clock.now + 7.0)
    assert pair.server.next_deadline() is None
    # A responder with a shorter one shortens the initiator's.
    pair = Pair.new(Config(keepalive_interval=7.0), Config(keepalive_interval=3.0)).established()
    assert pair.client.next_deadline() == pytest.approx(pair.clock.now + 3.0)


def _pake_pair(
    client_config: Config | None = None,
    server_config: Config | None = None,
    logger: logging.Logger | None = None,
) -> Pair:
    """A started pair keyed by a human code (PSTP-PAKE) instead of a pair key."""
    verifier = PakeVerifier.from_code(b"31415926", SERVER_ID, pairing=False)
    client = Connection(
        Role.CLIENT, client_config, pake=PakeProver(b"31415926", CLIENT_ID), logger=logger
    )
    server = Connection(Role.SERVER, server_config, own_id=SERVER_ID, pake=verifier, logger=logger)
    pair = Pair(client, server)
    server.start(pair.clock.now)
    client.start(pair.clock.now)
    return pair


@pytest.mark.parametrize(
    ("client_interval", "server_interval", "expected"),
    [
        (7.0, 3.0, 3.0),  # the verifier's shorter interval from PAIR_RESP is adopted
        (3.0, 7.0, 3.0),  # a longer one does not lengthen the prover's own
        (7.0, None, 7.0),  # a verifier without keepalive leaves the prover's in force
        (None, 5.0, None),  # a prover that disabled keepalive never has it turned on
    ],
)
def test_pake_prover_applies_the_keepalive_of_pair_resp(
    client_interval: float | None, server_interval: float | None, expected: float | None
) -> None:
    """After PSTP-PAKE the prover heartbeats at the smaller of both intervals, unless it is off."""
    pair = _pake_pair(
        Config(keepalive_interval=client_interval), Config(keepalive_interval=server_interval)
    ).established()
    assert pair.client.via_pake
    if expected is None:
        assert pair.client.next_deadline() is None
        pair.client.handle_timer(pair.clock.advance(1e6))
        assert pair.client.data_to_send() == b""
        return
    assert pair.client.next_deadline() == pytest.approx(pair.clock.now + expected)
    pair.client.handle_timer(pair.clock.advance(expected - 0.5))
    assert pair.client.data_to_send() == b""
    pair.client.handle_timer(pair.clock.advance(0.5))  # the PING goes out at the interval
    pair.roundtrip()
    assert any(isinstance(e, HeartbeatAcknowledged) for e in pair.client_events)


# -- debug logging (STYLE §8) -----------------------------------------------------


def test_debug_log_names_pake_frames_without_the_code(caplog: pytest.LogCaptureFixture) -> None:
    """With a DEBUG logger, every PSTP-PAKE frame and state change is logged, never the code."""
    name = "pstp.test.connection.pake"
    caplog.set_level(logging.DEBUG, logger=name)
    pair = _pake_pair(logger=logging.getLogger(name)).established()
    lines = [r.getMessage() for r in caplog.records if r.name == name]
    for expected in (
        "= initiator IDLE -> CLIENT_EXPECT_PAIR_RESP",
        "= responder SERVER_EXPECT_INIT -> SERVER_EXPECT_SHARE_P",
        "< PAIR_SHARE_P 69 bytes",
        "= responder SERVER_EXPECT_SHARE_P -> SERVER_EXPECT_CONFIRM_P",
        "< PAIR_SHARE_V 101 bytes",
        "= initiator CLIENT_EXPECT_SHARE_V -> ESTABLISHED",
        "< PAIR_CONFIRM_P 36 bytes",
        "= responder SERVER_EXPECT_CONFIRM_P -> ESTABLISHED",
    ):
        assert expected in lines, expected
    assert any(line.startswith("< PAIR_REQ ") for line in lines)
    assert any(line.startswith("< PAIR_RESP ") for line in lines)
    assert all(line[:2] in ("< ", "> ", "= ") for line in lines)
    assert not any("31415926" in line for line in lines)
    assert pair.client.session_id == pair.server.session_id


def test_debug_log_marks_received_sent_and_state_lines(caplog: pytest.LogCaptureFixture) -> None:
    """With a DEBUG logger, lines start with < (received), > (sent) or = (state), no payload."""
    name = "pstp.test.connection"
    caplog.set_level(logging.DEBUG, logger=name)
    log = logging.getLogger(name)
    pair = Pair(make_client(logger=log), make_server(logger=log))
    pair.server.start(pair.clock.now)
    pair.client.start(pair.clock.now)
    pair.established()
    pair.client.send_data(b"top secret payload")
    pair.roundtrip()
    pair.server.receive_data(b"\x42\x00\x00\x00", pair.clock.now)
    lines = [r.getMessage() for r in caplog.records if r.name == name]
    for expected in (
        "= initiator IDLE -> CLIENT_EXPECT_RESPONSE",
        "= responder IDLE -> SERVER_EXPECT_INIT",
        "= responder SERVER_EXPECT_INIT -> SERVER_EXPECT_CONFIRM",
        "= initiator CLIENT_EXPECT_RESPONSE -> ESTABLISHED",
        "> CONFIRM 32 bytes",
        "< CONFIRM 32 bytes",
        "= responder SERVER_EXPECT_CONFIRM -> ESTABLISHED",
        "> DATA 18 bytes",
        "< DATA 18 bytes",
        "= responder error: unknown frame type 0x42",
        "> CLOSE 3 bytes",
        "= responder ESTABLISHED -> CLOSED",
    ):
        assert expected in lines, expected
    assert any(line.startswith("< HS_INIT ") for line in lines)
    assert any(line.startswith("< HS_RESP ") for line in lines)
    assert all(line[:2] in ("< ", "> ", "= ") for line in lines)
    assert not any("secret" in line for line in lines)


def test_session_id_outlives_the_session_but_not_a_failed_handshake() -> None:
    """session_id stays readable after close; a handshake that never completed has none."""
    pair = Pair.new().established()
    sid = pair.client.session_id
    pair.client.close()
    pair.roundtrip()
    assert pair.client.session_id == pair.server.session_id == sid
    with pytest.raises(InvalidState):
        pair.client.export_secret("x")
    pair = Pair.new()
    pair.server.receive_data(pair.client.data_to_send(), 1.0)
    pair.server.receive_eof(1.0)  # keys installed, confirm never came
    with pytest.raises(InvalidState):
        _ = pair.server.session_id


# -- message transports (one frame per message, docs/protocol.md §6.3) ------------


def _message_pair(ordered: bool) -> tuple[Connection, Connection, FakeClock]:
    """A client and server that exchange whole messages until established."""
    config = Config(ordered=ordered)
    clock = FakeClock()
    client, server = make_client(config), make_server(config)
    server.start(clock.now)
    client.start(clock.now)
    for _ in range(5):
        for src, dst in ((client, server), (server, client)):
            for message in src.messages_to_send():
                dst.receive_message(message, clock.now)
    assert client.state is ConnectionState.ESTABLISHED
    assert server.state is ConnectionState.ESTABLISHED
    client.events_received()
    server.events_received()
    return client, server, clock


@pytest.mark.parametrize("ordered", [True, False])
def test_messages_carry_one_frame_each(ordered: bool) -> None:
    """Handshake and records travel as one frame per message, in either receive mode."""
    client, server, clock = _message_pair(ordered)
    client.send_data(b"one")
    client.send_data(b"two")
    messages = client.messages_to_send()
    assert len(messages) == 2
    if not ordered:
        messages = [messages[0], *messages]  # window mode drops a duplicate
    for message in messages:
        server.receive_message(message, clock.now)
    got = [e.data for e in server.events_received() if isinstance(e, DataReceived)]
    assert got == [b"one", b"two"]
    assert client.messages_to_send() == []


def test_a_message_of_two_frames_ends_an_ordered_session() -> None:
    """On an ordered message transport, a message that is not exactly one frame is fatal."""
    client, server, clock = _message_pair(True)
    client.send_data(b"a")
    client.send_data(b"b")
    server.receive_message(b"".join(client.messages_to_send()), clock.now)
    assert server.state is ConnectionState.CLOSED
    assert server.close_code == ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\x10",
        b"\x10\x00\x00\x09short",
        b"\x10\x00\x00\x00xx",
        b"\x10\x00\x00\x00",  # one frame, of an unknown type
        b"\x01\x00\x00\x00",  # a handshake frame
        b"\x02\x00\x00\x03abc",
        b"\x17\x00\x00\x05abcde",  # a record shorter than header and tag
        b"\x17\x01\x00\x1b" + bytes(65563),  # a record above max_record_size + 26
    ],
)
def test_a_malformed_message_is_dropped_in_window_mode(junk: bytes) -> None:
    """In window mode, once established, anything but a well-formed record is dropped and
    counted: anyone who can publish to the transport can send it (§3 rule 2a)."""
    client, server, clock = _message_pair(False)
    server.receive_message(junk, clock.now)
    assert server.state is ConnectionState.ESTABLISHED
    assert server.dropped_records == 1
    client.send_data(b"still here")
    for message in client.messages_to_send():
        server.receive_message(message, clock.now)
    assert DataReceived(data=b"still here") in server.events_received()


def test_a_malformed_message_before_the_handshake_ends_it() -> None:
    """Before ESTABLISHED every bad message is fatal, in window mode too."""
    server = make_server(Config(ordered=False))
    server.start(1.0)
    server.receive_message(b"\x01\x00\x00\x05abc", 1.0)
    assert server.state is ConnectionState.CLOSED


def test_an_oversized_message_frame_is_refused_from_its_header() -> None:
    """A message whose frame header exceeds the limit ends the session (FRAME_TOO_LARGE)."""
    _client, server, clock = _message_pair(True)
    big = 1 << 23
    server.receive_message(
        bytes([FrameType.RECORD]) + big.to_bytes(3, "big") + bytes(big), clock.now
    )
    assert server.close_code == ErrorCode.FRAME_TOO_LARGE


def test_receive_message_before_start_and_after_close() -> None:
    """Feeding a message before start is misuse; after close it is ignored."""
    server = make_server()
    with pytest.raises(InvalidState):
        server.receive_message(b"\x01\x00\x00\x00", 1.0)
    server.start(1.0)
    server.close()
    server.receive_message(b"\x01\x00\x00\x00", 1.0)
    assert server.state is ConnectionState.CLOSED


def test_a_heartbeat_flood_ends_the_session() -> None:
    """64 PINGs at once are answered; the 65th ends the session; 16 a second go on forever.

    Before, every PING was answered: a key holder could make the device spend its CPU
    and output on PONGs at line rate (docs/protocol.md §6.5).
    """
    pair = Pair.new().established()
    for _ in range(64):
        pair.client.send_ping()
    pair.server.receive_data(pair.client.data_to_send(), 1_000.0)
    assert pair.server.state is ConnectionState.ESTABLISHED
    # A second later, 16 more are fine.
    for _ in range(16):
        pair.client.send_ping()
    pair.server.receive_data(pair.client.data_to_send(), 1_001.0)
    assert pair.server.state is ConnectionState.ESTABLISHED
    pair.client.send_ping()
    pair.server.receive_data(pair.client.data_to_send(), 1_001.0)
    assert pair.server.state is ConnectionState.CLOSED
    assert "heartbeat flood" in str(pair.server.close_exc)
    assert pair.server.close_code == ErrorCode.PROTOCOL_ERROR


def test_max_send_body_is_the_smaller_max_record_once_keyed() -> None:
    """1 024 before the keys; then the smaller of both sides' max_record (§10)."""
    pair = Pair.new(Config(max_record_size=300_000), Config(max_record_size=70_000))
    assert pair.client.max_send_body == 1024
    pair.established()
    assert pair.client.max_send_body == pair.server.max_send_body == 70_000
