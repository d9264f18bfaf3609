"""Token ids, strings and secrets: the wire side of tokens (docs/protocol.md §20).

Sans-I/O and shared by the device (``pstp.daemon.tokens``, the store) and
the clients (``pstp.client.tokens``).
"""

from __future__ import annotations

import base64
import binascii

from pstp.crypto.kdf import random_bytes

__all__ = [
    "TOKEN_PREFIX",
    "decode_token_string",
    "encode_token_string",
    "new_token_id",
    "token_label",
    "valid_token_id",
]

#: The start of every token string, for secret scanners (§20.3).
TOKEN_PREFIX = "pstp_tok_"  # noqa: S105  (a prefix, not a secret)
_ID_LEN = 12
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def new_token_id() -> str:
    """A fresh public token id: ``tok_`` and 12 base-32 letters (60 random bits)."""
    raw = base64.b32encode(random_bytes(8)).decode("ascii").lower()
    return "tok_" + raw[:_ID_LEN]


def valid_token_id(token_id: str) -> bool:
    """Whether ``token_id`` is ``tok_`` and 12 lowercase base-32 letters."""
    body = token_id[4:]
    return (
        token_id.startswith("tok_") and len(body) == _ID_LEN and all(c in _ALPHABET for c in body)
    )


def token_label(token_id: str) -> str:
    """The exporter label of a session-issued token's secret (§20.2)."""
    return "token " + token_id


def encode_token_string(token_id: str, secret: bytes) -> str:
    """``pstp_tok_`` + base64url(id ‖ secret ‖ CRC-32), the form a guest holds (§20.3)."""
    if not valid_token_id(token_id) or len(secret) != 32:
        raise ValueError("not a token id and 32-byte secret")
    body = token_id[4:].encode("ascii") + secret
    crc = binascii.crc32(body).to_bytes(4, "big")
    return TOKEN_PREFIX + base64.urlsafe_b64encode(body + crc).decode("ascii").rstrip("=")


def decode_token_string(text: str) -> tuple[str, bytes]:
    """The (id, secret) of a token string.

    Raises:
        ValueError: not a token string, or its checksum is wrong (a typo).
    """
    text = text.strip()
    if not text.startswith(TOKEN_PREFIX):
        raise ValueError(f"a token starts with the prefix {TOKEN_PREFIX}")
    data = text[len(TOKEN_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("the token is not valid base64url") from None
    if len(raw) != _ID_LEN + 32 + 4:
        raise ValueError("the token has the wrong length")
    body, crc = raw[:-4], raw[-4:]
    if binascii.crc32(body).to_bytes(4, "big") != crc:
        raise ValueError("the token's checksum does not match (copied wrong?)")
    token_id = "tok_" + body[:_ID_LEN].decode("ascii", "replace")
    if not valid_token_id(token_id):
        raise ValueError("the token's id is malformed")
    return token_id, body[_ID_LEN:]
