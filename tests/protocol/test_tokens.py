"""Tokens on the wire (docs/protocol.md §20): ids, token strings, the ``token`` channel's
params and grant, and token keys in the responder's key ring."""

from __future__ import annotations

import base64
import binascii

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pstp.exceptions import HandshakeFailed
from pstp.protocol.connection import Connection, ConnectionState
from pstp.protocol.handshake import KeyRing
from pstp.protocol.kinds import GRANT_MAX, BadParams, TokenGrant, TokenOpen, decode_grant
from pstp.protocol.tokens import (
    TOKEN_PREFIX,
    decode_token_string,
    encode_token_string,
    new_token_id,
    token_label,
    valid_token_id,
)
from tests.helpers import CLIENT_ID, PAIR_KEY, Pair, make_client, make_server, next_timestamp

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
TOKEN_ID = "tok_abcdefghijkl"  # noqa: S105  (a public id)
SECRET = bytes(range(100, 132))
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

token_ids = st.text(ALPHABET, min_size=12, max_size=12).map(lambda s: "tok_" + s)
secrets_32 = st.binary(min_size=32, max_size=32)


# -- ids -------------------------------------------------------------------------------------------


def test_new_ids_are_valid_and_distinct() -> None:
    """A fresh id is tok_ and 12 base-32 letters; 200 of them never collide."""
    ids = {new_token_id() for _ in range(200)}
    assert len(ids) == 200
    for token_id in ids:
        assert valid_token_id(token_id), token_id
        assert len(token_id) == 16 and set(token_id[4:]) <= set(ALPHABET)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tok_",
        "tok_abcdefghijk",  # 11 letters
        "tok_abcdefghijklm",  # 13 letters
        "tok_ABCDEFGHIJKL",  # upper case
        "tok_abcdefghijk1",  # 1 is not base-32
        "tok_abcdefghijk0",
        "tok_abcdefghijk=",
        "tak_abcdefghijkl",
        "abcdefghijklmnop",
        "tok_abcdefghij l",
    ],
)
def test_invalid_token_ids(text: str) -> None:
    """Anything but tok_ and exactly 12 lowercase base-32 letters is not an id."""
    assert not valid_token_id(text)


def test_token_label_is_the_exporter_label() -> None:
    """The secret of a session-issued token is export('token ' + id)."""
    assert token_label(TOKEN_ID) == "token tok_abcdefghijkl"


# -- token strings ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token_ids, secrets_32)
def test_token_string_round_trip(token_id: str, secret: bytes) -> None:
    """encode then decode gives back the id and the secret; the string is URL-safe."""
    text = encode_token_string(token_id, secret)
    assert text.startswith(TOKEN_PREFIX)
    body = text[len(TOKEN_PREFIX) :]
    assert len(body) == 64 and set(body) <= set(B64URL)
    assert decode_token_string(text) == (token_id, secret)
    # Whitespace around it (a pasted line) is forgiven.
    assert decode_token_string(f"  {text}\n") == (token_id, secret)


def test_token_string_layout() -> None:
    """base64url of the id's 12 letters, the secret, and the CRC-32 of both (big-endian)."""
    text = encode_token_string(TOKEN_ID, SECRET)
    raw = base64.urlsafe_b64decode(text[len(TOKEN_PREFIX) :] + "==")
    assert raw[:12] == b"abcdefghijkl" and raw[12:44] == SECRET
    assert raw[44:] == binascii.crc32(raw[:44]).to_bytes(4, "big")
    assert len(text) == len(TOKEN_PREFIX) + 64


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token_ids, secrets_32, st.data())
def test_a_changed_character_fails(token_id: str, secret: bytes, data: st.DataObject) -> None:
    """Any one character of the body changed to another: the CRC-32 catches it.

    48 bytes are exactly 64 base64 characters (no padding bits), so every change
    changes the bytes, in a burst of at most 6 bits, which a CRC-32 always detects.
    """
    text = encode_token_string(token_id, secret)
    i = data.draw(st.integers(len(TOKEN_PREFIX), len(text) - 1))
    other = data.draw(st.sampled_from([c for c in B64URL if c != text[i]]))
    bad = text[:i] + other + text[i + 1 :]
    with pytest.raises(ValueError, match="checksum"):
        decode_token_string(bad)


def test_a_flipped_secret_character_names_the_checksum() -> None:
    """A typo in the secret part says the checksum does not match (copied wrong?)."""
    text = encode_token_string(TOKEN_ID, SECRET)
    i = len(TOKEN_PREFIX) + 30
    bad = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]
    with pytest.raises(ValueError, match="checksum"):
        decode_token_string(bad)


def _string_of(raw: bytes) -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "starts with.*pstp_tok_"),
        ("pstp_tk_" + "A" * 64, "starts with.*pstp_tok_"),
        ("PSTP_TOK_" + "A" * 64, "starts with.*pstp_tok_"),
        ("tok_abcdefghijkl", "starts with.*pstp_tok_"),
        (TOKEN_PREFIX, "wrong length"),
        (TOKEN_PREFIX + "A" * 63, "wrong length"),
        (TOKEN_PREFIX + "A" * 68, "wrong length"),
        (TOKEN_PREFIX + "A" * 5, "base64url|wrong length"),  # 5 chars: not base64 at all
        (TOKEN_PREFIX + "!" * 64, "base64url|wrong length"),
    ],
)
def test_malformed_token_strings(text: str, error: str) -> None:
    """Wrong prefix, length or base64: a ValueError that says which."""
    with pytest.raises(ValueError, match=error):
        decode_token_string(text)


def test_a_checksummed_body_with_a_bad_id_is_refused() -> None:
    """A correct CRC over an id that is not base-32 (upper case, digits 0/1): malformed."""
    for id_bytes in (b"ABCDEFGHIJKL", b"abcdefghijk1", b"abcdefghijk\xff"):
        body = id_bytes + SECRET
        text = _string_of(body + binascii.crc32(body).to_bytes(4, "big"))
        with pytest.raises(ValueError, match="malformed"):
            decode_token_string(text)


@pytest.mark.parametrize(
    ("token_id", "secret"),
    [("tok_abc", SECRET), ("abcdefghijklmnop", SECRET), (TOKEN_ID, b"x" * 31), (TOKEN_ID, b"")],
)
def test_encode_refuses_bad_ids_and_secrets(token_id: str, secret: bytes) -> None:
    """Only a valid id and a 32-byte secret make a token string."""
    with pytest.raises(ValueError):
        encode_token_string(token_id, secret)


# -- the token channel's params --------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"ttl": 60},
        {"ttl": 2_592_000},
        {"ttl": 7200, "uses": 1},
        {"ttl": 7200, "uses": 1_000_000},
        {"ttl": 7200, "uses": None, "kinds": None, "actions": None, "reason": None},
        {"ttl": 7200, "kinds": ["ping", "action"], "actions": ["gate.*", "lamp.set", "x[!a]?"]},
        {"ttl": 7200, "kinds": ["ping", "action", "actions", "exec", "shell", "file"]},
        {"ttl": 7200, "kinds": [], "actions": []},
        {"ttl": 7200, "actions": ["a" * 128]},
        {"ttl": 7200, "actions": [f"a{i}" for i in range(32)]},
        {"ttl": 7200, "reason": "for the neighbour"},
    ],
)
def test_token_open_accepts(params: dict[str, object]) -> None:
    """Valid params decode, and to_params gives back an equal struct."""
    ask = TokenOpen.from_params(params)
    assert ask.ttl == params["ttl"]
    assert ask.uses == params.get("uses")
    assert list(ask.kinds) == list(params.get("kinds") or [])  # type: ignore[call-overload]
    assert list(ask.actions) == list(params.get("actions") or [])  # type: ignore[call-overload]
    assert TokenOpen.from_params(ask.to_params()) == ask


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, "ttl"),
        ({"ttl": 59}, "ttl"),
        ({"ttl": 2_592_001}, "ttl"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -60}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"ttl": 3600.0}, "ttl"),
        ({"ttl": "3600"}, "ttl"),
        ({"ttl": 3600, "uses": 0}, "uses"),
        ({"ttl": 3600, "uses": -1}, "uses"),
        ({"ttl": 3600, "uses": 1_000_001}, "uses"),
        ({"ttl": 3600, "uses": True}, "uses"),
        ({"ttl": 3600, "uses": "5"}, "uses"),
        ({"ttl": 3600, "kinds": "ping"}, "kinds"),
        ({"ttl": 3600, "kinds": [1]}, "kinds"),
        ({"ttl": 3600, "kinds": [""]}, "kinds"),
        ({"ttl": 3600, "kinds": ["token"]}, "kinds"),  # no minting from a token
        ({"ttl": 3600, "kinds": ["forward"]}, "kinds"),
        ({"ttl": 3600, "kinds": ["ping", "Ping"]}, "kinds"),
        ({"ttl": 3600, "actions": ["gate open"]}, "actions"),
        ({"ttl": 3600, "actions": ["../etc"]}, "actions"),
        ({"ttl": 3600, "actions": ["a" * 129]}, "actions"),
        ({"ttl": 3600, "actions": [f"a{i}" for i in range(33)]}, "actions"),
        ({"ttl": 3600, "actions": {"gate.open": 1}}, "actions"),
    ],
)
def test_token_open_refuses(params: dict[str, object], error: str) -> None:
    """ttl outside 60..2592000, uses outside 1..1000000, malformed lists: BadParams."""
    with pytest.raises(BadParams, match=error):
        TokenOpen.from_params(params)


# -- the grant -------------------------------------------------------------------------------------


def _grant(**kw: object) -> TokenGrant:
    fields: dict[str, object] = {
        "id": TOKEN_ID,
        "expires": 1_767_225_600.0,
        "uses": 5,
        "kinds": ["ping", "action"],
        "actions": ["gate.*"],
        "addresses": ["ws://home.example.org/pstp", "192.0.2.20:9000"],
    }
    fields.update(kw)
    return TokenGrant(**fields)  # type: ignore[arg-type]


def test_grant_round_trip() -> None:
    """A grant encodes to MessagePack and decodes to an equal grant."""
    grant = _grant()
    assert decode_grant(msgspec.msgpack.encode(grant)) == grant
    assert decode_grant(msgspec.msgpack.encode(_grant(uses=None))).uses is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"junk",
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode({"id": TOKEN_ID}),
        msgspec.msgpack.encode(
            {
                "id": TOKEN_ID,
                "expires": "tomorrow",
                "uses": 5,
                "kinds": [],
                "actions": [],
                "addresses": [],
            }
        ),
        msgspec.msgpack.encode(
            {"id": 7, "expires": 1.0, "uses": 5, "kinds": [], "actions": [], "addresses": []}
        ),
        msgspec.msgpack.encode(
            {
                "id": TOKEN_ID,
                "expires": 1.0,
                "uses": 5,
                "kinds": [1],
                "actions": [],
                "addresses": [],
            }
        ),
    ],
)
def test_grant_refuses_junk(data: bytes) -> None:
    """Not a grant: BadParams (never a crash, never a half-read grant)."""
    with pytest.raises(BadParams, match="malformed token grant"):
        decode_grant(data)


def test_grant_refuses_oversize() -> None:
    """A well-formed grant larger than GRANT_MAX is refused before it is decoded."""
    big = msgspec.msgpack.encode(_grant(addresses=["x" * 1000] * 70))
    assert len(big) > GRANT_MAX
    with pytest.raises(BadParams, match="too large"):
        decode_grant(big)
    # Just under the bound is read.
    fits = msgspec.msgpack.encode(_grant(addresses=["x" * 1000] * 60))
    assert len(fits) <= GRANT_MAX
    assert len(decode_grant(fits).addresses) == 60


# -- token keys in the key ring --------------------------------------------------------------------


def _ring() -> KeyRing:
    ring = KeyRing()
    ring.add(CLIENT_ID, PAIR_KEY)
    ring.add_token(TOKEN_ID, CLIENT_ID, SECRET)
    return ring


def _handshake(ring: KeyRing, key: bytes, timestamp: int | None = None) -> Connection:
    """Run a handshake with ``key`` against ``ring``; return the server side (any state)."""
    pair = Pair(
        make_client(pair_key=key, timestamp=timestamp or next_timestamp()),
        make_server(keyring=ring),
    )
    pair.server.start(pair.clock.now)
    pair.client.start(pair.clock.now)
    pair.roundtrip()
    return pair.server


def test_a_token_key_sits_beside_the_pair_key() -> None:
    """Either key authenticates as the peer; the token's session says which token."""
    ring = _ring()
    assert len(ring) == 2 and ring.tokens() == {TOKEN_ID}
    assert ring.get(CLIENT_ID) is not None and ring.get(CLIENT_ID).token is None  # type: ignore[union-attr]
    key = ring.get("token:" + TOKEN_ID)
    assert key is not None and key.device_id == CLIENT_ID and key.token == TOKEN_ID
    assert key.ring_key == "token:" + TOKEN_ID
    by_pair = _handshake(ring, PAIR_KEY)
    by_token = _handshake(ring, SECRET)
    for server in (by_pair, by_token):
        assert server.state is ConnectionState.ESTABLISHED
        assert server.peer_id == CLIENT_ID
    assert by_pair.peer_token is None
    assert by_token.peer_token == TOKEN_ID


def test_a_token_key_has_its_own_replay_guard() -> None:
    """One timestamp is accepted once per key: the pair key's use does not spend the token's
    and vice versa; each refuses its own replay."""
    ring = _ring()
    ts = next_timestamp()
    assert _handshake(ring, PAIR_KEY, ts).state is ConnectionState.ESTABLISHED
    assert _handshake(ring, SECRET, ts).state is ConnectionState.ESTABLISHED
    pair_key, token_key = ring.get(CLIENT_ID), ring.get("token:" + TOKEN_ID)
    assert pair_key is not None and token_key is not None
    assert pair_key.last_timestamp == token_key.last_timestamp == ts
    for key in (PAIR_KEY, SECRET):
        replay = _handshake(ring, key, ts)
        assert replay.state is not ConnectionState.ESTABLISHED
        assert isinstance(replay.close_exc, HandshakeFailed)
        assert "replayed or stale" in str(replay.close_exc)


def test_a_token_key_added_with_a_timestamp_starts_closed() -> None:
    """add_token(last_timestamp=T) (a restart) refuses T and older, accepts newer."""
    ts = next_timestamp()
    ring = KeyRing()
    ring.add_token(TOKEN_ID, CLIENT_ID, SECRET, last_timestamp=ts)
    assert "replayed or stale" in str(_handshake(ring, SECRET, ts).close_exc)
    assert "replayed or stale" in str(_handshake(ring, SECRET, ts - 1).close_exc)
    assert _handshake(ring, SECRET, ts + 1).state is ConnectionState.ESTABLISHED


def test_adding_a_token_again_keeps_its_guard() -> None:
    """add_token of a token already in the ring does not reopen its replay window."""
    ring = _ring()
    ts = next_timestamp()
    assert _handshake(ring, SECRET, ts).state is ConnectionState.ESTABLISHED
    ring.add_token(TOKEN_ID, CLIENT_ID, SECRET)
    assert "replayed or stale" in str(_handshake(ring, SECRET, ts).close_exc)


def test_removing_a_token_leaves_the_pair_key() -> None:
    """remove('token:ID') forgets the token alone; remove(peer) the pair key alone."""
    ring = _ring()
    ring.remove("token:" + TOKEN_ID)
    assert ring.tokens() == set() and len(ring) == 1
    assert "unknown key id" in str(_handshake(ring, SECRET).close_exc)
    assert _handshake(ring, PAIR_KEY).state is ConnectionState.ESTABLISHED
    ring = _ring()
    ring.remove(CLIENT_ID)
    assert ring.tokens() == {TOKEN_ID}
    assert "unknown key id" in str(_handshake(ring, PAIR_KEY).close_exc)
    assert _handshake(ring, SECRET).peer_token == TOKEN_ID


def test_add_token_refuses_a_short_secret() -> None:
    """A token secret is 32 bytes, as a pair key is."""
    with pytest.raises(ValueError):
        KeyRing().add_token(TOKEN_ID, CLIENT_ID, SECRET[:31])


def test_both_ends_derive_the_same_token_secret_bound_to_the_session() -> None:
    """export(token_label(id)) agrees on both sides of one session, and differs between
    ids and between sessions (a secret from another session opens nothing)."""
    one, two = Pair.new().established(), Pair.new().established()
    label = token_label(TOKEN_ID)
    secret = one.client.export_secret(label)
    assert len(secret) == 32 and secret == one.server.export_secret(label)
    assert secret != one.client.export_secret(token_label("tok_abcdefghijkm"))
    assert secret != two.client.export_secret(label)
    ring = KeyRing()
    ring.add_token(TOKEN_ID, CLIENT_ID, secret)
    assert _handshake(ring, secret).peer_token == TOKEN_ID
    assert "unknown key id" in str(_handshake(ring, two.client.export_secret(label)).close_exc)
