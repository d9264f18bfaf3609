"""Diffie-Hellman functions for Noise: Curve25519, Curve448 and NIST P-256.

Every function has the same shape (``DHFunction``): it makes key pairs,
rebuilds them from private bytes, and computes a shared secret from a local
``KeyPair`` and the peer's public key *as bytes*.  Peer keys are decoded and
validated inside ``dh``, so a party that never runs a DH never pays for
point decoding (docs/protocol.md §5.1, Appendix A: the responder decrypts message 1 before
any EC work).

P-256 is not a standard Noise DH (rev 34 §12 names only 25519 and 448); PSTP
defines it as: public keys are 65-byte SEC1 uncompressed points, and
``DH()`` returns the 32-byte big-endian x-coordinate of the shared point.
Compressed points and the point at infinity are not valid encodings.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Final, TypeAlias

import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519

from pstp.exceptions import HandshakeFailed, LocalProtocolError

__all__ = [
    "P256",
    "X448",
    "X25519",
    "DHFunction",
    "KeyPair",
    "PrivateKey",
    "get_dh",
]

PrivateKey: TypeAlias = x25519.X25519PrivateKey | x448.X448PrivateKey | ec.EllipticCurvePrivateKey

_SECP256R1: Final = ec.SECP256R1()
_ECDH: Final = ec.ECDH()
# The order n of the P-256 group (SEC 2 §2.4.2); private scalars lie in [1, n-1].
_P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class KeyPair(msgspec.Struct, frozen=True):
    """A private key and its encoded public key.

    Attributes:
        private: the pyca private key object.
        public: the public key in the DH function's wire encoding.
    """

    private: PrivateKey
    public: bytes

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()})"

    def private_bytes(self) -> bytes:
        """Return the private key as raw bytes (for tests and key storage).

        Returns:
            32 or 56 raw bytes for X25519/X448; the 32-byte big-endian scalar
            for P-256.
        """
        key = self.private
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.private_numbers().private_value.to_bytes(32, "big")
        return key.private_bytes_raw()


class DHFunction(abc.ABC):
    """A Noise DH function (rev 34 §4.1).

    Attributes:
        name: the name used in Noise protocol names (``"25519"``, ...).
        dhlen: ``DHLEN``, the length of a shared secret.
        pubkey_len: the length of an encoded public key.  Equal to ``dhlen``
            for 25519 and 448; 65 for P-256.
    """

    name: ClassVar[str]
    dhlen: ClassVar[int]
    pubkey_len: ClassVar[int]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @abc.abstractmethod
    def generate(self) -> KeyPair:
        """Make a fresh key pair from the OS CSPRNG.

        Returns:
            The new key pair.
        """

    @abc.abstractmethod
    def from_private(self, private: bytes) -> KeyPair:
        """Rebuild a key pair from its private key bytes.

        Args:
            private: the raw private key (see ``KeyPair.private_bytes``).

        Returns:
            The key pair.

        Raises:
            ValueError: the bytes are not a valid private key.
        """

    @abc.abstractmethod
    def dh(self, keypair: KeyPair, public: bytes) -> bytes:
        """Compute ``DH(keypair, public)``.

        Args:
            keypair: the local key pair, made by this DH function.
            public: the peer's encoded public key; validated here.

        Returns:
            ``dhlen`` bytes of shared secret.

        Raises:
            HandshakeFailed: ``public`` is not a valid public key, or the
                result is degenerate (all zero for 25519/448).
            LocalProtocolError: ``keypair`` belongs to another DH function.
        """

    @abc.abstractmethod
    def validate_public(self, public: bytes) -> None:
        """Check that ``public`` is an acceptable public key encoding.

        Args:
            public: the encoded public key.

        Raises:
            HandshakeFailed: it is not.
        """


def _wrong_keypair(dh: DHFunction) -> LocalProtocolError:
    return LocalProtocolError(f"key pair does not belong to DH function {dh.name}")


class X25519(DHFunction):
    """Curve25519 (RFC 7748), Noise name ``"25519"``."""

    name = "25519"
    dhlen = 32
    pubkey_len = 32

    def generate(self) -> KeyPair:
        """Make a fresh key pair; see ``DHFunction.generate``."""
        key = x25519.X25519PrivateKey.generate()
        return KeyPair(key, key.public_key().public_bytes_raw())

    def from_private(self, private: bytes) -> KeyPair:
        """Rebuild a key pair; see ``DHFunction.from_private``.

        Raises:
            ValueError: the bytes are not a valid private key.
        """
        if len(private) != 32:
            raise ValueError("X25519 private key must be 32 bytes")
        key = x25519.X25519PrivateKey.from_private_bytes(private)
        return KeyPair(key, key.public_key().public_bytes_raw())

    def validate_public(self, public: bytes) -> None:
        """Check a public key encoding; see ``DHFunction.validate_public``.

        Raises:
            HandshakeFailed: it is not acceptable.
        """
        # Every 32-byte string is a usable u-coordinate (RFC 7748 §5);
        # low-order points are caught by the all-zero check in dh().
        if len(public) != 32:
            raise HandshakeFailed("X25519 public key must be 32 bytes")

    def dh(self, keypair: KeyPair, public: bytes) -> bytes:
        """Compute a shared secret; see ``DHFunction.dh``.

        Raises:
            HandshakeFailed: the public key is invalid or the result degenerate.
            LocalProtocolError: ``keypair`` belongs to another DH function.
        """
        key = keypair.private
        if not isinstance(key, x25519.X25519PrivateKey):
            raise _wrong_keypair(self)
        self.validate_public(public)
        try:
            return key.exchange(x25519.X25519PublicKey.from_public_bytes(public))
        except ValueError as exc:
            # pyca refuses an all-zero output (RFC 7748 §6.1: low-order point).
            raise HandshakeFailed("X25519 produced an all-zero shared secret") from exc


class X448(DHFunction):
    """Curve448 (RFC 7748), Noise name ``"448"``."""

    name = "448"
    dhlen = 56
    pubkey_len = 56

    def generate(self) -> KeyPair:
        """Make a fresh key pair; see ``DHFunction.generate``."""
        key = x448.X448PrivateKey.generate()
        return KeyPair(key, key.public_key().public_bytes_raw())

    def from_private(self, private: bytes) -> KeyPair:
        """Rebuild a key pair; see ``DHFunction.from_private``.

        Raises:
            ValueError: the bytes are not a valid private key.
        """
        if len(private) != 56:
            raise ValueError("X448 private key must be 56 bytes")
        key = x448.X448PrivateKey.from_private_bytes(private)
        return KeyPair(key, key.public_key().public_bytes_raw())

    def validate_public(self, public: bytes) -> None:
        """Check a public key encoding; see ``DHFunction.validate_public``.

        Raises:
            HandshakeFailed: it is not acceptable.
        """
        if len(public) != 56:
            raise HandshakeFailed("X448 public key must be 56 bytes")

    def dh(self, keypair: KeyPair, public: bytes) -> bytes:
        """Compute a shared secret; see ``DHFunction.dh``.

        Raises:
            HandshakeFailed: the public key is invalid or the result degenerate.
            LocalProtocolError: ``keypair`` belongs to another DH function.
        """
        key = keypair.private
        if not isinstance(key, x448.X448PrivateKey):
            raise _wrong_keypair(self)
        self.validate_public(public)
        try:
            return key.exchange(x448.X448PublicKey.from_public_bytes(public))
        except ValueError as exc:
            raise HandshakeFailed("X448 produced an all-zero shared secret") from exc


class P256(DHFunction):
    """NIST P-256 ECDH with SEC1 uncompressed points, Noise name ``"P256"``.

    Public keys are exactly 65 bytes, ``0x04 || X || Y``; they are checked to
    be on the curve when decoded.  The shared secret is the 32-byte
    x-coordinate of the product point (SEC1 §3.3.1).
    """

    name = "P256"
    dhlen = 32
    pubkey_len = 65

    @staticmethod
    def _keypair(key: ec.EllipticCurvePrivateKey) -> KeyPair:
        # SEC1 uncompressed, built from the coordinates: the serialization
        # module (and the SSH code it drags in) costs ~6 ms of start-up.
        pub = key.public_key().public_numbers()
        return KeyPair(key, b"\x04" + pub.x.to_bytes(32, "big") + pub.y.to_bytes(32, "big"))

    def generate(self) -> KeyPair:
        """Make a fresh key pair; see ``DHFunction.generate``."""
        return self._keypair(ec.generate_private_key(_SECP256R1))

    def from_private(self, private: bytes) -> KeyPair:
        """Rebuild a key pair; see ``DHFunction.from_private``.

        Raises:
            ValueError: the bytes are not a valid private key.
        """
        if len(private) != 32:
            raise ValueError("P-256 private key must be a 32-byte scalar")
        scalar = int.from_bytes(private, "big")
        if not 0 < scalar < _P256_ORDER:
            raise ValueError("P-256 private scalar out of range")
        return self._keypair(ec.derive_private_key(scalar, _SECP256R1))

    def _decode(self, public: bytes) -> ec.EllipticCurvePublicKey:
        # Only the 65-byte uncompressed form is on our wire: this also rules
        # out the 1-byte encoding of the point at infinity.
        if len(public) != 65 or public[0] != 0x04:
            raise HandshakeFailed("P-256 public key must be a 65-byte uncompressed point")
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(_SECP256R1, public)
        except ValueError as exc:
            raise HandshakeFailed("P-256 public key is not a point on the curve") from exc

    def validate_public(self, public: bytes) -> None:
        """Check a public key encoding; see ``DHFunction.validate_public``.

        Raises:
            HandshakeFailed: it is not acceptable.
        """
        self._decode(public)

    def dh(self, keypair: KeyPair, public: bytes) -> bytes:
        """Compute a shared secret; see ``DHFunction.dh``.

        Raises:
            HandshakeFailed: the public key is invalid or the result degenerate.
            LocalProtocolError: ``keypair`` belongs to another DH function.
        """
        key = keypair.private
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise _wrong_keypair(self)
        peer = self._decode(public)
        try:
            return key.exchange(_ECDH, peer)
        # Unreachable today: the point was decoded on P-256 (same curve as our
        # key), and P-256 has prime order, so a scalar in [1, n-1] times a
        # finite point is never the point at infinity.  Kept so that a future
        # pyca refusal still surfaces as a handshake failure, not a crash.
        except ValueError as exc:  # pragma: no cover
            raise HandshakeFailed("P-256 key exchange failed") from exc


_DH_FUNCTIONS: Final[dict[str, DHFunction]] = {
    "25519": X25519(),
    "448": X448(),
    "P256": P256(),
}


def get_dh(name: str) -> DHFunction:
    """Return the DH function with the given Noise name.

    Args:
        name: ``"25519"``, ``"448"`` or ``"P256"``.

    Returns:
        A shared, stateless ``DHFunction`` instance.

    Raises:
        ValueError: the name is unknown.
    """
    try:
        return _DH_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unsupported DH function {name!r}") from None
