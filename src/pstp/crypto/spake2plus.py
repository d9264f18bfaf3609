"""SPAKE2+ (RFC 9383), ciphersuite P256-SHA256-HKDF-SHA256-HMAC-SHA256, sans-I/O.

PSTP-PAKE (docs/protocol.md, pairing) turns a short human code into a pair
key with at most one online guess per run and no offline oracle.  This module
is the primitive only: it derives ``(w0, w1)`` from the code, computes the
verifier record ``L``, and runs the two roles as small state machines that
take and return bytes.  Framing, the ``Context`` value, attempt counting and
lock-out belong to the protocol layer.

Flow (RFC 9383 §3.3-§3.4)::

    Prover (knows w0, w1)                 Verifier (knows w0, L = w1*G)
    shareP = Prover.share()        --->   shareV, confirmV = Verifier.respond(shareP)
    confirmP = Prover.finish(      <---
        shareV, confirmV)          --->   Verifier.finish(confirmP)
    K_shared                              K_shared

Group arithmetic uses python-ecdsa (pyca/cryptography exposes no point
addition); every received point is first decoded and checked to be on the
curve by pyca/cryptography (OpenSSL), exactly as ``pstp.crypto.keys`` does for
P-256 ECDH.  Hashes, HKDF, HMAC and PBKDF2 come from pyca/cryptography.

Known limit: python-ecdsa's scalar multiplication is pure Python and not
constant time, so the secret scalars ``w0``, ``w1``, ``x`` and ``y`` may leak
through timing to a local observer who can measure it precisely.
"""

from __future__ import annotations

import enum
import hmac
import secrets
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from ecdsa import NIST256p  # type: ignore[import-untyped]
from ecdsa.ellipticcurve import INFINITY, PointJacobi  # type: ignore[import-untyped]

from pstp.crypto.kdf import digest, hkdf_sha256, hmac_sha256
from pstp.exceptions import HandshakeFailed, LocalProtocolError

__all__ = [
    "CONFIRM_LEN",
    "GROUP_ORDER",
    "MIN_ITERATIONS",
    "SALT_MAX_LEN",
    "SALT_MIN_LEN",
    "SHARED_KEY_LEN",
    "SHARE_LEN",
    "W0W1_INFO",
    "M",
    "N",
    "Prover",
    "ProverState",
    "Verifier",
    "VerifierState",
    "compute_L",
    "derive_w0_w1",
]

# The order n of the P-256 group (SEC 2 §2.4.2); the cofactor h is 1, so
# RFC 9383's multiplications by h are omitted.
GROUP_ORDER: Final[int] = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

# RFC 9383 §4, P-256 M and N (given there compressed), as SEC1 uncompressed
# points: the form they take in the transcript TT.
M: Final[bytes] = bytes.fromhex(
    "04886e2f97ace46e55ba9dd7242579f2993b64e16ef3dcab95afd497333d8fa12f"
    "5ff355163e43ce224e0b0e65ff02ac8e5c7be09419c785e0ca547d55a12e2d20"
)
N: Final[bytes] = bytes.fromhex(
    "04d8bbd6c639c62937b04d997f38c3770719c629d7014d49a24b4f98baa1292b49"
    "07d60aa6bfade45008a636337f5168c64d9bd36034808cd564490b1e656edbe7"
)

# A share (shareP, shareV) and L are 65-byte SEC1 uncompressed points.
SHARE_LEN: Final = 65
# confirmP and confirmV are full HMAC-SHA256 tags (RFC 9383 §3.4).
CONFIRM_LEN: Final = 32
# K_shared is Hash-length (RFC 9383 §3.4).
SHARED_KEY_LEN: Final = 32

# docs/protocol.md §15.4: the code is stretched by PBKDF2-HMAC-SHA256 with at least this
# many iterations and a 16..32-byte salt.
MIN_ITERATIONS: Final = 100_000
SALT_MIN_LEN: Final = 16
SALT_MAX_LEN: Final = 32
# HKDF info that expands the PBKDF2 output into w0s || w1s.
W0W1_INFO: Final = b"PSTP/2 pake w0w1"

# RFC 9383 §3.2: each of w0s, w1s is ceil(log2(n))/8 + k/8 bytes with
# k = 64, so reducing mod n leaves a bias below 2^-64.
_SCALAR_SEED_LEN: Final = 32 + 8
_PBKDF2_LEN: Final = 32
_SCALAR_LEN: Final = 32
_CONFIRMATION_KEYS_INFO: Final = b"ConfirmationKeys"
_SHARED_KEY_INFO: Final = b"SharedKey"

_SHA256: Final = hashes.SHA256()
_SECP256R1: Final = ec.SECP256R1()
_CURVE: Final[Any] = NIST256p.curve
_G: Final[Any] = NIST256p.generator
assert _G.order() == GROUP_ORDER


def _len8(data: bytes) -> bytes:
    """RFC 9383 §3.3 ``len(x) || x``: an 8-byte little-endian length, then the bytes."""
    return len(data).to_bytes(8, "little") + data


def _decode_point(data: bytes, what: str) -> Any:
    """Decode a 65-byte SEC1 uncompressed P-256 point, validated on the curve.

    Raises:
        HandshakeFailed: wrong length or prefix, off the curve, or a
            coordinate not below p.  The point at infinity has no 65-byte
            uncompressed encoding, so it is refused here too.
    """
    if len(data) != SHARE_LEN or data[0] != 0x04:
        raise HandshakeFailed(f"SPAKE2+ {what} must be a 65-byte uncompressed P-256 point")
    try:
        # pyca/OpenSSL checks 0 <= x, y < p and the curve equation.
        numbers = ec.EllipticCurvePublicKey.from_encoded_point(_SECP256R1, data).public_numbers()
    except ValueError as exc:
        raise HandshakeFailed(f"SPAKE2+ {what} is not a point on P-256") from exc
    point = PointJacobi(_CURVE, numbers.x, numbers.y, 1, GROUP_ORDER)
    # Belt and braces: python-ecdsa does not validate on construction.
    assert _CURVE.contains_point(numbers.x, numbers.y)
    return point


def _is_identity(point: Any) -> bool:
    return bool(point == INFINITY)


def _encode_point(point: Any) -> bytes:
    """SEC1 uncompressed encoding of a non-identity point."""
    assert not _is_identity(point)
    encoded = bytes(point.to_bytes("uncompressed"))
    assert len(encoded) == SHARE_LEN
    return encoded


_M_POINT: Final[Any] = _decode_point(M, "M")
_N_POINT: Final[Any] = _decode_point(N, "N")


def _check_scalar(value: int, name: str) -> int:
    if not 0 < value < GROUP_ORDER:
        raise ValueError(f"{name} must be an integer in [1, n-1]")
    return value


def _random_scalar() -> int:
    """A uniform scalar in [1, n-1] from the OS CSPRNG.

    RFC 9383 §3.3 draws x, y from [0, n-1]; 0 is left out because it would
    make the share equal to w0*M (or w0*N), which the peer refuses.
    """
    return secrets.randbelow(GROUP_ORDER - 1) + 1


def _scalars_from_seed(seed: bytes) -> tuple[int, int]:
    """Split 80 bytes into w0s || w1s (40 bytes each) and reduce each mod n.

    Raises:
        ValueError: ``seed`` is not 80 bytes, or w0 or w1 reduces to 0.
    """
    if len(seed) != 2 * _SCALAR_SEED_LEN:
        raise ValueError(f"w0s || w1s must be {2 * _SCALAR_SEED_LEN} bytes")
    w0 = int.from_bytes(seed[:_SCALAR_SEED_LEN], "big") % GROUP_ORDER
    w1 = int.from_bytes(seed[_SCALAR_SEED_LEN:], "big") % GROUP_ORDER
    if w0 == 0 or w1 == 0:
        # Probability about 2^-255 per run; a new salt gives new scalars.
        raise ValueError("derived SPAKE2+ scalar is zero; register again with a new salt")
    return w0, w1


def derive_w0_w1(
    code: bytes, *, salt: bytes, iterations: int, id_prover: bytes, id_verifier: bytes
) -> tuple[int, int]:
    """Derive the SPAKE2+ scalars ``(w0, w1)`` from a human code (RFC 9383 §3.2).

    The derivation, byte for byte (``len8(s)`` is the length of ``s`` as an
    8-byte little-endian unsigned integer, as in RFC 9383's transcript)::

        input  = len8(code) || code || len8(id_prover) || id_prover
                 || len8(id_verifier) || id_verifier
        stretched = PBKDF2-HMAC-SHA256(password=input, salt=salt,
                                       iterations=iterations, dkLen=32)
        seed   = HKDF-SHA256(salt=nil, IKM=stretched,
                             info="PSTP/2 pake w0w1", L=80)
                 # RFC 5869 extract-then-expand; a nil salt is 32 zero bytes
        w0s    = seed[0:40];  w1s = seed[40:80]
        w0     = int_big_endian(w0s) mod n
        w1     = int_big_endian(w1s) mod n

    where n is the P-256 group order.  Each of w0s and w1s is 40 bytes
    (32 + 8), so the reduction mod n is biased by less than 2^-64
    (RFC 9383 §3.2, k = 64).  A scalar that reduces to 0 is refused.
    The code is used as given: normalising it (digits, case, spaces) is the
    caller's job.

    Args:
        code: the human code, as bytes.
        salt: 16 to 32 random bytes chosen at registration.
        iterations: the PBKDF2 iteration count, at least 100 000.
        id_prover: the prover's identity (may be empty).
        id_verifier: the verifier's identity (may be empty).

    Returns:
        ``(w0, w1)``, each in ``[1, n-1]``.

    Raises:
        ValueError: ``iterations`` is below 100 000, ``salt`` is not 16 to 32
            bytes long, or a derived scalar is 0.
    """
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"iterations must be at least {MIN_ITERATIONS}")
    if not SALT_MIN_LEN <= len(salt) <= SALT_MAX_LEN:
        raise ValueError(f"salt must be {SALT_MIN_LEN} to {SALT_MAX_LEN} bytes")
    password = _len8(code) + _len8(id_prover) + _len8(id_verifier)
    pbkdf2 = PBKDF2HMAC(algorithm=_SHA256, length=_PBKDF2_LEN, salt=salt, iterations=iterations)
    stretched = pbkdf2.derive(password)
    seed = hkdf_sha256(stretched, salt=None, info=W0W1_INFO, length=2 * _SCALAR_SEED_LEN)
    return _scalars_from_seed(seed)


def compute_L(w1: int) -> bytes:
    """Compute the verifier record ``L = w1*G`` (RFC 9383 §3.2).

    Args:
        w1: the second scalar from ``derive_w0_w1``.

    Returns:
        ``L`` as a 65-byte SEC1 uncompressed point.

    Raises:
        ValueError: ``w1`` is not in ``[1, n-1]``.
    """
    _check_scalar(w1, "w1")
    return _encode_point(_G * w1)


class _Keys:
    """The RFC 9383 §3.3-§3.4 transcript and key schedule of one run."""

    __slots__ = ("K_confirmP", "K_confirmV", "K_main", "K_shared", "TT", "V", "Z")

    def __init__(
        self,
        *,
        context: bytes,
        id_prover: bytes,
        id_verifier: bytes,
        share_p: bytes,
        share_v: bytes,
        z: Any,
        v: Any,
        w0: int,
    ) -> None:
        # A peer share equal to w0*M (or w0*N) cancels the password mask and
        # makes Z (and, for the prover, V) the identity; RFC 9383 §6 requires
        # aborting then.  With h = 1 and prime order, this is the only way.
        if _is_identity(z) or _is_identity(v):
            raise HandshakeFailed("SPAKE2+ peer share gives the identity (Z or V)")
        self.Z = _encode_point(z)
        self.V = _encode_point(v)
        self.TT = b"".join(
            _len8(part)
            for part in (
                context,
                id_prover,
                id_verifier,
                M,
                N,
                share_p,
                share_v,
                self.Z,
                self.V,
                w0.to_bytes(_SCALAR_LEN, "big"),
            )
        )
        self.K_main = digest("SHA256", self.TT)
        confirmation = hkdf_sha256(
            self.K_main, salt=None, info=_CONFIRMATION_KEYS_INFO, length=2 * CONFIRM_LEN
        )
        self.K_confirmP = confirmation[:CONFIRM_LEN]
        self.K_confirmV = confirmation[CONFIRM_LEN:]
        self.K_shared = hkdf_sha256(
            self.K_main, salt=None, info=_SHARED_KEY_INFO, length=SHARED_KEY_LEN
        )


class ProverState(enum.Enum):
    """Where a ``Prover`` stands; names say what it waits for."""

    EXPECT_SHARE_CALL = enum.auto()
    EXPECT_SHARE_V = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class VerifierState(enum.Enum):
    """Where a ``Verifier`` stands; names say what it waits for."""

    EXPECT_SHARE_P = enum.auto()
    EXPECT_CONFIRM_P = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class _Party:
    """What Prover and Verifier share: identities, transcript, intermediates."""

    __slots__ = ("_context", "_id_prover", "_id_verifier", "_keys", "_w0")

    def __init__(self, context: bytes, id_prover: bytes, id_verifier: bytes, w0: int) -> None:
        self._context = bytes(context)
        self._id_prover = bytes(id_prover)
        self._id_verifier = bytes(id_verifier)
        self._w0 = _check_scalar(w0, "w0")
        self._keys: _Keys | None = None

    def _derive(self, share_p: bytes, share_v: bytes, z: Any, v: Any) -> _Keys:
        self._keys = _Keys(
            context=self._context,
            id_prover=self._id_prover,
            id_verifier=self._id_verifier,
            share_p=share_p,
            share_v=share_v,
            z=z,
            v=v,
            w0=self._w0,
        )
        return self._keys

    def _computed(self) -> _Keys:
        if self._keys is None:
            raise LocalProtocolError("SPAKE2+ transcript not computed yet")
        return self._keys

    @property
    def Z(self) -> bytes:
        """``Z`` (SEC1 uncompressed), for tests.

        Raises:
            LocalProtocolError: the peer's share has not been processed yet.
        """
        return self._computed().Z

    @property
    def V(self) -> bytes:
        """``V`` (SEC1 uncompressed), for tests.

        Raises:
            LocalProtocolError: the peer's share has not been processed yet.
        """
        return self._computed().V

    @property
    def TT(self) -> bytes:
        """The transcript ``TT``, for tests.

        Raises:
            LocalProtocolError: the peer's share has not been processed yet.
        """
        return self._computed().TT

    @property
    def K_main(self) -> bytes:
        """``K_main = SHA256(TT)``, for tests.

        Raises:
            LocalProtocolError: the peer's share has not been processed yet.
        """
        return self._computed().K_main

    @property
    def K_confirmP(self) -> bytes:
        """The prover's confirmation key, for tests.

        Raises:
            LocalProtocolError: the peer's share has not been processed yet.
        """
        return self._computed().K_confirmP

    @property
    def K_confirmV(self) -> bytes:
        """The verifier's confirmation key, for tests.

        Raises:
            LocalProtocolError: the peer's share has not been processed yet.
        """
        return self._computed().K_confirmV


class Prover(_Party):
    """The SPAKE2+ prover: the side that knows the code (``w0`` and ``w1``).

    One object runs one exchange: ``share()``, then ``finish()``.  After a
    failure the object is spent and every further call raises
    ``LocalProtocolError``.  The intermediates (``Z``, ``V``, ``TT``,
    ``K_main``, ``K_confirmP``, ``K_confirmV``) are readable once computed, for
    tests; RFC 9383 §3.4 says they must be discarded after the exchange, so drop
    the object once ``K_shared`` has been taken.

    Args:
        context: the SPAKE2+ ``Context`` string, bound into ``TT``.
        id_prover: the prover's identity (may be empty).
        id_verifier: the verifier's identity (may be empty).
        w0: the first scalar from ``derive_w0_w1``.
        w1: the second scalar from ``derive_w0_w1``.
        x: a fixed ephemeral scalar in ``[1, n-1]``, for test vectors only;
            by default a fresh one is drawn from the OS CSPRNG.

    Raises:
        ValueError: ``w0``, ``w1`` or ``x`` is not in ``[1, n-1]``.
    """

    __slots__ = ("_share_p", "_state", "_w1", "_x")

    def __init__(
        self,
        context: bytes,
        id_prover: bytes,
        id_verifier: bytes,
        w0: int,
        w1: int,
        *,
        x: int | None = None,
    ) -> None:
        super().__init__(context, id_prover, id_verifier, w0)
        self._w1 = _check_scalar(w1, "w1")
        self._x = _random_scalar() if x is None else _check_scalar(x, "x")
        self._share_p = b""
        self._state = ProverState.EXPECT_SHARE_CALL

    def __repr__(self) -> str:
        return f"Prover(state={self._state.name})"

    @property
    def state(self) -> ProverState:
        """The current state."""
        return self._state

    def _expect(self, state: ProverState, action: str) -> None:
        if self._state is not state:
            raise LocalProtocolError(f"SPAKE2+ prover cannot {action} in state {self._state.name}")

    def share(self) -> bytes:
        """Compute ``shareP = x*G + w0*M`` (RFC 9383 §3.3), to send to the verifier.

        Returns:
            ``shareP``, a 65-byte SEC1 uncompressed point.

        Raises:
            LocalProtocolError: called twice, or after ``finish()``.
        """
        self._expect(ProverState.EXPECT_SHARE_CALL, "share")
        # The identity would need x = -w0*log_G(M) mod n: nobody knows that log.
        self._share_p = _encode_point(_G * self._x + _M_POINT * self._w0)
        self._state = ProverState.EXPECT_SHARE_V
        return self._share_p

    def finish(self, share_v: bytes, confirm_v: bytes) -> bytes:
        """Process ``shareV`` and ``confirmV``; return ``confirmP`` (RFC 9383 §3.3-§3.4).

        Computes ``Z = x*(shareV - w0*N)`` and ``V = w1*(shareV - w0*N)``,
        the transcript and the key schedule, and checks ``confirmV`` in
        constant time before anything is released.

        Args:
            share_v: the verifier's share, 65 bytes.
            confirm_v: the verifier's confirmation tag, 32 bytes.

        Returns:
            ``confirmP = HMAC(K_confirmP, shareV)``, to send to the verifier.
            ``K_shared`` is available afterwards.

        Raises:
            HandshakeFailed: ``share_v`` is not a valid point, equals
                ``w0*N``, or ``confirm_v`` does not verify (a wrong code, or
                a tampered message).
            LocalProtocolError: ``share()`` was not called first, or the
                exchange is already over.
        """
        self._expect(ProverState.EXPECT_SHARE_V, "finish")
        self._state = ProverState.FAILED  # until proven otherwise
        y_point = _decode_point(share_v, "shareV")
        unmasked = y_point + (-_N_POINT * self._w0)
        keys = self._derive(self._share_p, share_v, unmasked * self._x, unmasked * self._w1)
        expected = hmac_sha256(keys.K_confirmV, self._share_p)
        if not hmac.compare_digest(expected, confirm_v):
            raise HandshakeFailed("SPAKE2+ verifier confirmation failed")
        self._state = ProverState.DONE
        return hmac_sha256(keys.K_confirmP, share_v)

    @property
    def K_shared(self) -> bytes:
        """The 32-byte shared key, once the verifier's confirmation verified.

        Raises:
            LocalProtocolError: ``finish()`` has not succeeded.
        """
        if self._state is not ProverState.DONE:
            raise LocalProtocolError("SPAKE2+ K_shared is not available before confirmation")
        return self._computed().K_shared


class Verifier(_Party):
    """The SPAKE2+ verifier: the side that holds only the record ``(w0, L)``.

    One object runs one exchange: ``respond()``, then ``finish()``; one
    object is one online guess for the peer.  After a failure the object is
    spent and every further call raises ``LocalProtocolError``.  The
    intermediates are readable once computed, for tests (see ``Prover``).

    Args:
        context: the SPAKE2+ ``Context`` string, bound into ``TT``.
        id_prover: the prover's identity (may be empty).
        id_verifier: the verifier's identity (may be empty).
        w0: the first scalar from ``derive_w0_w1``.
        L: the record ``w1*G`` from ``compute_L``, 65 bytes.
        y: a fixed ephemeral scalar in ``[1, n-1]``, for test vectors only;
            by default a fresh one is drawn from the OS CSPRNG.

    Raises:
        ValueError: ``w0`` or ``y`` is not in ``[1, n-1]``, or ``L`` is not a
            65-byte uncompressed P-256 point.
    """

    __slots__ = ("_L", "_confirm_p", "_state", "_y")

    def __init__(
        self,
        context: bytes,
        id_prover: bytes,
        id_verifier: bytes,
        w0: int,
        L: bytes,
        *,
        y: int | None = None,
    ) -> None:
        super().__init__(context, id_prover, id_verifier, w0)
        try:
            self._L = _decode_point(L, "L")
        except HandshakeFailed as exc:
            raise ValueError("L must be a 65-byte uncompressed P-256 point") from exc
        self._y = _random_scalar() if y is None else _check_scalar(y, "y")
        self._confirm_p = b""
        self._state = VerifierState.EXPECT_SHARE_P

    def __repr__(self) -> str:
        return f"Verifier(state={self._state.name})"

    @property
    def state(self) -> VerifierState:
        """The current state."""
        return self._state

    def _expect(self, state: VerifierState, action: str) -> None:
        if self._state is not state:
            raise LocalProtocolError(
                f"SPAKE2+ verifier cannot {action} in state {self._state.name}"
            )

    def respond(self, share_p: bytes) -> tuple[bytes, bytes]:
        """Process ``shareP``; return ``(shareV, confirmV)`` (RFC 9383 §3.3-§3.4).

        Computes ``shareV = y*G + w0*N``, ``Z = y*(shareP - w0*M)``,
        ``V = y*L``, the transcript and the key schedule.

        Args:
            share_p: the prover's share, 65 bytes.

        Returns:
            ``shareV`` (65 bytes) and ``confirmV = HMAC(K_confirmV, shareP)``
            (32 bytes), to send to the prover.

        Raises:
            HandshakeFailed: ``share_p`` is not a valid point or equals ``w0*M``.
            LocalProtocolError: called twice, or after ``finish()``.
        """
        self._expect(VerifierState.EXPECT_SHARE_P, "respond")
        self._state = VerifierState.FAILED  # until proven otherwise
        x_point = _decode_point(share_p, "shareP")
        # The identity would need y = -w0*log_G(N) mod n: nobody knows that log.
        share_v = _encode_point(_G * self._y + _N_POINT * self._w0)
        unmasked = x_point + (-_M_POINT * self._w0)
        keys = self._derive(share_p, share_v, unmasked * self._y, self._L * self._y)
        self._confirm_p = hmac_sha256(keys.K_confirmP, share_v)
        self._state = VerifierState.EXPECT_CONFIRM_P
        return share_v, hmac_sha256(keys.K_confirmV, share_p)

    def finish(self, confirm_p: bytes) -> None:
        """Check the prover's ``confirmP`` in constant time (RFC 9383 §3.4).

        Args:
            confirm_p: the prover's confirmation tag, 32 bytes.

        Raises:
            HandshakeFailed: ``confirm_p`` does not verify (a wrong code, or a
                tampered message).
            LocalProtocolError: ``respond()`` was not called first, or the
                exchange is already over.
        """
        self._expect(VerifierState.EXPECT_CONFIRM_P, "finish")
        if not hmac.compare_digest(self._confirm_p, confirm_p):
            self._state = VerifierState.FAILED
            raise HandshakeFailed("SPAKE2+ prover confirmation failed")
        self._state = VerifierState.DONE

    @property
    def K_shared(self) -> bytes:
        """The 32-byte shared key, once the prover's confirmation verified.

        Raises:
            LocalProtocolError: ``finish()`` has not succeeded.
        """
        if self._state is not VerifierState.DONE:
            raise LocalProtocolError("SPAKE2+ K_shared is not available before confirmation")
        return self._computed().K_shared
