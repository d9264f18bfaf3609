"""Tests for pstp.crypto.spake2plus: RFC 9383 vectors, rejections, no offline oracle."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from ecdsa import NIST256p
from ecdsa.ellipticcurve import PointJacobi
from ecdsa.numbertheory import square_root_mod_prime
from hypothesis import given, settings
from hypothesis import strategies as st

from pstp.crypto import spake2plus
from pstp.crypto.kdf import hmac_sha256
from pstp.crypto.spake2plus import (
    GROUP_ORDER,
    MIN_ITERATIONS,
    M,
    N,
    Prover,
    ProverState,
    Verifier,
    VerifierState,
    compute_L,
    derive_w0_w1,
)
from pstp.exceptions import HandshakeFailed, LocalProtocolError
from tests.helpers import EXTERNAL_VECTORS

_RAW = json.loads((EXTERNAL_VECTORS / "spake2plus" / "rfc9383-p256-sha256.json").read_text())
VEC: dict[str, bytes] = {k: bytes.fromhex(v) for k, v in _RAW.items() if k != "source"}
W0 = int.from_bytes(VEC["w0"], "big")
W1 = int.from_bytes(VEC["w1"], "big")
X = int.from_bytes(VEC["x"], "big")
Y = int.from_bytes(VEC["y"], "big")
CONTEXT = VEC["context"]
ID_P = VEC["idProver"]
ID_V = VEC["idVerifier"]
INTERMEDIATES = ["Z", "V", "TT", "K_main", "K_confirmP", "K_confirmV", "K_shared"]

P256_P = NIST256p.curve.p()
P256_B = NIST256p.curve.b()
# The P-256 group order, written out independently of the module (SEC 2 §2.4.2).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

SALT = bytes(range(16))
ITERATIONS = MIN_ITERATIONS
# Regression known answer for derive_w0_w1 (docs/protocol.md, pairing); the
# byte layout itself is pinned by test_derive_matches_independent_implementation.
KAT_CODE = b"12345678"
KAT_W0 = 0xB702F717BB4ABADAEB9EA2040BDB6BE9A56F2FEB34CA947BFE7DC50ED24F03EC
KAT_W1 = 0x6D87E8EE9EAF81F60A34A28E476069641DC627043141DCA9416360DCF28DE3A9


# --- helpers -------------------------------------------------------------------


def _point(data: bytes) -> Any:
    return PointJacobi.from_bytes(NIST256p.curve, data, order=P256_ORDER)


def _enc(point: Any) -> bytes:
    return bytes(point.to_bytes("uncompressed"))


def _vector_prover(**kw: Any) -> Prover:
    args: dict[str, Any] = {"context": CONTEXT, "id_prover": ID_P, "id_verifier": ID_V}
    args.update(kw)
    return Prover(args["context"], args["id_prover"], args["id_verifier"], W0, W1, x=X)


def _vector_verifier(**kw: Any) -> Verifier:
    args: dict[str, Any] = {"context": CONTEXT, "id_prover": ID_P, "id_verifier": ID_V}
    args.update(kw)
    return Verifier(args["context"], args["id_prover"], args["id_verifier"], W0, VEC["L"], y=Y)


def _len8(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data


def _stdlib_hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256 with a nil salt, from the standard library only."""
    prk = hmac.digest(b"\x00" * 32, ikm, "sha256")
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    return out[:length]


def _confirmations(
    share_p: bytes, share_v: bytes, z: bytes, v: bytes, w0: int
) -> tuple[bytes, bytes]:
    """An attacker's own RFC 9383 §3.3-§3.4 pipeline: (confirmV, confirmP) from Z, V, w0."""
    tt = b"".join(
        _len8(part)
        for part in (CONTEXT, ID_P, ID_V, M, N, share_p, share_v, z, v, w0.to_bytes(32, "big"))
    )
    keys = _stdlib_hkdf(hashlib.sha256(tt).digest(), b"ConfirmationKeys", 64)
    confirm_v = hmac.digest(keys[32:], share_p, "sha256")
    confirm_p = hmac.digest(keys[:32], share_v, "sha256")
    return confirm_v, confirm_p


def _valid_point(scalar: int) -> bytes:
    key = ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _wycheproof_invalid_65() -> list[Any]:
    data = json.loads(
        (EXTERNAL_VECTORS / "wycheproof" / "ecdh_secp256r1_ecpoint_test.json").read_text()
    )
    return [
        pytest.param(bytes.fromhex(t["public"]), id=f"wycheproof-{t['tcId']}")
        for g in data["testGroups"]
        for t in g["tests"]
        if t["result"] == "invalid" and len(t["public"]) == 130
    ]


def _non_canonical_point() -> bytes:
    """A real point (x = 0) encoded with x + p in place of x."""
    y = square_root_mod_prime(P256_B % P256_P, P256_P)
    assert (y * y - P256_B) % P256_P == 0
    return b"\x04" + P256_P.to_bytes(32, "big") + y.to_bytes(32, "big")


def _compress(point: bytes) -> bytes:
    """SEC1 §2.3.3 compressed encoding of an uncompressed point."""
    return bytes([0x02 | (point[-1] & 1)]) + point[1:33]


def _hybrid(point: bytes) -> bytes:
    """SEC1 §2.3.3 hybrid encoding (0x06/0x07): 65 bytes, valid SEC1, not ours."""
    return bytes([0x06 | (point[-1] & 1)]) + point[1:]


WYCHEPROOF_INVALID = _wycheproof_invalid_65()
BAD_ENCODINGS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x00", id="identity-sec1"),
    pytest.param(b"\x04" + b"\x00" * 64, id="identity-zeros"),
    pytest.param(M[:-1], id="short-64"),
    pytest.param(M + b"\x00", id="trailing-byte"),
    pytest.param(_compress(M), id="compressed"),
    pytest.param(_hybrid(M), id="hybrid"),
    pytest.param(b"\x05" + M[1:], id="bad-prefix"),
    pytest.param(M[1:] + b"\x04", id="raw-rotated"),
    pytest.param(_non_canonical_point(), id="x-plus-p"),
    *WYCHEPROOF_INVALID,
]


# --- 1. RFC 9383 vectors -------------------------------------------------------


def test_constants_match_rfc9383() -> None:
    """M, N and the group order are RFC 9383's P-256 values."""
    assert VEC["M"] == M
    assert VEC["N"] == N
    assert GROUP_ORDER == P256_ORDER == NIST256p.order
    # RFC 9383 §4 gives M and N compressed (SEC1 §2.3.3).
    assert _compress(M).hex() == (
        "02886e2f97ace46e55ba9dd7242579f2993b64e16ef3dcab95afd497333d8fa12f"
    )
    assert _compress(N).hex() == (
        "03d8bbd6c639c62937b04d997f38c3770719c629d7014d49a24b4f98baa1292b49"
    )
    assert _point(_compress(M)) == _point(M)
    assert _point(_compress(N)) == _point(N)


def test_compute_l_matches_vector() -> None:
    """compute_L(w1) reproduces the vector's L."""
    assert compute_L(W1) == VEC["L"]


def test_rfc9383_vector_every_intermediate() -> None:
    """Both roles reproduce every RFC 9383 Appendix C value byte for byte."""
    prover, verifier = _vector_prover(), _vector_verifier()
    share_p = prover.share()
    assert share_p == VEC["shareP"]
    share_v, confirm_v = verifier.respond(share_p)
    assert share_v == VEC["shareV"]
    assert confirm_v == VEC["confirmV"]
    confirm_p = prover.finish(share_v, confirm_v)
    assert confirm_p == VEC["confirmP"]
    verifier.finish(confirm_p)
    for party in (prover, verifier):
        for name in INTERMEDIATES:
            assert getattr(party, name) == VEC[name], name
    assert prover.state is ProverState.DONE
    assert verifier.state is VerifierState.DONE


def test_vector_transcript_layout() -> None:
    """TT is the RFC's ten length-prefixed fields, w0 as a 32-byte big-endian scalar."""
    prover = _vector_prover()
    verifier = _vector_verifier()
    share_v, confirm_v = verifier.respond(prover.share())
    prover.finish(share_v, confirm_v)
    fields = (CONTEXT, ID_P, ID_V, M, N, VEC["shareP"], VEC["shareV"], VEC["Z"], VEC["V"])
    expected = b"".join(_len8(f) for f in (*fields, VEC["w0"]))
    assert expected == VEC["TT"]
    assert expected == prover.TT
    assert _confirmations(VEC["shareP"], VEC["shareV"], VEC["Z"], VEC["V"], W0) == (
        VEC["confirmV"],
        VEC["confirmP"],
    )


# --- 2. round trips ------------------------------------------------------------


def _register(code: bytes, id_p: bytes = b"phone", id_v: bytes = b"home") -> tuple[int, int]:
    return derive_w0_w1(code, salt=SALT, iterations=ITERATIONS, id_prover=id_p, id_verifier=id_v)


def test_random_code_round_trip_and_wrong_code() -> None:
    """Same code gives equal K_shared; a wrong code fails on both sides."""
    code = f"{secrets.randbelow(10**8):08d}".encode()
    wrong = f"{(int(code) + 1) % 10**8:08d}".encode()
    w0, w1 = _register(code)
    record = compute_L(w1)
    bad_w0, bad_w1 = _register(wrong)

    prover = Prover(b"ctx", b"phone", b"home", w0, w1)
    verifier = Verifier(b"ctx", b"phone", b"home", w0, record)
    share_v, confirm_v = verifier.respond(prover.share())
    verifier.finish(prover.finish(share_v, confirm_v))
    assert prover.K_shared == verifier.K_shared
    assert len(prover.K_shared) == 32

    # A second run with the same code: fresh ephemerals, fresh key.
    again_p = Prover(b"ctx", b"phone", b"home", w0, w1)
    again_v = Verifier(b"ctx", b"phone", b"home", w0, record)
    share_v2, confirm_v2 = again_v.respond(again_p.share())
    again_v.finish(again_p.finish(share_v2, confirm_v2))
    assert again_p.K_shared == again_v.K_shared != prover.K_shared

    # Wrong code at the prover: it rejects confirmV; its best confirmP fails too.
    guesser = Prover(b"ctx", b"phone", b"home", bad_w0, bad_w1)
    verifier = Verifier(b"ctx", b"phone", b"home", w0, record)
    share_v, confirm_v = verifier.respond(guesser.share())
    with pytest.raises(HandshakeFailed):
        guesser.finish(share_v, confirm_v)
    with pytest.raises(HandshakeFailed):
        verifier.finish(hmac_sha256(guesser.K_confirmP, share_v))
    assert verifier.state is VerifierState.FAILED
    with pytest.raises(LocalProtocolError):
        _ = verifier.K_shared

    # Verifier registered with another code: the honest prover refuses it.
    prover = Prover(b"ctx", b"phone", b"home", w0, w1)
    impostor = Verifier(b"ctx", b"phone", b"home", bad_w0, compute_L(bad_w1))
    share_v, confirm_v = impostor.respond(prover.share())
    with pytest.raises(HandshakeFailed):
        prover.finish(share_v, confirm_v)
    assert prover.state is ProverState.FAILED


@pytest.mark.parametrize(
    ("prover_kw", "verifier_kw"),
    [
        ({"context": b"PSTP/2 pake A"}, {"context": b"PSTP/2 pake B"}),
        ({"id_prover": b"client"}, {"id_prover": b"clienT"}),
        ({"id_verifier": b"server"}, {"id_verifier": b""}),
        ({"id_prover": b"server", "id_verifier": b"client"}, {}),
    ],
    ids=["context", "id-prover", "id-verifier", "ids-swapped"],
)
def test_transcript_binding(prover_kw: dict[str, bytes], verifier_kw: dict[str, bytes]) -> None:
    """A different Context or identity on one side breaks the confirmation."""
    prover, verifier = _vector_prover(**prover_kw), _vector_verifier(**verifier_kw)
    share_v, confirm_v = verifier.respond(prover.share())
    with pytest.raises(HandshakeFailed):
        prover.finish(share_v, confirm_v)


def test_reflection_fails() -> None:
    """confirmV reflected as confirmP, or shareP reflected as shareV, is refused."""
    prover, verifier = _vector_prover(), _vector_verifier()
    share_p = prover.share()
    _, confirm_v = verifier.respond(share_p)
    assert confirm_v != VEC["confirmP"]
    with pytest.raises(HandshakeFailed):
        verifier.finish(confirm_v)
    with pytest.raises(HandshakeFailed):
        prover.finish(share_p, confirm_v)


# --- 3. rejections -------------------------------------------------------------


def test_share_p_equal_to_w0_m_rejected() -> None:
    """shareP = w0*M would make Z the identity: the verifier aborts."""
    cancelling = _enc(_point(M) * W0)
    verifier = _vector_verifier()
    with pytest.raises(HandshakeFailed, match="identity"):
        verifier.respond(cancelling)
    assert verifier.state is VerifierState.FAILED


def test_share_v_equal_to_w0_n_rejected() -> None:
    """shareV = w0*N would make Z and V the identity: the prover aborts."""
    cancelling = _enc(_point(N) * W0)
    prover = _vector_prover()
    prover.share()
    with pytest.raises(HandshakeFailed, match="identity"):
        prover.finish(cancelling, VEC["confirmV"])
    assert prover.state is ProverState.FAILED


@pytest.mark.parametrize("bad", BAD_ENCODINGS)
def test_invalid_share_p_rejected(bad: bytes) -> None:
    """Identity, short, long, compressed, hybrid, non-canonical and off-curve shareP fail."""
    verifier = _vector_verifier()
    with pytest.raises(HandshakeFailed):
        verifier.respond(bad)
    with pytest.raises(LocalProtocolError):
        verifier.respond(VEC["shareP"])


@pytest.mark.parametrize("bad", BAD_ENCODINGS)
def test_invalid_share_v_rejected(bad: bytes) -> None:
    """The same invalid encodings as shareV make Prover.finish fail."""
    prover = _vector_prover()
    prover.share()
    with pytest.raises(HandshakeFailed):
        prover.finish(bad, VEC["confirmV"])
    with pytest.raises(LocalProtocolError):
        prover.finish(VEC["shareV"], VEC["confirmV"])


def test_hybrid_and_wycheproof_cases_are_really_tested() -> None:
    """The hybrid case is a valid SEC1 point and the Wycheproof list is not empty."""
    assert _point(_hybrid(M)) == _point(M)
    assert len(WYCHEPROOF_INVALID) >= 10


@pytest.mark.parametrize("bit", [0, 7, 100, 255])
def test_bit_flipped_confirm_v_rejected(bit: int) -> None:
    """A single flipped bit in confirmV makes the prover abort."""
    prover, verifier = _vector_prover(), _vector_verifier()
    share_v, confirm_v = verifier.respond(prover.share())
    flipped = bytearray(confirm_v)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(HandshakeFailed):
        prover.finish(share_v, bytes(flipped))
    with pytest.raises(LocalProtocolError):
        _ = prover.K_shared


@pytest.mark.parametrize("bit", [0, 7, 100, 255])
def test_bit_flipped_confirm_p_rejected(bit: int) -> None:
    """A single flipped bit in confirmP makes the verifier abort."""
    prover, verifier = _vector_prover(), _vector_verifier()
    share_v, confirm_v = verifier.respond(prover.share())
    flipped = bytearray(prover.finish(share_v, confirm_v))
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(HandshakeFailed):
        verifier.finish(bytes(flipped))
    with pytest.raises(LocalProtocolError):
        verifier.finish(VEC["confirmP"])


@pytest.mark.parametrize("tag", [b"", VEC["confirmP"][:31], VEC["confirmP"] + b"\x00"])
def test_wrong_length_confirm_rejected(tag: bytes) -> None:
    """Truncated or extended confirmation tags fail."""
    verifier = _vector_verifier()
    verifier.respond(VEC["shareP"])
    with pytest.raises(HandshakeFailed):
        verifier.finish(tag)


# --- 4. no offline oracle ------------------------------------------------------


def _attacker_check(wire: dict[str, bytes], code_guess: bytes) -> tuple[bool, bytes]:
    """Everything a passive eavesdropper can try offline for one code guess.

    Returns whether any candidate reproduced confirmV or confirmP, and the V
    it computed (which is the true V when the guess is right).
    """
    w0, w1 = derive_w0_w1(
        code_guess,
        salt=wire["salt"],
        iterations=int.from_bytes(wire["iterations"], "big"),
        id_prover=ID_P,
        id_verifier=ID_V,
    )
    l_point = _point(compute_L(w1))  # the attacker can build the verifier record too
    share_p, share_v = wire["shareP"], wire["shareV"]
    x_g = _point(share_p) + (-_point(M) * w0)  # = x*G if the guess is right
    y_g = _point(share_v) + (-_point(N) * w0)  # = y*G if the guess is right
    v = _enc(y_g * w1)  # the prover's formula: the true V for a right guess
    r = secrets.randbelow(P256_ORDER - 1) + 1
    g = NIST256p.generator
    # Z = x*y*G needs x or y: the attacker's candidates all miss (CDH).
    z_candidates = [x_g, y_g, x_g + y_g, g * r, x_g * r, y_g * r, x_g * w1, y_g * w0]
    z_candidates += [l_point, l_point * r, x_g + l_point]
    hit = False
    for z in z_candidates:
        confirm_v, confirm_p = _confirmations(share_p, share_v, _enc(z), v, w0)
        hit |= hmac.compare_digest(confirm_v, wire["confirmV"])
        hit |= hmac.compare_digest(confirm_p, wire["confirmP"])
    return hit, v


def test_passive_capture_gives_no_offline_oracle() -> None:
    """From a captured run, a correct and a wrong code guess look the same offline."""
    code, wrong = b"48151623", b"48151624"
    w0, w1 = _register(code, ID_P, ID_V)
    x = secrets.randbelow(P256_ORDER - 1) + 1
    y = secrets.randbelow(P256_ORDER - 1) + 1
    prover = Prover(CONTEXT, ID_P, ID_V, w0, w1, x=x)
    verifier = Verifier(CONTEXT, ID_P, ID_V, w0, compute_L(w1), y=y)
    share_p = prover.share()
    share_v, confirm_v = verifier.respond(share_p)
    confirm_p = prover.finish(share_v, confirm_v)
    verifier.finish(confirm_p)
    wire = {
        "shareP": share_p,
        "shareV": share_v,
        "confirmV": confirm_v,
        "confirmP": confirm_p,
        "salt": SALT,
        "iterations": ITERATIONS.to_bytes(4, "big"),
    }

    right_hit, right_v = _attacker_check(wire, code)
    wrong_hit, wrong_v = _attacker_check(wire, wrong)
    assert right_hit is False
    assert wrong_hit is False
    # The right guess even yields the true V; without Z it is still no oracle.
    assert right_v == prover.V
    assert wrong_v != prover.V

    # Control: the attacker's pipeline is exact, and Z (x*y*G) is the only
    # missing piece: given the true Z it would tell the guesses apart.
    assert _confirmations(share_p, share_v, prover.Z, right_v, w0) == (confirm_v, confirm_p)
    assert _confirmations(share_p, share_v, prover.Z, wrong_v, w0) != (confirm_v, confirm_p)
    assert _enc(_point(share_p) + (-_point(M) * w0)) == _enc(NIST256p.generator * x)


def _seed_proof(code: bytes, challenge: bytes) -> bytes:
    """The seeds' plain design: proof = HMAC-SHA256(code, challenge)."""
    return hmac_sha256(code, challenge)


def test_seed_design_hmac_proof_is_an_offline_oracle() -> None:
    """One captured (challenge, proof) of the seeds' design reveals a 4-digit code."""
    code = f"{secrets.randbelow(10_000):04d}".encode()
    challenge = secrets.token_bytes(32)
    proof = _seed_proof(code, challenge)
    found = [
        guess
        for guess in (f"{i:04d}".encode() for i in range(10_000))
        if hmac.compare_digest(_seed_proof(guess, challenge), proof)
    ]
    assert found == [code]


# --- 5. arbitrary shares -------------------------------------------------------

SHARES = st.one_of(
    st.binary(min_size=65, max_size=65),
    st.binary(min_size=64, max_size=64).map(lambda b: b"\x04" + b),
    st.integers(min_value=1, max_value=P256_ORDER - 1).map(_valid_point),
)


@settings(max_examples=60, deadline=None)
@given(share_p=SHARES)
def test_arbitrary_share_p(share_p: bytes) -> None:
    """Any 65-byte shareP is either answered or refused with HandshakeFailed."""
    verifier = _vector_verifier()
    try:
        share_v, confirm_v = verifier.respond(share_p)
    except HandshakeFailed:
        assert verifier.state is VerifierState.FAILED
    else:
        assert share_v == VEC["shareV"]
        assert len(confirm_v) == 32
        assert verifier.state is VerifierState.EXPECT_CONFIRM_P


@settings(max_examples=60, deadline=None)
@given(share_v=SHARES, confirm_v=st.binary(min_size=32, max_size=32))
def test_arbitrary_share_v(share_v: bytes, confirm_v: bytes) -> None:
    """Any 65-byte shareV (with any confirmV) makes finish succeed or raise HandshakeFailed."""
    prover = _vector_prover()
    prover.share()
    try:
        prover.finish(share_v, confirm_v)
    except HandshakeFailed:
        assert prover.state is ProverState.FAILED


# --- 6. derive_w0_w1 -----------------------------------------------------------


@pytest.mark.parametrize("iterations", [0, -1, MIN_ITERATIONS - 1])
def test_derive_refuses_few_iterations(iterations: int) -> None:
    """Fewer than 100 000 PBKDF2 iterations raise ValueError."""
    with pytest.raises(ValueError, match="iterations"):
        derive_w0_w1(b"1234", salt=SALT, iterations=iterations, id_prover=b"", id_verifier=b"")


@pytest.mark.parametrize("length", [0, 8, 15, 33, 64])
def test_derive_refuses_bad_salt_length(length: int) -> None:
    """A salt shorter than 16 or longer than 32 bytes raises ValueError."""
    with pytest.raises(ValueError, match="salt"):
        derive_w0_w1(
            b"1234", salt=b"s" * length, iterations=ITERATIONS, id_prover=b"", id_verifier=b""
        )


def test_derive_known_answer_and_determinism() -> None:
    """derive_w0_w1 is deterministic and matches the recorded known answer."""
    first = _register(KAT_CODE)
    assert first == (KAT_W0, KAT_W1)
    assert _register(KAT_CODE) == first
    assert all(0 < w < P256_ORDER for w in first)


def test_derive_matches_independent_implementation() -> None:
    """The byte layout equals a standard-library re-implementation of the documented steps."""
    salt = bytes(range(100, 132))  # 32 bytes: the upper bound is accepted
    code, id_p, id_v = b"correct horse", b"phone", b"home"
    got = derive_w0_w1(code, salt=salt, iterations=ITERATIONS, id_prover=id_p, id_verifier=id_v)
    password = _len8(code) + _len8(id_p) + _len8(id_v)
    stretched = hashlib.pbkdf2_hmac("sha256", password, salt, ITERATIONS, 32)
    seed = _stdlib_hkdf(stretched, b"PSTP/2 pake w0w1", 80)
    w0 = int.from_bytes(seed[:40], "big") % P256_ORDER
    w1 = int.from_bytes(seed[40:], "big") % P256_ORDER
    assert got == (w0, w1)


@pytest.mark.parametrize(
    "change",
    [
        {"code": b"12345679"},
        {"salt": bytes(range(1, 17))},
        {"id_prover": b"phone2"},
        {"id_verifier": b"home2"},
        {"code": b"1234567", "id_prover": b"8phone"},  # same concatenation, other split
    ],
    ids=["code", "salt", "id-prover", "id-verifier", "length-prefix"],
)
def test_derive_depends_on_every_input(change: dict[str, bytes]) -> None:
    """Changing the code, salt or either id (or only where they split) changes w0 and w1."""
    args: dict[str, Any] = {
        "code": KAT_CODE,
        "salt": SALT,
        "iterations": ITERATIONS,
        "id_prover": b"phone",
        "id_verifier": b"home",
    }
    args.update(change)
    code = args.pop("code")
    w0, w1 = derive_w0_w1(code, **args)
    assert w0 != KAT_W0
    assert w1 != KAT_W1


def test_scalar_reduction_and_zero_rejection() -> None:
    """40-byte halves are reduced mod n; a half that reduces to 0 raises ValueError."""
    n40 = P256_ORDER.to_bytes(40, "big")
    five = (P256_ORDER + 5).to_bytes(40, "big")
    top = b"\xff" * 40
    assert spake2plus._scalars_from_seed(five + top) == (5, (2**320 - 1) % P256_ORDER)
    with pytest.raises(ValueError, match="zero"):
        spake2plus._scalars_from_seed(n40 + five)
    with pytest.raises(ValueError, match="zero"):
        spake2plus._scalars_from_seed(five + b"\x00" * 40)
    with pytest.raises(ValueError, match="80"):
        spake2plus._scalars_from_seed(five)


# --- API misuse and secrecy ----------------------------------------------------


def test_prover_call_order() -> None:
    """Prover methods out of order raise LocalProtocolError."""
    prover = _vector_prover()
    assert prover.state is ProverState.EXPECT_SHARE_CALL
    with pytest.raises(LocalProtocolError):
        prover.finish(VEC["shareV"], VEC["confirmV"])
    with pytest.raises(LocalProtocolError):
        _ = prover.Z
    prover.share()
    with pytest.raises(LocalProtocolError):
        prover.share()
    with pytest.raises(LocalProtocolError):
        _ = prover.K_shared
    prover.finish(VEC["shareV"], VEC["confirmV"])
    with pytest.raises(LocalProtocolError):
        prover.finish(VEC["shareV"], VEC["confirmV"])
    with pytest.raises(LocalProtocolError):
        prover.share()
    assert prover.K_shared == VEC["K_shared"]


def test_verifier_call_order() -> None:
    """Verifier methods out of order raise LocalProtocolError."""
    verifier = _vector_verifier()
    assert verifier.state is VerifierState.EXPECT_SHARE_P
    with pytest.raises(LocalProtocolError):
        verifier.finish(VEC["confirmP"])
    with pytest.raises(LocalProtocolError):
        _ = verifier.K_main
    verifier.respond(VEC["shareP"])
    with pytest.raises(LocalProtocolError):
        verifier.respond(VEC["shareP"])
    with pytest.raises(LocalProtocolError):
        _ = verifier.K_shared  # not before confirmP has been checked
    verifier.finish(VEC["confirmP"])
    with pytest.raises(LocalProtocolError):
        verifier.finish(VEC["confirmP"])
    assert verifier.K_shared == VEC["K_shared"]


@pytest.mark.parametrize("bad", [0, GROUP_ORDER, GROUP_ORDER + 1, -1])
def test_scalars_out_of_range(bad: int) -> None:
    """w0, w1, x, y outside [1, n-1] raise ValueError."""
    with pytest.raises(ValueError, match="w0"):
        Prover(CONTEXT, ID_P, ID_V, bad, W1)
    with pytest.raises(ValueError, match="w1"):
        Prover(CONTEXT, ID_P, ID_V, W0, bad)
    with pytest.raises(ValueError, match="x"):
        Prover(CONTEXT, ID_P, ID_V, W0, W1, x=bad)
    with pytest.raises(ValueError, match="w0"):
        Verifier(CONTEXT, ID_P, ID_V, bad, VEC["L"])
    with pytest.raises(ValueError, match="y"):
        Verifier(CONTEXT, ID_P, ID_V, W0, VEC["L"], y=bad)
    with pytest.raises(ValueError, match="w1"):
        compute_L(bad)


@pytest.mark.parametrize("bad", [b"", b"\x00", _hybrid(VEC["L"]), VEC["L"][:33], M[:-1] + b"\x00"])
def test_verifier_refuses_invalid_record(bad: bytes) -> None:
    """An L that is not a valid 65-byte uncompressed point raises ValueError."""
    with pytest.raises(ValueError, match="L"):
        Verifier(CONTEXT, ID_P, ID_V, W0, bad)


def test_fresh_ephemerals_by_default() -> None:
    """Without x or y, each object draws fresh ephemeral scalars."""
    assert (
        Prover(CONTEXT, ID_P, ID_V, W0, W1).share() != Prover(CONTEXT, ID_P, ID_V, W0, W1).share()
    )
    v1 = Verifier(CONTEXT, ID_P, ID_V, W0, VEC["L"])
    v2 = Verifier(CONTEXT, ID_P, ID_V, W0, VEC["L"])
    assert v1.respond(VEC["shareP"])[0] != v2.respond(VEC["shareP"])[0]


def test_secrets_stay_out_of_reprs() -> None:
    """repr shows the state only, never a scalar or key."""
    prover, verifier = _vector_prover(), _vector_verifier()
    share_v, confirm_v = verifier.respond(prover.share())
    verifier.finish(prover.finish(share_v, confirm_v))
    for party in (prover, verifier):
        text = repr(party)
        assert text == str(party) == f"{type(party).__name__}(state=DONE)"
        for secret in (W0, W1, X, Y):
            assert f"{secret:x}" not in text
            assert str(secret) not in text
        assert not hasattr(party, "__dict__")
