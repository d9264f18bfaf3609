"""Tests for pstp.protocol.handshake: both halves of PSTP-HS, the key ring, hostile peers.

A "rogue" peer below holds the pair key and follows the Noise pattern, but puts
whatever it likes in its payload: it is built from the spec (§5) with the Noise
engine, not from the handshake classes under test.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pstp.crypto.kdf import hkdf_expand_sha256, hmac_sha256
from pstp.exceptions import DecryptError, HandshakeFailed, LocalProtocolError, RemoteProtocolError
from pstp.protocol.config import Config
from pstp.protocol.handshake import (
    NOISE_PROTOCOL,
    REPLAY_SLOTS,
    REPLAY_SPAN_NS,
    DiscoveryBinding,
    InitiatorHandshake,
    KeyRing,
    PairKey,
    PeerKey,
    ResponderHandshake,
    build_prologue,
    make_kid,
)
from pstp.protocol.noise import HandshakeState
from pstp.wire.frames import (
    HS_FLAG_RESPONDER_ID,
    VERSION,
    HsResp,
    InitPayload,
    RespPayload,
    Suite,
    hs_init_header,
)

PAIR_KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
CLIENT_ID = "phone"
SERVER_ID = "home"
NONCE = bytes(range(16))
PING = b"PING from the initiator"
PONG = b"PONG from the responder"
AES_ONLY = Config(suites=(Suite.AES_256_GCM,))
_timestamps = itertools.count(1_700_000_000_000_000_000, 1_000)


def _ts() -> int:
    return next(_timestamps)


def _ring(*peers: tuple[str, bytes]) -> KeyRing:
    ring = KeyRing()
    for device_id, key in peers or ((CLIENT_ID, PAIR_KEY),):
        ring.add(device_id, key)
    return ring


def _initiator(config: Config | None = None, **kw: object) -> InitiatorHandshake:
    kw.setdefault("timestamp", _ts())
    kw.setdefault("responder_id", SERVER_ID)
    pair_key = kw.pop("pair_key", PAIR_KEY)
    return InitiatorHandshake(pair_key, config or Config(), **kw)  # type: ignore[arg-type]


def _responder(
    ring: KeyRing | None = None, config: Config | None = None, **kw: object
) -> ResponderHandshake:
    kw.setdefault("own_id", SERVER_ID)
    ring = ring if ring is not None else _ring()  # an empty ring is falsy
    return ResponderHandshake(ring, config or Config(), **kw)  # type: ignore[arg-type]


def _body(ini: InitiatorHandshake) -> bytes:
    return ini.message.serialize()[4:]


def _run(ini: InitiatorHandshake, resp: ResponderHandshake) -> bytes:
    """Run HS_INIT and HS_RESP through; return the HS_RESP body."""
    resp.read_init(_body(ini))
    frame, _ = resp.write_response()
    return frame[4:]


def _lookup(
    table: dict[bytes, tuple[bytes, bytes]],
) -> Callable[[bytes], tuple[bytes, bytes] | None]:
    return table.get


def _rogue_init(payload: bytes, *, version: int = VERSION, pair_key: bytes = PAIR_KEY) -> bytes:
    """An HS_INIT body whose encrypted payload is exactly ``payload``."""
    peer = PeerKey.from_pair_key("", pair_key)
    header = hs_init_header(version, HS_FLAG_RESPONDER_ID, make_kid(peer.kid_key, bytes(16)), None)
    noise = HandshakeState(
        NOISE_PROTOCOL,
        initiator=True,
        prologue=build_prologue(header, SERVER_ID, b"", b""),
        psks=[peer.psk],
    )
    return header + noise.write_message(payload)


def _init_payload(**kw: object) -> bytes:
    fields: dict[str, object] = {
        "timestamp": _ts(),
        "versions": (VERSION,),
        "suites": (Suite.AES_256_GCM,),
        "max_record": 65536,
        "service": "session",
    }
    fields.update(kw)
    return InitPayload(**fields).serialize()  # type: ignore[arg-type]


def _rogue_response(ini: InitiatorHandshake, payload: bytes, *, stated_in_prologue: str) -> bytes:
    """An HS_RESP body, with a valid confirm_R, whose payload is exactly ``payload``."""
    msg = ini.message
    noise = HandshakeState(
        NOISE_PROTOCOL,
        initiator=False,
        prologue=build_prologue(msg.header_bytes(), stated_in_prologue, b"", b""),
        psks=[PeerKey.from_pair_key("", PAIR_KEY).psk],
    )
    noise.read_message(msg.ephemeral + msg.ciphertext)
    raw = noise.write_message(payload)
    # confirm_R = HMAC(HKDF-Expand(ck, "PSTP/2 confirm responder"), h), §5.5.
    key = hkdf_expand_sha256(noise.chaining_key, b"PSTP/2 confirm responder", 32)
    confirm = hmac_sha256(key, noise.handshake_hash)
    return HsResp(msg.version, raw[:65], raw[65:], confirm).serialize()[4:]


def _resp_payload(**kw: object) -> bytes:
    fields: dict[str, object] = {
        "suite": Suite.AES_256_GCM,
        "max_record": 65536,
        "keepalive_ms": 0,
        "responder_id": SERVER_ID,
    }
    fields.update(kw)
    return RespPayload(**fields).serialize()  # type: ignore[arg-type]


# -- a complete handshake -----------------------------------------------------


def test_both_sides_derive_the_same_session() -> None:
    """A full exchange gives both sides the same keys, and each confirmation verifies."""
    config = Config(service="files", max_record_size=4096)
    ini = _initiator(config, initiator_id=CLIENT_ID)
    resp = _responder(keepalive_ms=15_000)
    assert (resp.service, resp.initiator_id, resp.peer) == ("", "", None)
    resp.read_init(_body(ini))
    assert (resp.service, resp.initiator_id) == ("files", CLIENT_ID)
    assert resp.peer is not None
    assert resp.peer.device_id == CLIENT_ID
    frame, rkeys = resp.write_response()
    assert ini.confirm == ini.challenge == b""
    ikeys = ini.read_response(frame[4:])
    assert ikeys.i2r_key == rkeys.i2r_key != ikeys.r2i_key == rkeys.r2i_key
    assert ikeys.session_id == rkeys.session_id
    assert ikeys.exporter_secret == rkeys.exporter_secret
    assert ikeys.suite == rkeys.suite == Suite.AES_256_GCM
    assert (ikeys.peer_max_record, rkeys.peer_max_record) == (65536, 4096)
    assert ikeys.keepalive_ms == rkeys.keepalive_ms == 15_000
    assert ikeys.responder_id == rkeys.responder_id == SERVER_ID
    assert ini.challenge == HsResp.parse(frame[4:]).ephemeral
    resp.check_confirm(ini.confirm)


def test_responder_picks_its_own_preferred_common_suite() -> None:
    """The suite is the responder's first preference among those the initiator offered."""
    chacha_first = Config(suites=(Suite.CHACHA20_POLY1305, Suite.AES_256_GCM))
    cases = [
        (Config(), chacha_first, Suite.CHACHA20_POLY1305),
        (chacha_first, Config(), Suite.AES_256_GCM),
        (AES_ONLY, chacha_first, Suite.AES_256_GCM),
    ]
    for initiator_config, responder_config, chosen in cases:
        ini = _initiator(initiator_config)
        keys = ini.read_response(_run(ini, _responder(config=responder_config)))
        assert keys.suite == chosen


def test_an_initiator_without_a_responder_id_learns_it() -> None:
    """Without an expected id the responder's stated id is accepted and reported."""
    ini = _initiator(responder_id=None)
    assert not ini.message.flags & HS_FLAG_RESPONDER_ID
    keys = ini.read_response(_run(ini, _responder(own_id="anything")))
    assert keys.responder_id == "anything"


# -- the key ring -------------------------------------------------------------


def test_keyring_replacing_a_key_keeps_the_newest_timestamp() -> None:
    """add() on a known device swaps the key but never moves its replay guard back."""
    ring = KeyRing()
    ring.add(CLIENT_ID, PAIR_KEY, last_timestamp=500)
    ring.add(CLIENT_ID, OTHER_KEY)
    ring.add(CLIENT_ID, OTHER_KEY, last_timestamp=300)
    (peer,) = ring
    assert peer.last_timestamp == 500
    ring.add(CLIENT_ID, OTHER_KEY, last_timestamp=900)
    (peer,) = ring
    assert peer.last_timestamp == 900
    # The old key is gone: its key ids no longer match.
    assert ring.find(_initiator(pair_key=PAIR_KEY).message.kid) is None
    assert ring.find(_initiator(pair_key=OTHER_KEY).message.kid) is peer


def test_keyring_membership_removal_and_iteration() -> None:
    """in, len and iteration track add/remove; removing an unknown id is not an error."""
    ring = _ring(("a", PAIR_KEY), ("b", OTHER_KEY))
    assert "a" in ring and "b" in ring
    assert "c" not in ring and 7 not in ring
    assert len(ring) == 2
    assert sorted(p.device_id for p in ring) == ["a", "b"]
    ring.remove("a")
    ring.remove("never added")
    assert "a" not in ring
    assert [p.device_id for p in ring] == ["b"]
    for peer in ring:  # iterating over a snapshot: removing while iterating is safe
        ring.remove(peer.device_id)
    assert len(ring) == 0


def test_keyring_find_picks_the_right_peer_among_several() -> None:
    """find() returns the peer whose pair key made the key id, wherever it sits in the ring."""
    keys = [bytes([i]) * 32 for i in range(4)]
    ring = _ring(*((f"dev{i}", k) for i, k in enumerate(keys)))
    for i, key in enumerate(keys):
        found = ring.find(_initiator(pair_key=key).message.kid)
        assert found is not None
        assert found.device_id == f"dev{i}"
    assert ring.find(_initiator(pair_key=OTHER_KEY).message.kid) is None
    assert ring.find(bytes(32)) is None


def test_removed_peer_can_no_longer_connect() -> None:
    """After remove(), the peer's HS_INIT is refused as an unknown key id."""
    ring = _ring()
    ring.remove(CLIENT_ID)
    with pytest.raises(HandshakeFailed, match="unknown key id"):
        _responder(ring).read_init(_body(_initiator()))


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_pair_keys_must_be_32_bytes(length: int) -> None:
    """A pair key of any other length raises ValueError on either side."""
    with pytest.raises(ValueError):
        KeyRing().add(CLIENT_ID, bytes(length))
    with pytest.raises(ValueError):
        PeerKey.from_pair_key(CLIENT_ID, bytes(length))
    with pytest.raises(ValueError):
        _initiator(pair_key=bytes(length))


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_pair_key_wrapper_refuses_other_lengths(length: int) -> None:
    """PairKey, the marker type of the public API, holds exactly 32 bytes."""
    with pytest.raises(ValueError):
        PairKey(bytes(length))


def test_pair_key_wrapper_is_a_usable_key() -> None:
    """A PairKey equals its bytes and keys a handshake like plain bytes do."""
    key = PairKey(PAIR_KEY)
    assert key == PAIR_KEY and isinstance(key, bytes) and len(key) == 32
    ini = _initiator(pair_key=key)
    keys = ini.read_response(_run(ini, _responder(_ring((CLIENT_ID, key)))))
    assert keys.responder_id == SERVER_ID


def test_pair_key_never_shows_its_bytes(caplog: pytest.LogCaptureFixture) -> None:
    """repr, str, formatting and logging a PairKey show a placeholder, never the key."""
    key = PairKey(PAIR_KEY)
    caplog.set_level(logging.DEBUG, logger="pstp.test.pairkey")
    logging.getLogger("pstp.test.pairkey").debug("key %s %r", key, key)
    shown = [repr(key), str(key), f"{key}", f"{key!r}", format(key), str([key])]
    shown += [r.getMessage() for r in caplog.records]
    assert repr(key) == "PairKey(<32 bytes>)"
    for text in shown:
        assert "PairKey(<32 bytes>)" in text
        assert repr(PAIR_KEY)[2:-1] not in text


# -- initiator arguments ------------------------------------------------------


@pytest.mark.parametrize("device_id", ["", "x" * 65, "é" * 33])
def test_initiator_refuses_a_bad_responder_id(device_id: str) -> None:
    """An expected responder id must be 1 to 64 bytes of UTF-8."""
    with pytest.raises(ValueError):
        _initiator(responder_id=device_id)


def test_initiator_accepts_a_64_byte_responder_id() -> None:
    """A 64-byte responder id is the longest allowed and completes a handshake."""
    device_id = "é" * 32
    ini = _initiator(responder_id=device_id)
    assert ini.read_response(_run(ini, _responder(own_id=device_id))).responder_id == device_id


@pytest.mark.parametrize("length", [0, 15, 17])
def test_initiator_refuses_a_bad_discovery_nonce(length: int) -> None:
    """A discovery nonce must be 16 bytes."""
    with pytest.raises(ValueError):
        _initiator(discovery=(bytes(length), PING, PONG))


# -- the responder refuses ----------------------------------------------------


def test_responder_refuses_an_unknown_key() -> None:
    """HS_INIT under a pair key the ring does not hold is an unknown key id."""
    with pytest.raises(HandshakeFailed, match="unknown key id"):
        _responder().read_init(_body(_initiator(pair_key=OTHER_KEY)))


@pytest.mark.parametrize("version", [VERSION - 1, VERSION + 1])
def test_responder_refuses_a_version_it_does_not_speak(version: int) -> None:
    """A header version outside the responder's list fails before any decryption."""
    with pytest.raises(HandshakeFailed, match="version"):
        _responder().read_init(_body(_initiator(version=version)))


def test_responder_detects_a_version_downgrade() -> None:
    """A header version below the best common one is refused, and the replay guard stays put."""
    both = Config(versions=(VERSION, VERSION + 1))
    ring = _ring()
    ts = _ts()
    with pytest.raises(HandshakeFailed, match="downgrade"):
        _responder(ring, both).read_init(_body(_initiator(both, version=VERSION, timestamp=ts)))
    # The failed attempt did not consume the timestamp: an honest retry with it succeeds.
    _responder(ring, both).read_init(_body(_initiator(both, timestamp=ts)))


def test_responder_negotiates_the_highest_common_version() -> None:
    """With a newer version on both sides, the header carries it and the handshake completes."""
    both = Config(versions=(VERSION, VERSION + 1))
    ini = _initiator(both)
    assert ini.message.version == VERSION + 1
    ini.read_response(_run(ini, _responder(config=both)))


def test_responder_refuses_replayed_and_stale_timestamps() -> None:
    """An HS_INIT is accepted once; an equal timestamp, or one a whole span older, is refused."""
    ring = _ring()
    ts = _ts()
    first = _body(_initiator(timestamp=ts))
    _responder(ring).read_init(first)
    (peer,) = ring
    assert peer.last_timestamp == ts
    stale = _body(_initiator(timestamp=ts - REPLAY_SPAN_NS))
    for body in (first, _body(_initiator(timestamp=ts)), stale):
        with pytest.raises(HandshakeFailed, match="replayed or stale"):
            _responder(ring).read_init(body)
    _responder(ring).read_init(_body(_initiator(timestamp=ts + 1)))


def test_concurrent_handshakes_may_arrive_out_of_order() -> None:
    """Two handshakes from one key read newest-first both succeed; neither can be replayed."""
    ring = _ring()
    ts = _ts()
    older, newer = _body(_initiator(timestamp=ts)), _body(_initiator(timestamp=ts + 5))
    _responder(ring).read_init(newer)
    _responder(ring).read_init(older)
    for body in (older, newer):
        with pytest.raises(HandshakeFailed, match="replayed or stale"):
            _responder(ring).read_init(body)


def test_timestamps_older_than_the_span_are_refused() -> None:
    """Out of order is allowed only within REPLAY_SPAN_NS of the newest accepted."""
    ring = _ring()
    ts = _ts()
    _responder(ring).read_init(_body(_initiator(timestamp=ts)))
    with pytest.raises(HandshakeFailed, match="replayed or stale"):
        _responder(ring).read_init(_body(_initiator(timestamp=ts - REPLAY_SPAN_NS)))
    _responder(ring).read_init(_body(_initiator(timestamp=ts - REPLAY_SPAN_NS + 1)))


def test_replay_guard_memory_is_bounded_and_stays_sound() -> None:
    """Past REPLAY_SLOTS remembered timestamps the oldest become the floor, never reusable."""
    peer = PeerKey.from_pair_key(CLIENT_ID, PAIR_KEY)
    base = 10**18
    for t in range(base, base + REPLAY_SLOTS + 10):
        assert peer.fresh(t)
        peer.accept(t)
    assert peer.floor == base + 9
    assert not any(peer.fresh(t) for t in range(base, base + REPLAY_SLOTS + 10))
    assert peer.fresh(base + REPLAY_SLOTS + 10)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4 * REPLAY_SPAN_NS), st.booleans()), max_size=60))
def test_replay_guard_against_a_model(steps: list[tuple[int, bool]]) -> None:
    """Whatever the order: nothing is accepted twice, anything newer than all is accepted,
    and nothing more than REPLAY_SPAN_NS below the newest is accepted."""
    peer = PeerKey.from_pair_key(CLIENT_ID, PAIR_KEY)
    seen: set[int] = set()
    for t, record in steps:
        ok = peer.fresh(t)
        if t in seen:
            assert not ok
        if not seen or t > max(seen):
            assert ok
        if seen and t <= max(seen) - REPLAY_SPAN_NS:
            assert not ok
        if ok and record:
            peer.accept(t)
            seen.add(t)
            assert peer.last_timestamp == max(seen)


def test_keyring_timestamp_guards_a_restarted_server() -> None:
    """A ring loaded with a saved last_timestamp refuses HS_INITs that are not newer."""
    ts = _ts()
    ring = KeyRing()
    ring.add(CLIENT_ID, PAIR_KEY, last_timestamp=ts)
    with pytest.raises(HandshakeFailed, match="replayed or stale"):
        _responder(ring).read_init(_body(_initiator(timestamp=ts)))
    _responder(ring).read_init(_body(_initiator(timestamp=ts + 1)))


def test_responder_id_is_bound_into_the_transcript() -> None:
    """An initiator aiming at another device fails to decrypt at that responder."""
    with pytest.raises(DecryptError):
        _responder(own_id="office").read_init(_body(_initiator(responder_id=SERVER_ID)))


@pytest.mark.parametrize(
    "suites",
    [(Suite.CHACHA20_POLY1305,), (0x0003, 0xFFFF)],
    ids=["only-chacha", "unknown-suites"],
)
def test_responder_refuses_when_no_suite_is_common(suites: tuple[int, ...]) -> None:
    """An initiator offering none of the responder's suites is refused."""
    with pytest.raises(HandshakeFailed, match="suite"):
        _responder(config=AES_ONLY).read_init(_rogue_init(_init_payload(suites=suites)))


@pytest.mark.parametrize(("max_record", "ok"), [(0, False), (1023, False), (1024, True)])
def test_responder_checks_the_initiator_record_limit(max_record: int, ok: bool) -> None:
    """An initiator record limit below 1024 is refused; exactly 1024 is accepted."""
    resp = _responder()
    body = _rogue_init(_init_payload(max_record=max_record))
    if ok:
        resp.read_init(body)
        assert resp.write_response()[1].peer_max_record == 1024
    else:
        with pytest.raises(HandshakeFailed, match="record limit"):
            resp.read_init(body)


def test_responder_refuses_a_malformed_init_payload() -> None:
    """A payload that decrypts but does not parse is a protocol error."""
    with pytest.raises(RemoteProtocolError):
        _responder().read_init(_rogue_init(b"not an init payload"))
    with pytest.raises(RemoteProtocolError):
        _responder().read_init(_rogue_init(_init_payload(versions=())))


def test_responder_refuses_a_malformed_hs_init() -> None:
    """Truncated or flag-corrupted HS_INIT bodies are protocol errors."""
    body = _body(_initiator())
    for bad in (b"", body[:40], bytes([body[0], 0x80]) + body[2:]):
        with pytest.raises(RemoteProtocolError):
            _responder().read_init(bad)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_responder_raises_only_protocol_errors_on_garbage(data: bytes) -> None:
    """Arbitrary bytes as HS_INIT raise RemoteProtocolError, never anything else."""
    with pytest.raises(RemoteProtocolError):
        _responder().read_init(data)


# -- discovery binding --------------------------------------------------------


def _bound(lookup: Callable[[bytes], tuple[bytes, bytes] | None] | None) -> ResponderHandshake:
    return _responder(discovery_lookup=lookup)


def test_discovery_bound_handshake_succeeds_with_a_matching_lookup() -> None:
    """The responder finds the PING/PONG by nonce and both sides agree on the transcript."""
    asked: list[bytes] = []

    def lookup(nonce: bytes) -> tuple[bytes, bytes] | None:
        asked.append(nonce)
        return (PING, PONG) if nonce == NONCE else None

    binding: DiscoveryBinding = (NONCE, PING, PONG)
    ini = _initiator(discovery=binding)
    assert ini.message.discovery_nonce == NONCE
    keys = ini.read_response(_run(ini, _bound(lookup)))
    assert asked == [NONCE]
    assert keys.responder_id == SERVER_ID


@pytest.mark.parametrize(
    "seen",
    [(PING, b"another PONG"), (b"another PING", PONG)],
    ids=["pong-differs", "ping-differs"],
)
def test_discovery_bound_handshake_fails_when_the_exchange_differs(
    seen: tuple[bytes, bytes],
) -> None:
    """If the responder remembers other discovery bytes, the transcripts differ."""
    ini = _initiator(discovery=(NONCE, PING, PONG))
    with pytest.raises(DecryptError):
        _bound(_lookup({NONCE: seen})).read_init(_body(ini))


@pytest.mark.parametrize("has_lookup", [False, True], ids=["no-lookup", "unknown-nonce"])
def test_responder_refuses_an_unknown_discovery_nonce(has_lookup: bool) -> None:
    """A nonce the responder never issued (or no lookup at all) is refused."""
    ini = _initiator(discovery=(NONCE, PING, PONG))
    resp = _bound(_lookup({bytes(16): (PING, PONG)}) if has_lookup else None)
    with pytest.raises(HandshakeFailed, match="discovery nonce"):
        resp.read_init(_body(ini))


def test_a_discovery_bound_responder_still_accepts_unbound_handshakes() -> None:
    """Without the discovery flag the lookup is not consulted."""
    asked: list[bytes] = []

    def lookup(nonce: bytes) -> tuple[bytes, bytes] | None:
        asked.append(nonce)
        return None

    ini = _initiator()
    ini.read_response(_run(ini, _bound(lookup)))
    assert asked == []


# -- responder API order ------------------------------------------------------


def test_write_response_before_read_init_is_a_local_error() -> None:
    """HS_RESP cannot be built before an HS_INIT was accepted, nor after one was refused."""
    with pytest.raises(LocalProtocolError):
        _responder().write_response()
    resp = _responder()
    with pytest.raises(HandshakeFailed):
        resp.read_init(_body(_initiator(pair_key=OTHER_KEY)))
    with pytest.raises(LocalProtocolError):
        resp.write_response()


def test_check_confirm_before_write_response_fails() -> None:
    """No confirm_I is valid, not even an empty one, before HS_RESP was written."""
    ini = _initiator()
    resp = _responder()
    for value in (b"", bytes(32)):
        with pytest.raises(HandshakeFailed):
            resp.check_confirm(value)
    resp.read_init(_body(ini))
    with pytest.raises(HandshakeFailed):
        resp.check_confirm(b"")


def test_check_confirm_refuses_a_wrong_value() -> None:
    """Only the initiator's real confirm_I passes; a flipped bit or a cut value fails."""
    ini = _initiator()
    resp = _responder()
    ini.read_response(_run(ini, resp))
    good = ini.confirm
    assert len(good) == 32
    for bad in (b"", good[:31], bytes([good[0] ^ 1]) + good[1:], bytes(32)):
        with pytest.raises(HandshakeFailed):
            resp.check_confirm(bad)
    resp.check_confirm(good)


# -- the initiator refuses ----------------------------------------------------


def _honest_response() -> tuple[InitiatorHandshake, bytes]:
    ini = _initiator()
    return ini, _run(ini, _responder())


@pytest.mark.parametrize("version", [0, VERSION - 1, VERSION + 1])
def test_initiator_refuses_another_version(version: int) -> None:
    """An HS_RESP whose version differs from the HS_INIT header fails the handshake."""
    ini, body = _honest_response()
    with pytest.raises(HandshakeFailed, match="version"):
        ini.read_response(bytes([version]) + body[1:])


def test_initiator_reports_malformed_hs_resp_as_handshake_failed() -> None:
    """Unknown flags or truncation surface as HandshakeFailed chained to the parse error."""
    ini, body = _honest_response()
    for bad in (body[:1] + b"\x01" + body[2:], body[: 2 + 65 + 16 + 31], b"", body[:1]):
        fresh, _ = _honest_response()
        with pytest.raises(HandshakeFailed, match="malformed") as info:
            fresh.read_response(bad)
        assert isinstance(info.value.__cause__, RemoteProtocolError)
    assert ini.read_response(body).responder_id == SERVER_ID


def test_initiator_refuses_tampering() -> None:
    """A flipped bit in the ciphertext is a DecryptError; in confirm_R, HandshakeFailed."""
    ini, body = _honest_response()
    ct_bit = bytearray(body)
    ct_bit[2 + 65] ^= 1
    with pytest.raises(DecryptError):
        ini.read_response(bytes(ct_bit))
    ini, body = _honest_response()
    with pytest.raises(HandshakeFailed, match="confirmation"):
        ini.read_response(body[:-1] + bytes([body[-1] ^ 1]))
    assert ini.confirm == b""


def test_initiator_refuses_an_invalid_responder_ephemeral() -> None:
    """An e_R that is not a P-256 point fails the handshake at the ee DH."""
    ini, body = _honest_response()
    with pytest.raises(HandshakeFailed):
        ini.read_response(body[:2] + b"\x04" + bytes(64) + body[2 + 65 :])


def test_rogue_responder_with_an_honest_payload_is_accepted() -> None:
    """The hand-built responder below is correct: with a normal payload the initiator agrees."""
    ini = _initiator()
    keys = ini.read_response(_rogue_response(ini, _resp_payload(), stated_in_prologue=SERVER_ID))
    assert (keys.suite, keys.responder_id, keys.peer_max_record) == (1, SERVER_ID, 65536)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_resp_payload(suite=Suite.CHACHA20_POLY1305), "suite"),
        (_resp_payload(suite=0x0003), "suite"),
        (_resp_payload(responder_id="office"), "device id"),
        (_resp_payload(max_record=1023), "record limit"),
        (_resp_payload(max_record=0), "record limit"),
        (b"\x00\x01", "malformed"),
        (_resp_payload() + b"\x00", "malformed"),
    ],
    ids=["unoffered-suite", "unknown-suite", "other-id", "limit-1023", "limit-0", "short", "trail"],
)
def test_initiator_refuses_a_bad_responder_payload(payload: bytes, reason: str) -> None:
    """A responder holding the pair key still cannot impose a bad suite, id or record limit."""
    ini = _initiator(AES_ONLY)
    with pytest.raises(HandshakeFailed, match=reason):
        ini.read_response(_rogue_response(ini, payload, stated_in_prologue=SERVER_ID))
    assert ini.confirm == b""


def test_initiator_accepts_a_responder_record_limit_of_1024() -> None:
    """A responder record limit of exactly 1024 is the minimum accepted."""
    ini = _initiator()
    body = _rogue_response(ini, _resp_payload(max_record=1024), stated_in_prologue=SERVER_ID)
    assert ini.read_response(body).peer_max_record == 1024


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_initiator_raises_only_handshake_errors_on_garbage(data: bytes) -> None:
    """Arbitrary bytes as HS_RESP raise HandshakeFailed or DecryptError, nothing else."""
    with pytest.raises((HandshakeFailed, DecryptError)):
        _initiator().read_response(data)


def test_key_holders_never_print_their_keys() -> None:
    """repr() of a ring entry and of the session keys shows no key material (logs stay clean)."""
    ring = _ring()
    ini = _initiator()
    resp = _responder(ring)
    keys = ini.read_response(_run(ini, resp))
    (peer,) = ring
    secrets = [peer.psk, peer.kid_key, keys.i2r_key, keys.r2i_key, keys.exporter_secret]
    shown = repr(peer) + repr(keys)
    assert CLIENT_ID in shown and keys.session_id.hex() in shown
    for secret in secrets:
        assert secret.hex() not in shown and repr(secret) not in shown


def test_a_key_taken_from_the_ring_comes_back_with_its_guard() -> None:
    """take() removes a key (its HS_INITs match nothing); put() restores it, guard and all."""
    ring = KeyRing()
    ring.add("phone", bytes(32), 1_000)
    taken = ring.take("phone")
    assert taken is not None and "phone" not in ring and ring.take("phone") is None
    ring.put(taken)
    assert "phone" in ring and next(iter(ring)).last_timestamp == 1_000
    ring.add("phone", bytes(range(32)))  # a new key meanwhile wins over the old one
    newer = next(iter(ring))
    ring.put(taken)
    assert next(iter(ring)) is newer
