"""Tokens: scoped, expiring, revocable keys to a device (docs/protocol.md §20).

A token is a second key to the device, narrower than the pair key it came
from.  It has a public **id** (``tok_`` and 12 base-32 letters: listed, audited,
revoked by) and a 32-byte **secret** that is used exactly as a pair key is: a
later connection, on any transport, runs a full PSTP-HS handshake with it
(§5.2: psk and key id derived from it), so the token itself never crosses the
network and a leaked id or address opens nothing.

Two ways to get one:

* over a session (channel kind ``token``, §17.13): the secret is derived from
  that session, ``export("token " + id)`` (§5.6), by both sides; only the id
  and the scope travel, inside the session;
* ``pstp token issue`` on the device (a **guest credential**): the secret is
  random and handed over as a ``pstp://`` link holding the token string
  (``pstp_tok_...``, §20.3), to be imported with ``pstp token import``.

A token acts as its peer: what it may do is the peer's policy narrowed to its
scope (channel kinds, action globs).  A token for a name that is not a
configured peer (a guest) may do only what its scope names, and only the
kinds ``ping``, ``action`` and ``actions``.  Tokens expire (1 minute to 30
days), may have a use budget (handshakes), are revoked by id, and live in
``tokens.sqlite`` beside the configuration (mode 0600), so they survive a
restart.  Only the stdlib ``sqlite3`` module is used.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from pstp.crypto.kdf import random_bytes
from pstp.daemon.policy.model import PeerPolicy
from pstp.exceptions import PstpError
from pstp.protocol.kinds import TOKEN_KINDS
from pstp.protocol.tokens import (
    TOKEN_PREFIX,
    decode_token_string,
    encode_token_string,
    new_token_id,
    token_label,
    valid_token_id,
)
from pstp.settings import Settings

__all__ = [
    "GUEST_KINDS",
    "ISSUE_KINDS",
    "MAX_LIVE_PER_PEER",
    "MAX_LIVE_TOKENS",
    "MAX_TTL",
    "MIN_TTL",
    "TOKEN_PREFIX",
    "Token",
    "TokenError",
    "TokenStore",
    "decode_token_string",
    "encode_token_string",
    "guest_policies",
    "new_token_id",
    "parse_ttl",
    "token_label",
    "tokens_path",
]

#: Shortest and longest lifetime, seconds.
MIN_TTL = 60
MAX_TTL = 30 * 24 * 3600
#: What a guest token (for a name that is no configured peer) may ever open.
GUEST_KINDS = ("ping", "action", "actions")
#: Kinds a scope may name (§17.13).
ISSUE_KINDS = TOKEN_KINDS
#: Live (unexpired, unrevoked) tokens, at most, per peer and on the device.
MAX_LIVE_PER_PEER = 32
MAX_LIVE_TOKENS = 1024
#: Expired or revoked tokens are kept this long (for ``pstp token list``), then purged.
KEEP_ENDED = 7 * 24 * 3600

TOKENS_NAME = "tokens.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    peer TEXT NOT NULL,
    secret BLOB NOT NULL,
    kinds TEXT NOT NULL,
    actions TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    max_uses INTEGER,
    uses INTEGER NOT NULL DEFAULT 0,
    revoked REAL,
    origin TEXT NOT NULL,
    last_timestamp INTEGER NOT NULL DEFAULT 0
)
"""

# Columns in the order of _SCHEMA, which the Token constructor follows.
_ALL = "SELECT * FROM tokens ORDER BY created"
_UNREVOKED = "SELECT * FROM tokens WHERE revoked IS NULL ORDER BY created"
_BY_ID = "SELECT * FROM tokens WHERE id = ?"


class TokenError(PstpError):
    """A token could not be issued, found or used; the message says why."""


def tokens_path(settings: Settings) -> Path:
    """Where this configuration's tokens live: ``tokens.sqlite`` beside it."""
    return settings.path.parent / TOKENS_NAME


def parse_ttl(text: str) -> int:
    """``90s``, ``10m``, ``2h``, ``7d`` (or plain seconds) as seconds, 1 minute to 30 days.

    Raises:
        ValueError: not a duration, or out of bounds.
    """
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    if not number.isdigit() or len(number) > 9:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 10m, 2h, 7d)")
    seconds = int(number) * units[unit]
    if not MIN_TTL <= seconds <= MAX_TTL:
        raise ValueError(f"{text!r}: a token lives from 1 minute to 30 days")
    return seconds


class Token(msgspec.Struct, frozen=True):
    """One token as stored.

    Attributes:
        id: the public id (``tok_...``).
        peer: whom it acts as.
        secret: the 32-byte secret (never printed, never logged).
        kinds: the channel kinds it may open (``()``: any the peer may).
        actions: fnmatch globs of the actions it may run (``()``: any the peer may).
        created: issue time (Unix seconds).
        expires: end of life (Unix seconds).
        max_uses: handshakes it may open, or None for no limit.
        uses: handshakes it opened.
        revoked: when it was revoked, or None.
        origin: ``session`` (derived from a session) or ``issued`` (a guest credential).
        last_timestamp: the newest HS_INIT timestamp accepted with it (replay guard).
    """

    id: str
    peer: str
    secret: bytes
    kinds: tuple[str, ...]
    actions: tuple[str, ...]
    created: float
    expires: float
    max_uses: int | None
    uses: int
    revoked: float | None
    origin: str
    last_timestamp: int = 0

    def __repr__(self) -> str:  # never the secret
        return f"Token(id={self.id!r}, peer={self.peer!r}, expires={self.expires!r})"

    def why_not(self, now: float) -> str | None:
        """Why this token opens nothing at ``now``, or None if it may be used."""
        if self.revoked is not None:
            return f"token {self.id} was revoked"
        if now >= self.expires:
            return f"token {self.id} expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return f"token {self.id} has no uses left ({self.max_uses} used)"
        return None

    def refuses(self, kind: str, action: str | None, *, guest: bool) -> str | None:
        """Why this token's scope refuses opening ``kind`` (running ``action``), or None."""
        kinds = self.kinds or (GUEST_KINDS if guest else ())
        if guest and kind not in GUEST_KINDS:
            return f"token {self.id} (a guest credential) may not open {kind!r}"
        if kinds and kind not in kinds:
            return f"token {self.id} may not open {kind!r} (its scope: {', '.join(kinds)})"
        if (
            kind == "action"
            and self.actions
            and action is not None
            and not any(fnmatch.fnmatchcase(action, glob) for glob in self.actions)
        ):
            return f"token {self.id} may not run {action!r} (its scope: {', '.join(self.actions)})"
        return None

    def to_public(self) -> dict[str, object]:
        """What ``pstp token list --json`` shows (no secret)."""
        return {
            "id": self.id,
            "peer": self.peer,
            "kinds": list(self.kinds),
            "actions": list(self.actions),
            "created": self.created,
            "expires": self.expires,
            "max_uses": self.max_uses,
            "uses": self.uses,
            "revoked": self.revoked,
            "origin": self.origin,
        }


def _scope(values: Iterable[str], allowed: Sequence[str] | None, what: str) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value or len(value) > 128:
            raise TokenError(f"a token's {what} must be non-empty strings of at most 128 chars")
        if allowed is not None and value not in allowed:
            raise TokenError(f"unknown channel kind {value!r} (one of {', '.join(allowed)})")
        if value not in out:
            out.append(value)
    if len(out) > 32:
        raise TokenError(f"a token names at most 32 {what}")
    return tuple(out)


class TokenStore:
    """The device's tokens in SQLite (``tokens.sqlite``, mode 0600).

    Every method opens no long transaction; several processes (the daemon,
    ``pstp token`` commands) may use the file at once.  :attr:`version` changes
    whenever another connection wrote (the daemon polls it, so a revocation
    from the CLI reaches live sessions within its poll interval).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._db = sqlite3.connect(
                str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise TokenError(f"{self.path}: cannot open the token store: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @property
    def version(self) -> int:
        """Changes when another connection committed a write (``PRAGMA data_version``)."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _rows(self, query: str = _ALL, args: Sequence[object] = ()) -> list[Token]:
        rows = self._db.execute(query, tuple(args)).fetchall()
        return [
            Token(
                r[0],
                r[1],
                bytes(r[2]),
                tuple(json.loads(r[3])),
                tuple(json.loads(r[4])),
                r[5],
                r[6],
                r[7],
                r[8],
                r[9],
                r[10],
                r[11],
            )
            for r in rows
        ]

    def all(self) -> list[Token]:
        """Every stored token, oldest first (ended ones for :data:`KEEP_ENDED` seconds)."""
        return self._rows()

    def live(self, now: float | None = None) -> list[Token]:
        """The tokens that may still open a session."""
        now = time.time() if now is None else now
        return [t for t in self._rows(_UNREVOKED) if t.why_not(now) is None]

    def get(self, token_id: str) -> Token | None:
        """The token ``token_id``, or None."""
        found = self._rows(_BY_ID, (token_id,))
        return found[0] if found else None

    def issue(
        self,
        peer: str,
        *,
        ttl: int,
        max_uses: int | None = None,
        kinds: Iterable[str] = (),
        actions: Iterable[str] = (),
        origin: str = "issued",
        secret: bytes | None = None,
        token_id: str | None = None,
        now: float | None = None,
    ) -> Token:
        """Store a new token and return it.

        Args:
            peer: whom it acts as.
            ttl: seconds it lives (:data:`MIN_TTL` to :data:`MAX_TTL`).
            max_uses: handshakes it may open (1 or more), or None.
            kinds: channel kinds it may open (empty: those its peer may).
            actions: action globs it may run (empty: those its peer may).
            origin: ``session`` or ``issued``.
            secret: the 32-byte secret (default: random).
            token_id: its id (default: fresh; a session-issued token's secret
                is derived from its id, so the caller picks it first).
            now: the issue time (default: now).

        Raises:
            TokenError: out of bounds, or too many live tokens.
        """
        now = time.time() if now is None else now
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise TokenError("a token lives from 1 minute to 30 days")
        if max_uses is not None and not 1 <= max_uses <= 1_000_000:
            raise TokenError("a token's use count is 1 to 1 000 000")
        kinds_t = _scope(kinds, ISSUE_KINDS, "kinds")
        actions_t = _scope(actions, None, "actions")
        secret = random_bytes(32) if secret is None else secret
        token_id = new_token_id() if token_id is None else token_id
        if len(secret) != 32 or not valid_token_id(token_id):
            raise TokenError("a token has a tok_ id and a 32-byte secret")
        purge = (now - KEEP_ENDED,) * 2
        self._db.execute("DELETE FROM tokens WHERE expires < ? OR revoked < ?", purge)
        live = self.live(now)
        if len(live) >= MAX_LIVE_TOKENS:
            raise TokenError(f"this device holds {MAX_LIVE_TOKENS} live tokens already")
        if sum(1 for t in live if t.peer == peer) >= MAX_LIVE_PER_PEER:
            raise TokenError(
                f"{peer} holds {MAX_LIVE_PER_PEER} live tokens already; revoke some first"
            )
        token = Token(
            token_id,
            peer,
            secret,
            kinds_t,
            actions_t,
            now,
            now + ttl,
            max_uses,
            0,
            None,
            origin,
        )
        try:
            self._db.execute(
                "INSERT INTO tokens (id, peer, secret, kinds, actions, created, expires, "
                "max_uses, uses, revoked, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?)",
                (
                    token.id,
                    peer,
                    secret,
                    json.dumps(list(kinds_t)),
                    json.dumps(list(actions_t)),
                    now,
                    token.expires,
                    max_uses,
                    origin,
                ),
            )
        except sqlite3.IntegrityError:
            raise TokenError(f"a token {token_id} exists already") from None
        return token

    def redeem(self, token_id: str, timestamp: int, now: float | None = None) -> Token:
        """Count one use of ``token_id`` (a handshake completed with it).

        The use count and replay guard move in one statement that also checks
        the token is still good, so two handshakes racing for the last use
        cannot both win.

        Returns:
            The token after the use.

        Raises:
            TokenError: unknown, revoked, expired or used up (the message says which).
        """
        now = time.time() if now is None else now
        changed = self._db.execute(
            "UPDATE tokens SET uses = uses + 1, last_timestamp = MAX(last_timestamp, ?) "
            "WHERE id = ? AND revoked IS NULL AND expires > ? "
            "AND (max_uses IS NULL OR uses < max_uses)",
            (timestamp, token_id, now),
        ).rowcount
        token = self.get(token_id)
        if token is None:
            raise TokenError(f"unknown token {token_id}")
        if not changed:
            raise TokenError(token.why_not(now) or f"token {token_id} could not be used")
        return token

    def revoke(self, token_id: str, now: float | None = None) -> bool:
        """Revoke ``token_id``; False if there is no such token (or it was revoked)."""
        now = time.time() if now is None else now
        return bool(
            self._db.execute(
                "UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL", (now, token_id)
            ).rowcount
        )


def guest_policies(settings: Settings, tokens: Iterable[Token]) -> dict[str, PeerPolicy]:
    """The policy of each guest among ``tokens``' peers (names that are no configured peer).

    A guest may open sessions, ``ping`` and run the actions its tokens' scopes
    name (the union over its live tokens; each token is held to its own scope
    besides); nothing else.

    Raises:
        ConfigError: a scope names an action that is not declared (and is no glob).
    """
    from pstp.daemon.policy.load import read_policy

    scopes: dict[str, set[str]] = {}
    for token in tokens:
        if token.peer not in settings.peers:
            scopes.setdefault(token.peer, set()).update(token.actions)
    if not scopes:
        return {}
    doc = {
        "actions": settings.data.get("actions", {}),
        "peers": {name: {"policy": {"actions": sorted(globs)}} for name, globs in scopes.items()},
    }
    _, peers = read_policy(doc, path=settings.path)
    return {name: policy for name, policy in peers.items() if policy is not None}
