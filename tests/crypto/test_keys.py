"""Tests for pstp.crypto.keys: Wycheproof ECDH P-256 and X25519, DH interface."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pstp.crypto.keys import P256, X448, X25519, DHFunction, get_dh
from pstp.exceptions import HandshakeFailed, LocalProtocolError
from tests.helpers import EXTERNAL_VECTORS

VECTORS = EXTERNAL_VECTORS / "wycheproof"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _tests(filename: str) -> list[dict[str, Any]]:
    data = json.loads((VECTORS / filename).read_text())
    return [test for group in data["testGroups"] for test in group["tests"]]


P256_CASES = [
    pytest.param(test, id=str(test["tcId"])) for test in _tests("ecdh_secp256r1_ecpoint_test.json")
]
X25519_CASES = [pytest.param(test, id=str(test["tcId"])) for test in _tests("x25519_test.json")]
ALL_DH = [X25519(), X448(), P256()]


@pytest.mark.parametrize("test", P256_CASES)
def test_wycheproof_p256_ecpoint(test: dict[str, Any]) -> None:
    """P-256 DH matches Wycheproof for uncompressed points and rejects everything else.

    Our wire encoding is the 65-byte SEC1 uncompressed point only, so the
    compressed-point cases (Wycheproof "acceptable" or "invalid") must raise
    HandshakeFailed too.  Valid cases include an all-zero x-coordinate
    (tcId 3), which is a legitimate P-256 shared secret and must be accepted.
    """
    dh = P256()
    private = int(test["private"], 16).to_bytes(32, "big")
    keypair = dh.from_private(private)
    public = bytes.fromhex(test["public"])
    uncompressed = len(public) == 65 and public[0] == 0x04
    if test["result"] == "valid" and uncompressed:
        dh.validate_public(public)
        assert dh.dh(keypair, public) == bytes.fromhex(test["shared"])
    else:
        assert test["result"] == "invalid" or not uncompressed
        with pytest.raises(HandshakeFailed):
            dh.validate_public(public)
        with pytest.raises(HandshakeFailed):
            dh.dh(keypair, public)


def test_p256_zero_x_coordinate_is_accepted() -> None:
    """The all-zero shared x-coordinate of Wycheproof tcId 3 is returned, not rejected."""
    (test,) = [t for t in _tests("ecdh_secp256r1_ecpoint_test.json") if t["tcId"] == 3]
    keypair = P256().from_private(bytes.fromhex(test["private"]))
    assert P256().dh(keypair, bytes.fromhex(test["public"])) == bytes(32)


def test_p256_off_curve_error_is_chained() -> None:
    """An off-curve point raises HandshakeFailed chained from pyca's ValueError."""
    with pytest.raises(HandshakeFailed) as info:
        P256().validate_public(b"\x04" + bytes(64))
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("test", X25519_CASES)
def test_wycheproof_x25519(test: dict[str, Any]) -> None:
    """X25519 matches Wycheproof; only ZeroSharedSecret cases raise HandshakeFailed."""
    dh = X25519()
    keypair = dh.from_private(bytes.fromhex(test["private"]))
    public, shared = bytes.fromhex(test["public"]), bytes.fromhex(test["shared"])
    assert test["result"] in ("valid", "acceptable")
    if "ZeroSharedSecret" in test["flags"]:
        assert shared == bytes(32)
        with pytest.raises(HandshakeFailed):
            dh.dh(keypair, public)
    else:
        assert dh.dh(keypair, public) == shared


@pytest.mark.parametrize("dh", ALL_DH, ids=lambda dh: dh.name)
def test_roundtrip(dh: DHFunction) -> None:
    """Both sides of a DH agree, and from_private rebuilds the same key pair."""
    a, b = dh.generate(), dh.generate()
    assert len(a.public) == dh.pubkey_len
    shared = dh.dh(a, b.public)
    assert len(shared) == dh.dhlen
    assert shared == dh.dh(b, a.public)
    again = dh.from_private(a.private_bytes())
    assert again.public == a.public
    assert again.private_bytes() == a.private_bytes()
    assert get_dh(dh.name).name == dh.name
    assert a.private_bytes().hex() not in repr(a)


@pytest.mark.parametrize("dh", ALL_DH, ids=lambda dh: dh.name)
def test_wrong_lengths(dh: DHFunction) -> None:
    """Private keys of the wrong length raise ValueError; public keys HandshakeFailed."""
    keypair = dh.generate()
    with pytest.raises(ValueError):
        dh.from_private(bytes(dh.dhlen + 1))
    for public in (b"", keypair.public[:-1], keypair.public + b"\x00"):
        with pytest.raises(HandshakeFailed):
            dh.validate_public(public)
        with pytest.raises(HandshakeFailed):
            dh.dh(keypair, public)


@pytest.mark.parametrize("dh", [X25519(), X448()], ids=lambda dh: dh.name)
def test_zero_public_key_rejected(dh: DHFunction) -> None:
    """A zero public key gives an all-zero secret, reported as HandshakeFailed."""
    with pytest.raises(HandshakeFailed) as info:
        dh.dh(dh.generate(), bytes(dh.pubkey_len))
    assert isinstance(info.value.__cause__, ValueError)


def test_p256_encoding_rules() -> None:
    """P-256 keys must be 0x04-prefixed 65-byte points; scalars must be in [1, n-1]."""
    dh = P256()
    public = dh.generate().public
    assert public[0] == 0x04
    for bad in (b"\x00", b"\x02" + public[1:33], b"\x06" + public[1:], b"\x03" + public[1:]):
        with pytest.raises(HandshakeFailed):
            dh.validate_public(bad)
    for scalar in (0, P256_ORDER, 2**256 - 1):
        with pytest.raises(ValueError):
            dh.from_private(scalar.to_bytes(32, "big"))
    assert dh.from_private((1).to_bytes(32, "big")).public[0] == 0x04


def test_keypair_from_other_function_rejected() -> None:
    """Using a key pair with the wrong DH function raises LocalProtocolError."""
    x = X25519().generate()
    p = P256().generate()
    with pytest.raises(LocalProtocolError):
        P256().dh(x, p.public)
    with pytest.raises(LocalProtocolError):
        X25519().dh(p, x.public)
    with pytest.raises(LocalProtocolError):
        X448().dh(x, bytes(56))


def test_get_dh() -> None:
    """get_dh knows 25519, 448 and P256 and rejects anything else."""
    assert [get_dh(n).pubkey_len for n in ("25519", "448", "P256")] == [32, 56, 65]
    with pytest.raises(ValueError):
        get_dh("P384")


@pytest.mark.parametrize("dh", ALL_DH, ids=lambda dh: dh.name)
def test_dh_functions_repr_as_their_class(dh: DHFunction) -> None:
    """A DH function is stateless, and its repr is just its class name."""
    assert repr(dh) == f"{type(dh).__name__}()"
    assert repr(get_dh(dh.name)) == repr(dh)
