"""Tests for pstp.protocol.noise: every cacophony vector, plus engine behaviour."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pstp.crypto.aead import MAX_NONCE, Aead
from pstp.crypto.keys import X25519
from pstp.exceptions import DecryptError, HandshakeFailed, LocalProtocolError, RemoteProtocolError
from pstp.protocol.noise import (
    MAX_MESSAGE_LEN,
    PATTERNS,
    CipherState,
    HandshakePattern,
    HandshakeState,
    NoiseProtocol,
    SymmetricState,
)
from tests.helpers import EXTERNAL_VECTORS

VECTORS = EXTERNAL_VECTORS / "noise"
CACOPHONY: list[dict[str, Any]] = json.loads((VECTORS / "cacophony.txt").read_text())["vectors"]
PSTP_NAME = "Noise_NNpsk0_P256_AESGCM_SHA256"
PSK = bytes(range(32))


def _hex(vector: dict[str, Any], key: str) -> bytes | None:
    value = vector.get(key)
    return None if value is None else bytes.fromhex(value)


def _side(vector: dict[str, Any], prefix: str) -> HandshakeState:
    return HandshakeState(
        vector["protocol_name"],
        initiator=prefix == "init",
        prologue=bytes.fromhex(vector[f"{prefix}_prologue"]),
        s=_hex(vector, f"{prefix}_static"),
        e=_hex(vector, f"{prefix}_ephemeral"),
        rs=_hex(vector, f"{prefix}_remote_static"),
        psks=[bytes.fromhex(psk) for psk in vector.get(f"{prefix}_psks", [])],
    )


def _handshake(
    initiator: HandshakeState, responder: HandshakeState, payloads: list[bytes] | None = None
) -> list[bytes]:
    """Run a handshake to completion, returning the messages sent."""
    messages = []
    index = 0
    while not initiator.complete:
        sender, receiver = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        payload = payloads[index] if payloads else b"payload %d" % index
        message = sender.write_message(payload)
        assert receiver.read_message(message) == payload
        messages.append(message)
        index += 1
    assert responder.complete
    return messages


@pytest.mark.parametrize(
    "vector",
    [pytest.param(v, id=f"{v['protocol_name']}-{i}") for i, v in enumerate(CACOPHONY)],
)
def test_cacophony_vector(vector: dict[str, Any]) -> None:
    """Handshake and transport messages match the cacophony vector byte for byte."""
    initiator, responder = _side(vector, "init"), _side(vector, "resp")
    messages = vector["messages"]
    index = 0
    while not initiator.complete:
        sender, receiver = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        payload = bytes.fromhex(messages[index]["payload"])
        ciphertext = sender.write_message(payload)
        assert ciphertext.hex() == messages[index]["ciphertext"]
        assert receiver.read_message(ciphertext) == payload
        index += 1
    assert responder.complete
    assert initiator.handshake_hash.hex() == vector["handshake_hash"]
    assert responder.handshake_hash.hex() == vector["handshake_hash"]

    i_send, i_recv = initiator.split()
    r_recv, r_send = responder.split()
    one_way = initiator.protocol.pattern.one_way
    # After the handshake, messages keep alternating by index; one-way
    # patterns only ever send from initiator to responder.
    for position in range(index, len(messages)):
        forward = one_way or position % 2 == 0
        sender_cs, receiver_cs = (i_send, r_recv) if forward else (r_send, i_recv)
        payload = bytes.fromhex(messages[position]["payload"])
        ciphertext = sender_cs.encrypt_with_ad(b"", payload)
        assert ciphertext.hex() == messages[position]["ciphertext"]
        assert receiver_cs.decrypt_with_ad(b"", ciphertext) == payload


def test_cacophony_covers_everything() -> None:
    """The vector file exercises all 944 cases and every pattern in our table."""
    assert len(CACOPHONY) == 944
    bases = {NoiseProtocol.from_name(v["protocol_name"]).pattern.name for v in CACOPHONY}
    stripped = {name.split("psk")[0] for name in bases}
    assert stripped == set(PATTERNS)
    assert len(PATTERNS) == 3 + 12 + 23


def test_p256_nnpsk0_roundtrip() -> None:
    """PSTP's NNpsk0 over P-256 completes and both transport directions work."""
    initiator = HandshakeState(PSTP_NAME, initiator=True, prologue=b"PSTP/2", psks=[PSK])
    responder = HandshakeState(PSTP_NAME, initiator=False, prologue=b"PSTP/2", psks=[PSK])
    first, second = _handshake(initiator, responder)
    assert len(first) == 65 + len(b"payload 0") + 16
    assert len(second) == 65 + len(b"payload 1") + 16
    assert initiator.handshake_hash == responder.handshake_hash
    assert initiator.chaining_key == responder.chaining_key
    assert initiator.remote_ephemeral == responder.local_ephemeral_public
    assert responder.remote_ephemeral == initiator.local_ephemeral_public
    assert initiator.remote_static is None
    i_send, i_recv = initiator.split()
    r_recv, r_send = responder.split()
    assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"to responder")) == (
        b"to responder"
    )
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"to initiator")) == (
        b"to initiator"
    )
    assert i_send.key == r_recv.key
    assert i_send.key is not None
    assert Aead("AESGCM", i_send.key).open(1, b"", i_send.encrypt_with_ad(b"", b"x")) == b"x"


def _forged_first_message(e_public: bytes, payload: bytes) -> bytes:
    """Build NNpsk0 message 1 by hand, with an arbitrary (possibly invalid) e."""
    symmetric = SymmetricState(PSTP_NAME, cipher="AESGCM", hash_name="SHA256")
    symmetric.mix_hash(b"")
    symmetric.mix_key_and_hash(PSK)
    symmetric.mix_hash(e_public)
    symmetric.mix_key(e_public)
    return e_public + symmetric.encrypt_and_hash(payload)


def test_responder_decrypts_before_validating_e() -> None:
    """Reading `-> psk, e` does no EC work: an off-curve e only fails at the first DH."""
    bad_e = b"\x04" + bytes(64)
    responder = HandshakeState(PSTP_NAME, initiator=False, psks=[PSK])
    assert responder.read_message(_forged_first_message(bad_e, b"hello")) == b"hello"
    assert responder.remote_ephemeral == bad_e
    with pytest.raises(HandshakeFailed):
        responder.write_message(b"")
    with pytest.raises(LocalProtocolError):
        responder.write_message(b"")


def test_forged_message_matches_engine() -> None:
    """The hand-built message 1 equals what the engine writes for the same e."""
    initiator = HandshakeState(PSTP_NAME, initiator=True, e=bytes(31) + b"\x07", psks=[PSK])
    e_public = initiator.local_ephemeral_public
    assert e_public is not None
    assert initiator.write_message(b"hi") == _forged_first_message(e_public, b"hi")


def test_wrong_psk_is_decrypt_error() -> None:
    """A responder with a different psk fails message 1 with DecryptError."""
    initiator = HandshakeState(PSTP_NAME, initiator=True, psks=[PSK])
    responder = HandshakeState(PSTP_NAME, initiator=False, psks=[bytes(32)])
    with pytest.raises(DecryptError):
        responder.read_message(initiator.write_message(b"payload"))
    with pytest.raises(LocalProtocolError):
        responder.read_message(b"")


def test_wrong_prologue_is_decrypt_error() -> None:
    """Different prologues break the handshake at the first encrypted payload."""
    name = "Noise_NN_25519_ChaChaPoly_BLAKE2s"
    initiator = HandshakeState(name, initiator=True, prologue=b"a")
    responder = HandshakeState(name, initiator=False, prologue=b"b")
    responder.read_message(initiator.write_message())
    with pytest.raises(DecryptError):
        initiator.read_message(responder.write_message())


@pytest.mark.parametrize("length", [0, 1, 64, 65, 65 + 15])
def test_truncated_message_is_handshake_failed(length: int) -> None:
    """A message too short for its tokens and tag raises HandshakeFailed, then the state is dead."""
    initiator = HandshakeState(PSTP_NAME, initiator=True, psks=[PSK])
    responder = HandshakeState(PSTP_NAME, initiator=False, psks=[PSK])
    message = initiator.write_message(b"")
    assert len(message) == 65 + 16
    with pytest.raises(HandshakeFailed):
        responder.read_message(message[:length])
    with pytest.raises(LocalProtocolError):
        responder.read_message(message)


def test_truncated_static_key_is_handshake_failed() -> None:
    """An XX message 2 cut inside the encrypted static key raises HandshakeFailed."""
    name = "Noise_XX_25519_AESGCM_SHA256"
    initiator = HandshakeState(name, initiator=True, s=bytes(range(32)))
    responder = HandshakeState(name, initiator=False, s=bytes(range(1, 33)))
    responder.read_message(initiator.write_message())
    message = responder.write_message()
    with pytest.raises(HandshakeFailed):
        initiator.read_message(message[: 32 + 32 + 8])


def test_tampered_static_key_is_decrypt_error() -> None:
    """Flipping a bit of the encrypted static key raises DecryptError."""
    name = "Noise_XX_448_AESGCM_SHA512"
    initiator = HandshakeState(name, initiator=True, s=bytes(range(56)))
    responder = HandshakeState(name, initiator=False, s=bytes(range(1, 57)))
    responder.read_message(initiator.write_message())
    message = bytearray(responder.write_message())
    message[60] ^= 1
    with pytest.raises(DecryptError):
        initiator.read_message(bytes(message))


def test_message_size_limits() -> None:
    """Writing over 65535 bytes is LocalProtocolError; reading it is HandshakeFailed."""
    initiator = HandshakeState(PSTP_NAME, initiator=True, psks=[PSK])
    limit = MAX_MESSAGE_LEN - 65 - 16
    with pytest.raises(LocalProtocolError):
        initiator.write_message(bytes(limit + 1))
    assert len(initiator.write_message(bytes(limit))) == MAX_MESSAGE_LEN
    responder = HandshakeState(PSTP_NAME, initiator=False, psks=[PSK])
    with pytest.raises(HandshakeFailed):
        responder.read_message(bytes(MAX_MESSAGE_LEN + 1))


def test_wrong_turn() -> None:
    """Writing or reading out of turn, or after completion, raises LocalProtocolError."""
    name = "Noise_NN_25519_AESGCM_SHA256"
    initiator = HandshakeState(name, initiator=True)
    responder = HandshakeState(name, initiator=False)
    assert initiator.is_my_turn
    assert not responder.is_my_turn
    with pytest.raises(LocalProtocolError):
        responder.write_message(b"")
    with pytest.raises(LocalProtocolError):
        initiator.read_message(bytes(48))
    with pytest.raises(LocalProtocolError):
        initiator.split()
    _handshake(initiator, responder)
    for side in (initiator, responder):
        with pytest.raises(LocalProtocolError):
            side.write_message(b"")
        with pytest.raises(LocalProtocolError):
            side.read_message(bytes(48))


def test_split_only_once() -> None:
    """split may be called once; a second pair would reuse nonces."""
    name = "Noise_NN_25519_AESGCM_SHA256"
    initiator, responder = (
        HandshakeState(name, initiator=True),
        HandshakeState(name, initiator=False),
    )
    _handshake(initiator, responder)
    initiator.split()
    with pytest.raises(LocalProtocolError):
        initiator.split()


def test_nonce_exhaustion_guard() -> None:
    """Nonce 2**64-1 is reserved: using it raises LocalProtocolError on both sides."""
    sender, receiver = CipherState("ChaChaPoly", PSK), CipherState("ChaChaPoly", PSK)
    sender.set_nonce(MAX_NONCE - 1)
    receiver.set_nonce(MAX_NONCE - 1)
    assert receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", b"last")) == b"last"
    assert sender.n == receiver.n == MAX_NONCE
    with pytest.raises(LocalProtocolError):
        sender.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(LocalProtocolError):
        receiver.decrypt_with_ad(b"", bytes(20))
    for bad in (-1, MAX_NONCE + 1):
        with pytest.raises(ValueError):
            sender.set_nonce(bad)


def test_cipher_state_basics() -> None:
    """Empty states pass data through; failed decryption does not advance the nonce."""
    empty = CipherState("AESGCM")
    assert not empty.has_key()
    assert empty.key is None
    assert empty.encrypt_with_ad(b"ad", b"clear") == b"clear"
    assert empty.decrypt_with_ad(b"ad", b"clear") == b"clear"
    assert empty.n == 0
    with pytest.raises(LocalProtocolError):
        empty.rekey()
    with pytest.raises(ValueError):
        CipherState("AESGCM", bytes(16))

    sender, receiver = CipherState("AESGCM", PSK), CipherState("AESGCM", PSK)
    ciphertext = sender.encrypt_with_ad(b"ad", b"data")
    with pytest.raises(DecryptError):
        receiver.decrypt_with_ad(b"other", ciphertext)
    assert receiver.n == 0
    assert receiver.decrypt_with_ad(b"ad", ciphertext) == b"data"
    assert receiver.n == 1
    assert PSK.hex() not in repr(sender)


def test_rekey() -> None:
    """rekey applies REKEY(k), keeps n, and both ends stay in step."""
    sender, receiver = CipherState("AESGCM", PSK), CipherState("AESGCM", PSK)
    receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", b"before"))
    expected = Aead("AESGCM", PSK).rekey()
    sender.rekey()
    receiver.rekey()
    assert sender.key == receiver.key == expected
    assert sender.n == 1
    assert receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", b"after")) == b"after"


def test_symmetric_state_initialisation() -> None:
    """Short names are zero-padded into h, long names are hashed; ck starts equal to h."""
    short = SymmetricState("Noise_NN_25519_AESGCM_SHA256", cipher="AESGCM", hash_name="SHA256")
    assert short.h == b"Noise_NN_25519_AESGCM_SHA256" + bytes(4)
    assert short.ck == short.h
    assert not short.has_key()
    name = "Noise_NNpsk0_P256_AESGCM_SHA256"
    long = SymmetricState(name, cipher="AESGCM", hash_name="SHA256")
    assert len(name) == 31
    assert long.h == name.encode() + b"\x00"
    longer = SymmetricState(name + "+x", cipher="AESGCM", hash_name="BLAKE2s")
    assert longer.h == hashlib.blake2s((name + "+x").encode()).digest()
    assert longer.ck == longer.h


@pytest.mark.parametrize(
    "name",
    [
        "Noise_NN_25519_AESGCM",
        "Noise_NN_25519_AESGCM_SHA256_extra",
        "Nois_NN_25519_AESGCM_SHA256",
        "Noise_ZZ_25519_AESGCM_SHA256",
        "Noise_NNfallback_25519_AESGCM_SHA256",
        "Noise_NNpsk_25519_AESGCM_SHA256",
        "Noise_NNpsk01_25519_AESGCM_SHA256",
        "Noise_NNpsk3_25519_AESGCM_SHA256",
        "Noise_NNpsk0+psk0_25519_AESGCM_SHA256",
        "Noise_NN_P384_AESGCM_SHA256",
        "Noise_NN_25519_AES256_SHA256",
        "Noise_NN_25519_AESGCM_SHA3",
    ],
)
def test_unsupported_names(name: str) -> None:
    """from_name rejects malformed and unsupported protocol names with ValueError."""
    with pytest.raises(ValueError):
        NoiseProtocol.from_name(name)


def test_psk_modifiers() -> None:
    """pskN modifiers place psk tokens per Noise §9 and can be combined."""
    protocol = NoiseProtocol.from_name("Noise_XXpsk0+psk3_25519_ChaChaPoly_BLAKE2b")
    assert protocol.pattern.name == "XXpsk0+psk3"
    assert protocol.pattern.messages == (("psk", "e"), ("e", "ee", "s", "es"), ("s", "se", "psk"))
    assert protocol.pattern.psk_count == 2
    assert protocol.dh_function.name == "25519"
    psks = [bytes([1]) * 32, bytes([2]) * 32]
    initiator = HandshakeState(protocol, initiator=True, s=bytes(range(32)), psks=psks)
    responder = HandshakeState(protocol, initiator=False, s=bytes(range(1, 33)), psks=psks)
    _handshake(initiator, responder)
    assert initiator.handshake_hash == responder.handshake_hash
    assert responder.remote_static == X25519().from_private(bytes(range(32))).public


def test_constructor_validation() -> None:
    """Missing or superfluous keys and wrong psks raise ValueError."""
    xx = "Noise_XX_25519_AESGCM_SHA256"
    ik = "Noise_IK_25519_AESGCM_SHA256"
    with pytest.raises(ValueError, match="static"):
        HandshakeState(xx, initiator=True)
    with pytest.raises(ValueError, match="rs"):
        HandshakeState(xx, initiator=True, s=PSK, rs=bytes(32))
    with pytest.raises(ValueError, match="rs"):
        HandshakeState(ik, initiator=True, s=PSK)
    with pytest.raises(ValueError):
        HandshakeState(ik, initiator=True, s=PSK, rs=bytes(31))
    with pytest.raises(ValueError, match="re"):
        HandshakeState(xx, initiator=True, s=PSK, re=bytes(32))
    with pytest.raises(ValueError, match="psk"):
        HandshakeState(PSTP_NAME, initiator=True)
    with pytest.raises(ValueError, match="psk"):
        HandshakeState(PSTP_NAME, initiator=True, psks=[PSK, PSK])
    with pytest.raises(ValueError, match="psk"):
        HandshakeState(PSTP_NAME, initiator=True, psks=[PSK[:31]])
    with pytest.raises(ValueError):  # the P-256 scalar 0 is not a private key
        HandshakeState(PSTP_NAME, initiator=True, psks=[PSK], e=bytes(32))


def test_invalid_remote_static_fails_at_dh() -> None:
    """An invalid pinned P-256 static key raises HandshakeFailed when first used."""
    name = "Noise_NK_P256_AESGCM_SHA256"
    initiator = HandshakeState(name, initiator=True, rs=b"\x04" + bytes(64))
    with pytest.raises(HandshakeFailed):
        initiator.write_message(b"")
    with pytest.raises(LocalProtocolError):
        initiator.write_message(b"")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_only_raises_remote_errors(data: bytes) -> None:
    """Arbitrary bytes as message 1 raise only RemoteProtocolError subclasses."""
    responder = HandshakeState(PSTP_NAME, initiator=False, psks=[PSK])
    with pytest.raises(RemoteProtocolError):
        responder.read_message(data)


# A pattern outside the table, with an initiator pre-message ``e`` (as the
# fallback patterns of rev 34 §10.2 have); callers may build one directly.
PRE_E = HandshakePattern("EN", ("e",), (), ((), ("e", "ee")))
E_PRIVATE = bytes(range(32))
E_PUBLIC = X25519().from_private(E_PRIVATE).public


def _pre_e_protocol(psk: bool) -> NoiseProtocol:
    pattern = PRE_E.with_psks([0]) if psk else PRE_E
    name = f"Noise_{pattern.name}_25519_AESGCM_SHA256"
    return NoiseProtocol(name, pattern, "25519", "AESGCM", "SHA256")


@pytest.mark.parametrize("psk", [False, True], ids=["plain", "psk0"])
def test_premessage_ephemeral_is_hashed_and_in_psk_mode_mixed(psk: bool) -> None:
    """A pre-message e is MixHash'ed, and also MixKey'ed in a psk handshake (rev 34 §9.2)."""
    protocol = _pre_e_protocol(psk)
    psks = [PSK] if psk else []
    initiator = HandshakeState(protocol, initiator=True, prologue=b"p", e=E_PRIVATE, psks=psks)
    responder = HandshakeState(protocol, initiator=False, prologue=b"p", re=E_PUBLIC, psks=psks)
    expected = SymmetricState(protocol.name, cipher="AESGCM", hash_name="SHA256")
    start_ck = expected.ck
    expected.mix_hash(b"p")
    expected.mix_hash(E_PUBLIC)
    if psk:
        expected.mix_key(E_PUBLIC)
    for side in (initiator, responder):
        assert (side.handshake_hash, side.chaining_key) == (expected.h, expected.ck)
    assert (expected.ck != start_ck) is psk
    _handshake(initiator, responder)
    assert initiator.handshake_hash == responder.handshake_hash
    assert initiator.local_ephemeral_public == responder.remote_ephemeral == E_PUBLIC


def test_premessage_ephemeral_binds_the_handshake() -> None:
    """A responder that expects another pre-message e cannot read message 1."""
    protocol = _pre_e_protocol(psk=True)
    initiator = HandshakeState(protocol, initiator=True, e=E_PRIVATE, psks=[PSK])
    other = X25519().from_private(bytes(range(1, 33))).public
    responder = HandshakeState(protocol, initiator=False, re=other, psks=[PSK])
    with pytest.raises(DecryptError):
        responder.read_message(initiator.write_message(b"hello"))


def test_premessage_ephemeral_keys_are_required() -> None:
    """Without the pre-message e (ours or the peer's) the state cannot be built."""
    protocol = _pre_e_protocol(psk=False)
    with pytest.raises(ValueError, match="ephemeral"):
        HandshakeState(protocol, initiator=True)
    with pytest.raises(ValueError, match="re"):
        HandshakeState(protocol, initiator=False)


def test_invalid_custom_pattern_is_a_local_error() -> None:
    """A DH token before both keys exist raises LocalProtocolError and kills the state."""
    pattern = HandshakePattern("bad", (), (), (("ee",), ("e",)))
    protocol = NoiseProtocol("Noise_bad_25519_AESGCM_SHA256", pattern, "25519", "AESGCM", "SHA256")
    initiator = HandshakeState(protocol, initiator=True)
    with pytest.raises(LocalProtocolError, match="ee"):
        initiator.write_message(b"")
    with pytest.raises(LocalProtocolError, match="failed"):
        initiator.write_message(b"")


def test_states_describe_themselves_without_secrets() -> None:
    """repr names protocol, role and progress; keys never appear."""
    initiator = HandshakeState(PSTP_NAME, initiator=True, psks=[PSK])
    responder = HandshakeState(PSTP_NAME, initiator=False, psks=[PSK])
    assert initiator.initiator and not responder.initiator
    assert repr(initiator) == f"HandshakeState({PSTP_NAME!r}, initiator, message=0)"
    responder.read_message(initiator.write_message(b""))
    assert repr(responder) == f"HandshakeState({PSTP_NAME!r}, responder, message=1)"
    cipher = CipherState("ChaChaPoly", PSK)
    assert cipher.cipher == "ChaChaPoly"
    assert repr(cipher) == "CipherState('ChaChaPoly', has_key=True, n=0)"
    assert PSK.hex() not in repr(cipher)
