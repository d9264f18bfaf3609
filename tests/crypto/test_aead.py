"""Tests for pstp.crypto.aead: Wycheproof vectors, Noise nonces, REKEY."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from pstp.crypto.aead import MAX_NONCE, Aead, CipherName, open_raw, seal_raw
from pstp.exceptions import DecryptError
from tests.helpers import EXTERNAL_VECTORS

VECTORS = EXTERNAL_VECTORS / "wycheproof"


def _cases(filename: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    data = json.loads((VECTORS / filename).read_text())
    return [(group, test) for group in data["testGroups"] for test in group["tests"]]


def _ours(group: dict[str, Any]) -> bool:
    return bool(group["keySize"] == 256 and group["ivSize"] == 96 and group["tagSize"] == 128)


CASES: dict[CipherName, list[tuple[dict[str, Any], dict[str, Any]]]] = {
    "AESGCM": _cases("aes_gcm_test.json"),
    "ChaChaPoly": _cases("chacha20_poly1305_test.json"),
}


def _our_cases() -> list[tuple[CipherName, dict[str, Any]]]:
    return [(c, t) for c, cases in CASES.items() for g, t in cases if _ours(g)]


WYCHEPROOF = [pytest.param(c, t, id=f"{c}-{t['tcId']}") for c, t in _our_cases()]
BAD_SIZES = [
    pytest.param(c, g, t, id=f"{c}-{t['tcId']}")
    for c, cases in CASES.items()
    for g, t in cases
    if not _ours(g)
]
KEY = bytes(range(32))


@pytest.mark.parametrize(("cipher", "test"), WYCHEPROOF)
def test_wycheproof(cipher: CipherName, test: dict[str, Any]) -> None:
    """seal_raw/open_raw match every 256-bit-key, 96-bit-nonce Wycheproof case."""
    key, iv, aad, msg = (bytes.fromhex(test[k]) for k in ("key", "iv", "aad", "msg"))
    sealed = bytes.fromhex(test["ct"] + test["tag"])
    if test["result"] == "valid":
        assert seal_raw(cipher, key, iv, aad, msg) == sealed
        assert open_raw(cipher, key, iv, aad, sealed) == msg
    else:
        assert test["result"] == "invalid"
        with pytest.raises(DecryptError):
            open_raw(cipher, key, iv, aad, sealed)


@pytest.mark.parametrize(("cipher", "group", "test"), BAD_SIZES)
def test_wycheproof_other_sizes_rejected(
    cipher: CipherName, group: dict[str, Any], test: dict[str, Any]
) -> None:
    """Keys other than 32 bytes and nonces other than 12 bytes raise ValueError."""
    key, iv, aad, msg = (bytes.fromhex(test[k]) for k in ("key", "iv", "aad", "msg"))
    assert len(key) != 32 or len(iv) != 12
    sealed = bytes.fromhex(test["ct"] + test["tag"])
    with pytest.raises(ValueError):
        seal_raw(cipher, key, iv, aad, msg)
    with pytest.raises(ValueError):
        open_raw(cipher, key, iv, aad, sealed)


def test_wycheproof_files_cover_our_parameters() -> None:
    """Both Wycheproof files contribute valid and invalid cases for our sizes."""
    results = {(cipher, test["result"]) for cipher, test in _our_cases()}
    assert results == {
        ("AESGCM", "valid"),
        ("AESGCM", "invalid"),
        ("ChaChaPoly", "valid"),
        ("ChaChaPoly", "invalid"),
    }


@pytest.mark.parametrize(("cipher", "byteorder"), [("AESGCM", "big"), ("ChaChaPoly", "little")])
@pytest.mark.parametrize("n", [0, 1, 0x0102030405060708, MAX_NONCE])
def test_nonce_encoding(cipher: CipherName, byteorder: Literal["big", "little"], n: int) -> None:
    """Aead nonces are 4 zero bytes then the counter, big-endian for AESGCM, little for ChaCha."""
    nonce = bytes(4) + n.to_bytes(8, byteorder)
    aead = Aead(cipher, KEY)
    sealed = aead.seal(n, b"ad", b"hello")
    assert sealed == seal_raw(cipher, KEY, nonce, b"ad", b"hello")
    assert aead.open(n, b"ad", sealed) == b"hello"
    assert aead.cipher == cipher


@pytest.mark.parametrize("cipher", ["AESGCM", "ChaChaPoly"])
def test_open_rejects_wrong_nonce_ad_and_tampering(cipher: CipherName) -> None:
    """open raises DecryptError for a wrong nonce, wrong ad, flipped bit or short input."""
    aead = Aead(cipher, KEY)
    sealed = aead.seal(7, b"ad", b"payload")
    assert len(sealed) == len(b"payload") + 16
    tampered = bytes([sealed[0] ^ 1]) + sealed[1:]
    for n, ad, data in [(8, b"ad", sealed), (7, b"AD", sealed), (7, b"ad", tampered)]:
        with pytest.raises(DecryptError) as info:
            aead.open(n, ad, data)
        assert str(info.value) == ""
    with pytest.raises(DecryptError):
        aead.open(7, b"ad", sealed[:15])


@pytest.mark.parametrize("cipher", ["AESGCM", "ChaChaPoly"])
def test_rekey(cipher: CipherName) -> None:
    """rekey returns ENCRYPT(k, 2**64-1, b'', zeros)[:32] and leaves the object unchanged."""
    aead = Aead(cipher, KEY)
    before = aead.seal(0, b"", b"x")
    encoded = (MAX_NONCE).to_bytes(8, "big" if cipher == "AESGCM" else "little")
    expected = seal_raw(cipher, KEY, bytes(4) + encoded, b"", bytes(32))[:32]
    new_key = aead.rekey()
    assert new_key == expected
    assert len(new_key) == 32
    assert aead.seal(0, b"", b"x") == before
    assert Aead(cipher, new_key).seal(0, b"", b"x") != before


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(24), bytes(31), bytes(33)])
def test_key_length_enforced(key: bytes) -> None:
    """Aead refuses keys that are not 32 bytes."""
    with pytest.raises(ValueError):
        Aead("AESGCM", key)
    with pytest.raises(ValueError):
        Aead("ChaChaPoly", key)


def test_unknown_cipher_and_bad_counter() -> None:
    """Unknown ciphers and counters outside 64 bits raise ValueError."""
    with pytest.raises(ValueError):
        Aead("AES128", KEY)  # type: ignore[arg-type]
    aead = Aead("AESGCM", KEY)
    for n in (-1, 2**64):
        with pytest.raises(ValueError):
            aead.seal(n, b"", b"")
        with pytest.raises(ValueError):
            aead.open(n, b"", bytes(16))
    assert KEY.hex() not in repr(aead)
