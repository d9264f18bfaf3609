"""Tests for pstp.crypto.kdf: Wycheproof HKDF/HMAC, Noise HKDF, hashes."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from pstp.crypto.kdf import (
    HashName,
    digest,
    hash_len,
    hkdf_expand_sha256,
    hkdf_sha256,
    hmac_digest,
    hmac_sha256,
    noise_hkdf,
    random_bytes,
    verify_hmac_sha256,
)
from tests.helpers import EXTERNAL_VECTORS

VECTORS = EXTERNAL_VECTORS / "wycheproof"


def _tests(filename: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    data = json.loads((VECTORS / filename).read_text())
    return [(group, test) for group in data["testGroups"] for test in group["tests"]]


HKDF_CASES = [
    pytest.param(test, id=str(test["tcId"])) for _, test in _tests("hkdf_sha256_test.json")
]
HMAC_CASES = [
    pytest.param(test, id=str(test["tcId"]))
    for group, test in _tests("hmac_sha256_test.json")
    if group["tagSize"] == 256  # full-length tags only: we never truncate
]
# Independent oracles from the standard library, for cross-checking pyca.
HASHLIB: dict[str, Callable[..., Any]] = {
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
    "BLAKE2s": hashlib.blake2s,
    "BLAKE2b": hashlib.blake2b,
}
HASHES: list[HashName] = ["SHA256", "SHA512", "BLAKE2s", "BLAKE2b"]


@pytest.mark.parametrize("test", HKDF_CASES)
def test_wycheproof_hkdf(test: dict[str, Any]) -> None:
    """hkdf_sha256 matches Wycheproof; oversized outputs raise ValueError."""
    ikm, salt, info = (bytes.fromhex(test[k]) for k in ("ikm", "salt", "info"))
    if test["result"] == "valid":
        okm = bytes.fromhex(test["okm"])
        assert hkdf_sha256(ikm, salt=salt, info=info, length=test["size"]) == okm
        prk = hmac_sha256(salt, ikm)
        assert hkdf_expand_sha256(prk, info, test["size"]) == okm
    else:
        assert test["result"] == "invalid"
        with pytest.raises(ValueError):
            hkdf_sha256(ikm, salt=salt, info=info, length=test["size"])


def test_hkdf_none_salt_is_zero_salt() -> None:
    """A salt of None means 32 zero bytes (RFC 5869 §2.2)."""
    assert hkdf_sha256(b"ikm", salt=None, info=b"i", length=40) == hkdf_sha256(
        b"ikm", salt=bytes(32), info=b"i", length=40
    )
    with pytest.raises(ValueError):
        hkdf_expand_sha256(bytes(32), b"", 255 * 32 + 1)


@pytest.mark.parametrize("test", HMAC_CASES)
def test_wycheproof_hmac(test: dict[str, Any]) -> None:
    """hmac_sha256 and verify_hmac_sha256 agree with Wycheproof full-length tags."""
    key, msg, tag = (bytes.fromhex(test[k]) for k in ("key", "msg", "tag"))
    if test["result"] == "valid":
        assert hmac_sha256(key, msg) == tag
        assert verify_hmac_sha256(key, msg, tag)
    else:
        assert test["result"] == "invalid"
        assert not verify_hmac_sha256(key, msg, tag)


def test_verify_hmac_rejects_truncated_tag() -> None:
    """A correct but truncated tag does not verify."""
    tag = hmac_sha256(b"key", b"data")
    assert verify_hmac_sha256(b"key", b"data", tag)
    assert not verify_hmac_sha256(b"key", b"data", tag[:16])
    assert not verify_hmac_sha256(b"key", b"data", b"")


@pytest.mark.parametrize("name", HASHES)
def test_hashes_match_stdlib(name: HashName) -> None:
    """digest, hmac_digest and hash_len agree with hashlib/hmac for every Noise hash."""
    data = bytes(range(200))
    assert digest(name, data) == HASHLIB[name](data).digest()
    assert hmac_digest(name, b"k" * 70, data) == hmac.new(b"k" * 70, data, HASHLIB[name]).digest()
    assert hash_len(name) == HASHLIB[name]().digest_size


@pytest.mark.parametrize("name", HASHES)
def test_noise_hkdf(name: HashName) -> None:
    """noise_hkdf follows Noise §4.3 and its 2-output form is a prefix of the 3-output form."""
    ck, ikm = bytes(range(hash_len(name))), b"input key material"

    def mac(key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, HASHLIB[name]).digest()

    temp = mac(ck, ikm)
    out1 = mac(temp, b"\x01")
    out2 = mac(temp, out1 + b"\x02")
    out3 = mac(temp, out2 + b"\x03")
    assert noise_hkdf(name, ck, ikm, 2) == (out1, out2)
    assert noise_hkdf(name, ck, ikm, 3) == (out1, out2, out3)
    assert noise_hkdf(name, ck, b"", 2) != (out1, out2)


def test_bad_arguments() -> None:
    """Unknown hashes and output counts other than 2 or 3 raise ValueError."""
    with pytest.raises(ValueError):
        hash_len("MD5")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        digest("SHA1", b"")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        noise_hkdf("SHA256", bytes(32), b"", 4)  # type: ignore[arg-type]


def test_random_bytes() -> None:
    """random_bytes returns the requested length and does not repeat."""
    assert random_bytes(0) == b""
    a, b = random_bytes(32), random_bytes(32)
    assert len(a) == len(b) == 32
    assert a != b
