"""Hashes, HMAC and key derivation.

Two families live here:

* the Noise hash functions (rev 34 §4.3, §12.5-12.8) and the Noise ``HKDF``
  built on their HMAC, used by ``pstp.protocol.noise``;
* HKDF-SHA-256 (RFC 5869) and HMAC-SHA-256 for the rest of PSTP (key
  confirmation, key ids, pairing).

All primitives come from pyca/cryptography; MACs are compared with
``hmac.compare_digest``.
"""

from __future__ import annotations

import hmac as _stdlib_hmac
import secrets
from typing import Final, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

__all__ = [
    "HashName",
    "digest",
    "hash_len",
    "hkdf_expand_sha256",
    "hkdf_sha256",
    "hmac_digest",
    "hmac_sha256",
    "noise_hkdf",
    "random_bytes",
    "verify_hmac_sha256",
]

HashName = Literal["SHA256", "SHA512", "BLAKE2s", "BLAKE2b"]

# pyca algorithm objects are immutable descriptors, safe to share.
_ALGORITHMS: Final[dict[str, hashes.HashAlgorithm]] = {
    "SHA256": hashes.SHA256(),
    "SHA512": hashes.SHA512(),
    "BLAKE2s": hashes.BLAKE2s(32),
    "BLAKE2b": hashes.BLAKE2b(64),
}
_SHA256: Final = _ALGORITHMS["SHA256"]


def _algorithm(name: HashName) -> hashes.HashAlgorithm:
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unsupported hash {name!r}") from None


def hash_len(name: HashName) -> int:
    """Return ``HASHLEN`` for a Noise hash name.

    Args:
        name: one of ``"SHA256"``, ``"SHA512"``, ``"BLAKE2s"``, ``"BLAKE2b"``.

    Returns:
        The digest size in bytes (32 or 64).

    Raises:
        ValueError: the hash is unknown.
    """
    return _algorithm(name).digest_size


def digest(name: HashName, data: bytes) -> bytes:
    """Hash ``data`` with the named hash, Noise ``HASH(data)``.

    Args:
        name: the hash name.
        data: the input.

    Returns:
        The full-length digest.

    Raises:
        ValueError: the hash is unknown.
    """
    h = hashes.Hash(_algorithm(name))
    h.update(data)
    return h.finalize()


def hmac_digest(name: HashName, key: bytes, data: bytes) -> bytes:
    """Compute ``HMAC-HASH(key, data)`` (RFC 2104) with the named hash.

    Args:
        name: the hash name.
        key: the HMAC key (any length).
        data: the message.

    Returns:
        The full-length tag.

    Raises:
        ValueError: the hash is unknown.
    """
    mac = _hmac.HMAC(key, _algorithm(name))
    mac.update(data)
    return mac.finalize()


def noise_hkdf(
    name: HashName, chaining_key: bytes, ikm: bytes, num_outputs: Literal[2, 3]
) -> tuple[bytes, ...]:
    """Noise ``HKDF(chaining_key, input_key_material, num_outputs)`` (rev 34 §4.3).

    Args:
        name: the hash name.
        chaining_key: the ``HASHLEN``-byte chaining key (used as HMAC key).
        ikm: the input key material: empty, 32 bytes, or ``DHLEN`` bytes.
        num_outputs: 2 or 3.

    Returns:
        ``num_outputs`` values of ``HASHLEN`` bytes each.

    Raises:
        ValueError: the hash is unknown or ``num_outputs`` is not 2 or 3.
    """
    if num_outputs not in (2, 3):
        raise ValueError(f"num_outputs must be 2 or 3, got {num_outputs}")
    algorithm = _algorithm(name)

    def mac(key: bytes, data: bytes) -> bytes:
        h = _hmac.HMAC(key, algorithm)
        h.update(data)
        return h.finalize()

    temp_key = mac(chaining_key, ikm)
    output1 = mac(temp_key, b"\x01")
    output2 = mac(temp_key, output1 + b"\x02")
    if num_outputs == 2:
        return output1, output2
    output3 = mac(temp_key, output2 + b"\x03")
    return output1, output2, output3


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 extract-then-expand (RFC 5869).

    Args:
        ikm: the input keying material.
        salt: the salt; ``None`` means 32 zero bytes (RFC 5869 §2.2).
        info: the context string.
        length: output length, ``1 <= length <= 255 * 32``.

    Returns:
        ``length`` bytes of output keying material.

    Raises:
        ValueError: ``length`` is out of range.
    """
    return HKDF(algorithm=_SHA256, length=length, salt=salt, info=info).derive(ikm)


def hkdf_expand_sha256(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 expand step only (RFC 5869 §2.3).

    Args:
        prk: a pseudorandom key of at least 32 bytes.
        info: the context string.
        length: output length, ``1 <= length <= 255 * 32``.

    Returns:
        ``length`` bytes of output keying material.

    Raises:
        ValueError: ``length`` is out of range.
    """
    return HKDFExpand(algorithm=_SHA256, length=length, info=info).derive(prk)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """Compute HMAC-SHA-256.

    Args:
        key: the HMAC key (any length).
        data: the message.

    Returns:
        The 32-byte tag.
    """
    mac = _hmac.HMAC(key, _SHA256)
    mac.update(data)
    return mac.finalize()


def verify_hmac_sha256(key: bytes, data: bytes, tag: bytes) -> bool:
    """Check an HMAC-SHA-256 tag in constant time.

    Args:
        key: the HMAC key.
        data: the message.
        tag: the full 32-byte tag to check; any other length fails.

    Returns:
        ``True`` if ``tag`` is the HMAC of ``data`` under ``key``.
    """
    return _stdlib_hmac.compare_digest(hmac_sha256(key, data), tag)


def random_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the operating system's CSPRNG.

    Args:
        n: how many bytes, ``n >= 0``.

    Returns:
        ``n`` random bytes.
    """
    return secrets.token_bytes(n)
