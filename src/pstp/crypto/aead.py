"""AEAD ciphers with Noise nonce encoding: AES-256-GCM and ChaCha20-Poly1305.

``Aead`` binds one key to one pyca cipher object, built once, so the record
layer pays only for a nonce pack and the pyca call per record.  Nonces are
64-bit counters encoded as the Noise specification (rev 34, §12) requires:
four zero bytes, then the counter big-endian for AESGCM and little-endian for
ChaChaPoly.

``seal_raw`` and ``open_raw`` take an explicit 12-byte nonce; they exist for
known-answer tests and are not meant for the record path.
"""

from __future__ import annotations

import struct
from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from pstp.exceptions import DecryptError

__all__ = [
    "KEY_LEN",
    "MAX_NONCE",
    "NONCE_LEN",
    "TAG_LEN",
    "Aead",
    "CipherName",
    "open_raw",
    "seal_raw",
]

CipherName = Literal["AESGCM", "ChaChaPoly"]

#: Both ciphers take 256-bit keys (Noise rev 34 §5: cipher keys are 32 bytes).
KEY_LEN: Final = 32
#: Both ciphers take 96-bit nonces.
NONCE_LEN: Final = 12
#: Both ciphers append a 128-bit tag.
TAG_LEN: Final = 16
#: The largest 64-bit counter; Noise reserves it for REKEY (rev 34 §11.3).
MAX_NONCE: Final = 2**64 - 1

# Noise rev 34 §12.3 (AESGCM) and §12.4 (ChaChaPoly): 32 zero bits, then the
# counter.  Precompiled so packing a nonce is one C call.
_NONCE_STRUCTS: Final = {
    "AESGCM": struct.Struct(">4xQ"),
    "ChaChaPoly": struct.Struct("<4xQ"),
}

_ZERO_KEY: Final = bytes(KEY_LEN)


def _new_cipher(cipher: CipherName, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if len(key) != KEY_LEN:
        raise ValueError(f"AEAD key must be {KEY_LEN} bytes, got {len(key)}")
    if cipher == "AESGCM":
        return AESGCM(key)
    if cipher == "ChaChaPoly":
        return ChaCha20Poly1305(key)
    raise ValueError(f"unsupported cipher {cipher!r}")


class Aead:
    """One AEAD key with Noise counter nonces.

    The pyca cipher object is created once here, so ``seal`` and ``open``
    only pack the nonce and call into OpenSSL.

    Args:
        cipher: ``"AESGCM"`` (AES-256-GCM) or ``"ChaChaPoly"``
            (ChaCha20-Poly1305).
        key: the 32-byte key.

    Raises:
        ValueError: the key is not 32 bytes or the cipher is unknown.
    """

    __slots__ = ("_aead", "_pack", "cipher")

    def __init__(self, cipher: CipherName, key: bytes) -> None:
        self._aead = _new_cipher(cipher, key)
        self._pack = _NONCE_STRUCTS[cipher].pack
        #: The cipher name this key is used with.
        self.cipher: CipherName = cipher

    def __repr__(self) -> str:
        return f"Aead({self.cipher!r}, <key>)"

    def seal(self, n: int, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` under counter nonce ``n``.

        Args:
            n: the nonce counter, ``0 <= n <= 2**64 - 1``.  The caller must
                never reuse a value with the same key.
            ad: associated data, authenticated but not encrypted.
            plaintext: the data to encrypt.

        Returns:
            The ciphertext followed by the 16-byte tag.

        Raises:
            ValueError: ``n`` does not fit in 64 bits.
        """
        try:
            nonce = self._pack(n)
        except struct.error as exc:
            raise ValueError(f"nonce counter out of range: {n}") from exc
        return self._aead.encrypt(nonce, plaintext, ad)

    def open(self, n: int, ad: bytes, ciphertext: bytes | memoryview) -> bytes:
        """Verify and decrypt ``ciphertext`` sealed under counter nonce ``n``.

        Args:
            n: the nonce counter the sender used.
            ad: the associated data the sender used.
            ciphertext: ciphertext followed by the 16-byte tag.

        Returns:
            The plaintext.

        Raises:
            DecryptError: the tag did not verify (or the input is shorter
                than a tag).
            ValueError: ``n`` does not fit in 64 bits.
        """
        try:
            nonce = self._pack(n)
        except struct.error as exc:
            raise ValueError(f"nonce counter out of range: {n}") from exc
        try:
            return self._aead.decrypt(nonce, ciphertext, ad)
        except InvalidTag as exc:
            raise DecryptError from exc

    def rekey(self) -> bytes:
        """Derive the next key, Noise ``REKEY(k)`` (rev 34 §4.2).

        This object is not changed; build a new ``Aead`` from the result.

        Returns:
            The first 32 bytes of ``ENCRYPT(k, 2**64 - 1, b"", 32 zero bytes)``.
        """
        return self._aead.encrypt(self._pack(MAX_NONCE), _ZERO_KEY, b"")[:KEY_LEN]


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes, got {len(nonce)}")


def seal_raw(cipher: CipherName, key: bytes, nonce: bytes, ad: bytes, plaintext: bytes) -> bytes:
    """Encrypt with an explicit 12-byte nonce.

    Args:
        cipher: ``"AESGCM"`` or ``"ChaChaPoly"``.
        key: the 32-byte key.
        nonce: the 12-byte nonce.
        ad: associated data.
        plaintext: the data to encrypt.

    Returns:
        The ciphertext followed by the 16-byte tag.

    Raises:
        ValueError: the key or nonce has the wrong length, or the cipher is
            unknown.
    """
    _check_nonce(nonce)
    return _new_cipher(cipher, key).encrypt(nonce, plaintext, ad)


def open_raw(cipher: CipherName, key: bytes, nonce: bytes, ad: bytes, ciphertext: bytes) -> bytes:
    """Decrypt with an explicit 12-byte nonce.

    Args:
        cipher: ``"AESGCM"`` or ``"ChaChaPoly"``.
        key: the 32-byte key.
        nonce: the 12-byte nonce.
        ad: associated data.
        ciphertext: ciphertext followed by the 16-byte tag.

    Returns:
        The plaintext.

    Raises:
        DecryptError: the tag did not verify.
        ValueError: the key or nonce has the wrong length, or the cipher is
            unknown.
    """
    _check_nonce(nonce)
    aead = _new_cipher(cipher, key)
    try:
        return aead.decrypt(nonce, ciphertext, ad)
    except InvalidTag as exc:
        raise DecryptError from exc
