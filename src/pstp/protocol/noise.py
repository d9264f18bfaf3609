"""A generic Noise Protocol Framework engine (Noise spec revision 34).

The three objects of the specification (§5) are here, named as there:

* ``CipherState``: one AEAD key and its 64-bit nonce counter;
* ``SymmetricState``: the chaining key ``ck``, the handshake hash ``h`` and a
  ``CipherState``;
* ``HandshakeState``: a handshake pattern, the local and remote keys, and
  the ``SymmetricState``, driven by ``write_message`` / ``read_message``.

``NoiseProtocol.from_name`` parses names such as
``Noise_NNpsk0_P256_AESGCM_SHA256``: every fundamental, one-way and deferred
pattern of §7 and §18 (rev 34), with any set of ``pskN`` modifiers (§9);
DH ``25519``, ``448`` and ``P256`` (PSTP's own, see ``pstp.crypto.keys``);
ciphers ``AESGCM`` and ``ChaChaPoly``; hashes ``SHA256``, ``SHA512``,
``BLAKE2s`` and ``BLAKE2b``.

PSTP runs NNpsk0 over P-256 with this engine (docs/protocol.md §5, Appendix A).  One
deliberate property matters there: a received ``e`` is stored as raw bytes
and only decoded by the DH function when a DH token needs it, so a responder
reading ``-> psk, e`` decrypts the payload before any elliptic-curve work.

Errors: ``DecryptError`` when an AEAD tag fails, ``HandshakeFailed`` for a
malformed message or invalid public key, ``LocalProtocolError`` when the
caller uses the API out of turn.  After any error raised while processing a
message the ``HandshakeState`` is dead: every later call raises
``LocalProtocolError``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final, Literal, TypeAlias, cast, get_args

import msgspec

from pstp.crypto.aead import KEY_LEN, MAX_NONCE, TAG_LEN, Aead, CipherName
from pstp.crypto.kdf import HashName, digest, hash_len, noise_hkdf
from pstp.crypto.keys import DHFunction, KeyPair, get_dh
from pstp.exceptions import HandshakeFailed, LocalProtocolError

__all__ = [
    "MAX_MESSAGE_LEN",
    "PATTERNS",
    "PSK_LEN",
    "CipherState",
    "HandshakePattern",
    "HandshakeState",
    "NoiseProtocol",
    "SymmetricState",
    "Token",
]

#: Noise messages are at most 65535 bytes (rev 34 §3).
MAX_MESSAGE_LEN: Final = 65535
#: Pre-shared keys are 32 bytes (rev 34 §9.1).
PSK_LEN: Final = 32

Token: TypeAlias = Literal["e", "s", "ee", "es", "se", "ss", "psk"]
_TOKENS: Final[frozenset[str]] = frozenset(get_args(Token))
_DH_TOKENS: Final[frozenset[str]] = frozenset({"ee", "es", "se", "ss"})


class HandshakePattern(msgspec.Struct, frozen=True):
    """A handshake pattern: pre-messages and message token lists (rev 34 §7).

    Messages alternate, the initiator sending ``messages[0]``.

    Attributes:
        name: the pattern name including modifiers, e.g. ``"NNpsk0"``.
        initiator_premessage: tokens (``"e"``/``"s"``) the responder knows
            in advance about the initiator.
        responder_premessage: tokens the initiator knows in advance about
            the responder.
        messages: one token tuple per handshake message.
    """

    name: str
    initiator_premessage: tuple[Token, ...]
    responder_premessage: tuple[Token, ...]
    messages: tuple[tuple[Token, ...], ...]

    @property
    def one_way(self) -> bool:
        """Whether this is a one-way pattern (N, K, X and their modifiers)."""
        return len(self.messages) == 1

    @property
    def psk_count(self) -> int:
        """How many ``psk`` tokens the pattern holds."""
        return sum(message.count("psk") for message in self.messages)

    def with_psks(self, positions: Sequence[int]) -> HandshakePattern:
        """Apply ``pskN`` modifiers (rev 34 §9.2).

        ``psk0`` puts a ``psk`` token at the start of the first message;
        ``pskN`` (N >= 1) at the end of message N.

        Args:
            positions: the N of each modifier, in the order written.

        Returns:
            The modified pattern, named e.g. ``"XXpsk3"`` or
            ``"NNpsk0+psk2"``.

        Raises:
            ValueError: a position is repeated or past the last message.
        """
        if len(set(positions)) != len(positions):
            raise ValueError("repeated psk modifier")
        messages = [list(message) for message in self.messages]
        for position in positions:
            if position == 0:
                messages[0].insert(0, "psk")
            elif 1 <= position <= len(messages):
                messages[position - 1].append("psk")
            else:
                raise ValueError(f"psk{position} is past the last message of {self.name}")
        suffix = "+".join(f"psk{position}" for position in positions)
        return HandshakePattern(
            self.name + suffix,
            self.initiator_premessage,
            self.responder_premessage,
            tuple(tuple(message) for message in messages),
        )


def _pattern(name: str, initiator_pre: str, responder_pre: str, *messages: str) -> HandshakePattern:
    def tokens(text: str) -> tuple[Token, ...]:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        # The table below is a literal: a typo in it is a bug, not an input error.
        assert _TOKENS.issuperset(parts), f"bad token in pattern {name}: {text!r}"
        return tuple(cast(Token, part) for part in parts)

    return HandshakePattern(
        name,
        tokens(initiator_pre),
        tokens(responder_pre),
        tuple(tokens(message) for message in messages),
    )


#: Every base pattern, by name: one-way (rev 34 §7.4), interactive
#: fundamental (§7.5) and deferred (§18).  Arguments after the name: the
#: initiator's pre-message, the responder's pre-message, then the messages.
PATTERNS: Final[dict[str, HandshakePattern]] = {
    pattern.name: pattern
    for pattern in (
        # One-way.
        _pattern("N", "", "s", "e, es"),
        _pattern("K", "s", "s", "e, es, ss"),
        _pattern("X", "", "s", "e, es, s, ss"),
        # Interactive, fundamental.
        _pattern("NN", "", "", "e", "e, ee"),
        _pattern("NK", "", "s", "e, es", "e, ee"),
        _pattern("NX", "", "", "e", "e, ee, s, es"),
        _pattern("XN", "", "", "e", "e, ee", "s, se"),
        _pattern("XK", "", "s", "e, es", "e, ee", "s, se"),
        _pattern("XX", "", "", "e", "e, ee, s, es", "s, se"),
        _pattern("KN", "s", "", "e", "e, ee, se"),
        _pattern("KK", "s", "s", "e, es, ss", "e, ee, se"),
        _pattern("KX", "s", "", "e", "e, ee, se, s, es"),
        _pattern("IN", "", "", "e, s", "e, ee, se"),
        _pattern("IK", "", "s", "e, es, s, ss", "e, ee, se"),
        _pattern("IX", "", "", "e, s", "e, ee, se, s, es"),
        # Interactive, deferred.
        _pattern("NK1", "", "s", "e", "e, ee, es"),
        _pattern("NX1", "", "", "e", "e, ee, s", "es"),
        _pattern("X1N", "", "", "e", "e, ee", "s", "se"),
        _pattern("X1K", "", "s", "e, es", "e, ee", "s", "se"),
        _pattern("XK1", "", "s", "e", "e, ee, es", "s, se"),
        _pattern("X1K1", "", "s", "e", "e, ee, es", "s", "se"),
        _pattern("X1X", "", "", "e", "e, ee, s, es", "s", "se"),
        _pattern("XX1", "", "", "e", "e, ee, s", "es, s, se"),
        _pattern("X1X1", "", "", "e", "e, ee, s", "es, s", "se"),
        _pattern("K1N", "s", "", "e", "e, ee", "se"),
        _pattern("K1K", "s", "s", "e, es", "e, ee", "se"),
        _pattern("KK1", "s", "s", "e", "e, ee, se, es"),
        _pattern("K1K1", "s", "s", "e", "e, ee, es", "se"),
        _pattern("K1X", "s", "", "e", "e, ee, s, es", "se"),
        _pattern("KX1", "s", "", "e", "e, ee, se, s", "es"),
        _pattern("K1X1", "s", "", "e", "e, ee, s", "se, es"),
        _pattern("I1N", "", "", "e, s", "e, ee", "se"),
        _pattern("I1K", "", "s", "e, es, s", "e, ee", "se"),
        _pattern("IK1", "", "s", "e, s", "e, ee, se, es"),
        _pattern("I1K1", "", "s", "e, s", "e, ee, es", "se"),
        _pattern("I1X", "", "", "e, s", "e, ee, s, es", "se"),
        _pattern("IX1", "", "", "e, s", "e, ee, se, s", "es"),
        _pattern("I1X1", "", "", "e, s", "e, ee, s", "se, es"),
    )
}

_CIPHERS: Final[frozenset[str]] = frozenset(get_args(CipherName))
_HASHES: Final[frozenset[str]] = frozenset(get_args(HashName))


def _parse_pattern(text: str) -> HandshakePattern:
    # The base name is upper case and digits; modifiers start lower case.
    split = next((i for i, char in enumerate(text) if char.islower()), len(text))
    base, modifiers = text[:split], text[split:]
    pattern = PATTERNS.get(base)
    if pattern is None:
        raise ValueError(f"unsupported handshake pattern {base!r}")
    if not modifiers:
        return pattern
    positions = []
    for modifier in modifiers.split("+"):
        digits = modifier.removeprefix("psk")
        if modifier == digits or not digits.isdecimal() or str(int(digits)) != digits:
            raise ValueError(f"unsupported pattern modifier {modifier!r}")
        positions.append(int(digits))
    return pattern.with_psks(positions)


class NoiseProtocol(msgspec.Struct, frozen=True):
    """A concrete Noise protocol: pattern, DH, cipher and hash (rev 34 §8).

    Attributes:
        name: the full protocol name, e.g. ``"Noise_NNpsk0_P256_AESGCM_SHA256"``.
        pattern: the handshake pattern, modifiers applied.
        dh: the DH function name (``"25519"``, ``"448"``, ``"P256"``).
        cipher: the cipher name.
        hash: the hash name.
    """

    name: str
    pattern: HandshakePattern
    dh: str
    cipher: CipherName
    hash: HashName

    @classmethod
    def from_name(cls, name: str) -> NoiseProtocol:
        """Parse a protocol name.

        Args:
            name: ``Noise_<pattern>_<dh>_<cipher>_<hash>``.

        Returns:
            The protocol.

        Raises:
            ValueError: the name is malformed or names something unsupported.
        """
        return _parse_protocol(name)

    @property
    def dh_function(self) -> DHFunction:
        """The ``DHFunction`` object for ``dh``."""
        return get_dh(self.dh)


@functools.lru_cache(maxsize=64)
def _parse_protocol(name: str) -> NoiseProtocol:
    # Cached (the result is frozen): a server parses the same name for every
    # handshake, and the handshake rate is a benchmark target (docs/benchmarks.md).
    parts = name.split("_")
    if len(parts) != 5 or parts[0] != "Noise" or not name.isascii():
        raise ValueError(f"not a Noise protocol name: {name!r}")
    _, pattern_name, dh_name, cipher, hash_name = parts
    pattern = _parse_pattern(pattern_name)
    get_dh(dh_name)
    if cipher not in _CIPHERS:
        raise ValueError(f"unsupported cipher {cipher!r}")
    if hash_name not in _HASHES:
        raise ValueError(f"unsupported hash {hash_name!r}")
    return NoiseProtocol(
        name, pattern, dh_name, cast(CipherName, cipher), cast(HashName, hash_name)
    )


class CipherState:
    """A cipher key ``k`` and nonce counter ``n`` (rev 34 §5.1).

    Without a key, encryption and decryption return their input unchanged,
    as the specification requires during the early handshake.

    Args:
        cipher: ``"AESGCM"`` or ``"ChaChaPoly"``.
        key: the 32-byte key, or ``None`` for an empty state.

    Raises:
        ValueError: the key is not 32 bytes.
    """

    __slots__ = ("_aead", "_cipher", "_key", "_n")

    def __init__(self, cipher: CipherName, key: bytes | None = None) -> None:
        self._cipher: CipherName = cipher
        self._key = key
        self._aead = None if key is None else Aead(cipher, key)
        self._n = 0

    def __repr__(self) -> str:
        return f"CipherState({self._cipher!r}, has_key={self.has_key()}, n={self._n})"

    @property
    def cipher(self) -> CipherName:
        """The cipher name."""
        return self._cipher

    @property
    def key(self) -> bytes | None:
        """The current key, or ``None`` if the state is empty."""
        return self._key

    @property
    def n(self) -> int:
        """The next nonce to use."""
        return self._n

    def has_key(self) -> bool:
        """Return whether a key is set.

        Returns:
            ``True`` if ``k`` is non-empty.
        """
        return self._aead is not None

    def set_nonce(self, n: int) -> None:
        """Set the nonce counter, ``SetNonce(n)``.

        Args:
            n: the next nonce, ``0 <= n <= 2**64 - 1``.

        Raises:
            ValueError: ``n`` is out of range.
        """
        if not 0 <= n <= MAX_NONCE:
            raise ValueError(f"nonce out of range: {n}")
        self._n = n

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt under the next nonce, ``EncryptWithAd(ad, plaintext)``.

        Args:
            ad: associated data.
            plaintext: the data to encrypt.

        Returns:
            Ciphertext and tag, or ``plaintext`` itself if no key is set.

        Raises:
            LocalProtocolError: the nonce space is used up (``n`` reached
                ``2**64 - 1``, which Noise reserves); rekey or rehandshake
                long before this.
        """
        aead = self._aead
        if aead is None:
            return plaintext
        n = self._n
        if n >= MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted")
        ciphertext = aead.seal(n, ad, plaintext)
        self._n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt under the next nonce, ``DecryptWithAd(ad, ciphertext)``.

        The nonce advances only if decryption succeeds.

        Args:
            ad: associated data.
            ciphertext: ciphertext and tag.

        Returns:
            The plaintext, or ``ciphertext`` itself if no key is set.

        Raises:
            DecryptError: the tag did not verify.
            LocalProtocolError: the nonce space is used up.
        """
        aead = self._aead
        if aead is None:
            return ciphertext
        n = self._n
        if n >= MAX_NONCE:
            raise LocalProtocolError("nonce space exhausted")
        plaintext = aead.open(n, ad, ciphertext)
        self._n = n + 1
        return plaintext

    def rekey(self) -> None:
        """Replace the key with ``REKEY(k)`` (rev 34 §4.2); ``n`` is kept.

        Raises:
            LocalProtocolError: no key is set.
        """
        if self._aead is None:
            raise LocalProtocolError("rekey without a key")
        key = self._aead.rekey()
        self._key = key
        self._aead = Aead(self._cipher, key)


class SymmetricState:
    """The chaining key, handshake hash and cipher state (rev 34 §5.2).

    Construction runs ``InitializeSymmetric(protocol_name)``.

    Args:
        protocol_name: the full Noise protocol name (ASCII).
        cipher: the cipher name.
        hash_name: the hash name.

    Raises:
        ValueError: the hash or cipher is unknown or the name is not ASCII.
    """

    __slots__ = ("_cipher", "_cipher_state", "_ck", "_h", "_hash", "_hash_len")

    def __init__(self, protocol_name: str, *, cipher: CipherName, hash_name: HashName) -> None:
        self._hash: HashName = hash_name
        self._hash_len = hash_len(hash_name)
        self._cipher: CipherName = cipher
        self._cipher_state = CipherState(cipher)
        self._ck = b""
        self._h = b""
        self.initialize_symmetric(protocol_name)

    @property
    def ck(self) -> bytes:
        """The chaining key."""
        return self._ck

    @property
    def h(self) -> bytes:
        """The handshake hash."""
        return self._h

    def has_key(self) -> bool:
        """Return whether the inner cipher state has a key.

        Returns:
            ``True`` once any ``mix_key`` or ``mix_key_and_hash`` ran.
        """
        return self._cipher_state.has_key()

    def initialize_symmetric(self, protocol_name: str) -> None:
        """Reset to ``InitializeSymmetric(protocol_name)``.

        ``h`` is the name zero-padded to ``HASHLEN`` if it fits, otherwise
        its hash; ``ck = h``; the cipher state is emptied.

        Args:
            protocol_name: the full Noise protocol name.

        Raises:
            ValueError: the name is not ASCII.
        """
        name = protocol_name.encode("ascii")
        if len(name) <= self._hash_len:
            h = name.ljust(self._hash_len, b"\x00")
        else:
            h = digest(self._hash, name)
        self._h = h
        self._ck = h
        self._cipher_state = CipherState(self._cipher)

    def _truncate(self, key: bytes) -> bytes:
        # Rev 34 §5.2: with a 64-byte hash, cipher keys are the first 32 bytes.
        return key[:KEY_LEN]

    def mix_key(self, input_key_material: bytes) -> None:
        """``MixKey``: fold key material into ``ck`` and set a new cipher key.

        Args:
            input_key_material: a DH output or an ephemeral public key.
        """
        self._ck, temp_k = noise_hkdf(self._hash, self._ck, input_key_material, 2)
        self._cipher_state = CipherState(self._cipher, self._truncate(temp_k))

    def mix_hash(self, data: bytes) -> None:
        """``MixHash``: ``h = HASH(h || data)``.

        Args:
            data: the bytes to absorb.
        """
        self._h = digest(self._hash, self._h + data)

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        """``MixKeyAndHash``: used for ``psk`` tokens.

        Args:
            input_key_material: the pre-shared key.
        """
        self._ck, temp_h, temp_k = noise_hkdf(self._hash, self._ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self._cipher_state = CipherState(self._cipher, self._truncate(temp_k))

    def get_handshake_hash(self) -> bytes:
        """``GetHandshakeHash``.

        Returns:
            The current ``h``.
        """
        return self._h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """``EncryptAndHash``: encrypt with ``h`` as associated data, then mix.

        Args:
            plaintext: the data to encrypt.

        Returns:
            The ciphertext (``plaintext`` itself while there is no key).

        Raises:
            LocalProtocolError: the nonce space is used up.
        """
        ciphertext = self._cipher_state.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """``DecryptAndHash``: decrypt with ``h`` as associated data, then mix.

        Args:
            ciphertext: the data to decrypt.

        Returns:
            The plaintext.

        Raises:
            DecryptError: the tag did not verify.
            LocalProtocolError: the nonce space is used up.
        """
        plaintext = self._cipher_state.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """``Split``: derive the two transport cipher states.

        Returns:
            ``(initiator_to_responder, responder_to_initiator)``.
        """
        temp_k1, temp_k2 = noise_hkdf(self._hash, self._ck, b"", 2)
        return (
            CipherState(self._cipher, self._truncate(temp_k1)),
            CipherState(self._cipher, self._truncate(temp_k2)),
        )


class HandshakeState:
    """One side of a Noise handshake (rev 34 §5.3).

    Construction runs ``Initialize``: ``InitializeSymmetric``, then
    ``MixHash(prologue)``, then the pre-message public keys.

    Args:
        protocol: a ``NoiseProtocol`` or its name.
        initiator: ``True`` for the initiator.
        prologue: bytes both sides must agree on; mixed into ``h``.
        s: the local static private key, if the pattern uses one.
        e: a fixed local ephemeral private key.  Only for test vectors and
            pre-message ``e``; otherwise one is generated when the ``e``
            token is written.
        rs: the peer's static public key, exactly when the peer's
            pre-message holds ``s``.
        re: the peer's ephemeral public key, exactly when the peer's
            pre-message holds ``e``.
        psks: one 32-byte key per ``psk`` token, in pattern order.

    Raises:
        ValueError: the protocol name is unsupported; a key has the wrong
            length; a key the pattern needs is missing; ``rs``/``re`` is
            given although the pattern does not take it in advance (it would
            be silently replaced, so the caller would not get the peer
            authentication they expect); or the number of psks is wrong.
    """

    __slots__ = (
        "_dh",
        "_e",
        "_failed",
        "_index",
        "_initiator",
        "_protocol",
        "_psk_mode",
        "_psks",
        "_re",
        "_rs",
        "_s",
        "_split_done",
        "_symmetric",
    )

    def __init__(
        self,
        protocol: NoiseProtocol | str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        s: bytes | None = None,
        e: bytes | None = None,
        rs: bytes | None = None,
        re: bytes | None = None,
        psks: Sequence[bytes] = (),
    ) -> None:
        if isinstance(protocol, str):
            protocol = NoiseProtocol.from_name(protocol)
        pattern = protocol.pattern
        dh = get_dh(protocol.dh)
        self._protocol = protocol
        self._dh = dh
        self._initiator = initiator
        self._index = 0
        self._failed = False
        self._split_done = False
        self._psk_mode = pattern.psk_count > 0

        if initiator:
            local_pre, remote_pre = pattern.initiator_premessage, pattern.responder_premessage
        else:
            local_pre, remote_pre = pattern.responder_premessage, pattern.initiator_premessage
        sent = pattern.messages[0 if initiator else 1 :: 2]
        if s is None and ("s" in local_pre or any("s" in message for message in sent)):
            raise ValueError(f"{pattern.name} needs a local static key (s)")
        if e is None and "e" in local_pre:
            raise ValueError(f"{pattern.name} needs a local pre-message ephemeral key (e)")
        for key, tok, label in ((rs, "s", "rs"), (re, "e", "re")):
            if (key is None) == (tok in remote_pre):
                need = "needs" if key is None else "does not take"
                raise ValueError(f"{pattern.name} {need} a remote key {label} in advance")
            if key is not None and len(key) != dh.pubkey_len:
                raise ValueError(f"{label} must be {dh.pubkey_len} bytes")
        if len(psks) != pattern.psk_count:
            raise ValueError(f"{pattern.name} needs {pattern.psk_count} psks, got {len(psks)}")
        if any(len(psk) != PSK_LEN for psk in psks):
            raise ValueError(f"each psk must be {PSK_LEN} bytes")

        self._s: KeyPair | None = None if s is None else dh.from_private(s)
        self._e: KeyPair | None = None if e is None else dh.from_private(e)
        self._rs = rs
        self._re = re
        self._psks = list(psks)

        symmetric = SymmetricState(protocol.name, cipher=protocol.cipher, hash_name=protocol.hash)
        self._symmetric = symmetric
        symmetric.mix_hash(prologue)
        # Rev 34 §7.3: the initiator's pre-message first, then the responder's.
        premessages = (
            (pattern.initiator_premessage, initiator),
            (pattern.responder_premessage, not initiator),
        )
        for pre, local in premessages:
            for tok in pre:
                public = self._premessage_key(tok, local)
                symmetric.mix_hash(public)
                if tok == "e" and self._psk_mode:
                    symmetric.mix_key(public)

    def _premessage_key(self, tok: Token, local: bool) -> bytes:
        if local:
            pair = self._s if tok == "s" else self._e
            key = None if pair is None else pair.public
        else:
            key = self._rs if tok == "s" else self._re
        assert key is not None  # __init__ checked every pre-message key
        return key

    def __repr__(self) -> str:
        role = "initiator" if self._initiator else "responder"
        return f"HandshakeState({self._protocol.name!r}, {role}, message={self._index})"

    @property
    def protocol(self) -> NoiseProtocol:
        """The protocol being run."""
        return self._protocol

    @property
    def initiator(self) -> bool:
        """Whether this side is the initiator."""
        return self._initiator

    @property
    def complete(self) -> bool:
        """Whether every handshake message has been written or read."""
        return self._index == len(self._protocol.pattern.messages)

    @property
    def is_my_turn(self) -> bool:
        """Whether the next handshake message is ours to write."""
        return not self.complete and (self._index % 2 == 0) == self._initiator

    @property
    def handshake_hash(self) -> bytes:
        """The current handshake hash ``h``; the channel binding once complete."""
        return self._symmetric.get_handshake_hash()

    @property
    def chaining_key(self) -> bytes:
        """The current chaining key ``ck``."""
        return self._symmetric.ck

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once known."""
        return self._rs

    @property
    def remote_ephemeral(self) -> bytes | None:
        """The peer's ephemeral public key (raw, unvalidated), once received."""
        return self._re

    @property
    def local_ephemeral_public(self) -> bytes | None:
        """Our ephemeral public key, once generated (or if fixed)."""
        return None if self._e is None else self._e.public

    def _check_turn(self, writing: bool) -> None:
        if self._failed:
            raise LocalProtocolError("the handshake already failed")
        if self.complete:
            raise LocalProtocolError("the handshake is complete")
        if self.is_my_turn != writing:
            raise LocalProtocolError(
                "it is the peer's turn to write" if writing else "it is our turn to write"
            )

    def _layout(self, tokens: tuple[Token, ...]) -> tuple[int, bool]:
        """Return (bytes before the payload, whether the payload gets a tag)."""
        has_key = self._symmetric.has_key()
        size = 0
        pubkey_len = self._dh.pubkey_len
        for tok in tokens:
            if tok == "e":
                size += pubkey_len
                has_key = has_key or self._psk_mode
            elif tok == "s":
                size += pubkey_len + (TAG_LEN if has_key else 0)
            else:
                has_key = True
        return size, has_key

    def _dh_token(self, tok: Token) -> bytes:
        # Rev 34 §5.3: "es" is DH(e, rs) for the initiator, DH(s, re) for the
        # responder; "se" the mirror image.
        if tok == "ee":
            local, remote = self._e, self._re
        elif tok == "ss":
            local, remote = self._s, self._rs
        elif (tok == "es") == self._initiator:
            local, remote = self._e, self._rs
        else:
            local, remote = self._s, self._re
        if local is None or remote is None:  # impossible for a valid pattern
            raise LocalProtocolError(f"{tok} token without both keys")
        return self._dh.dh(local, remote)

    def write_message(self, payload: bytes = b"") -> bytes:
        """Write the next handshake message, ``WriteMessage(payload)``.

        Args:
            payload: application data to carry; encrypted once a key exists.

        Returns:
            The message to send.

        Raises:
            LocalProtocolError: it is not our turn, the handshake is over or
                failed, or the message would exceed 65535 bytes.
            HandshakeFailed: a DH with a peer key failed (invalid key).
        """
        self._check_turn(writing=True)
        tokens = self._protocol.pattern.messages[self._index]
        size, tagged = self._layout(tokens)
        if size + len(payload) + (TAG_LEN if tagged else 0) > MAX_MESSAGE_LEN:
            raise LocalProtocolError("handshake message would exceed 65535 bytes")
        symmetric = self._symmetric
        parts: list[bytes] = []
        try:
            for tok in tokens:
                if tok == "e":
                    if self._e is None:
                        self._e = self._dh.generate()
                    public = self._e.public
                    parts.append(public)
                    symmetric.mix_hash(public)
                    if self._psk_mode:
                        symmetric.mix_key(public)
                elif tok == "s":
                    assert self._s is not None  # __init__ checked the keys
                    parts.append(symmetric.encrypt_and_hash(self._s.public))
                elif tok == "psk":
                    symmetric.mix_key_and_hash(self._psks.pop(0))
                else:
                    symmetric.mix_key(self._dh_token(tok))
            parts.append(symmetric.encrypt_and_hash(payload))
        except BaseException:
            self._failed = True
            raise
        self._index += 1
        return b"".join(parts)

    def read_message(self, message: bytes) -> bytes:
        """Read the peer's next handshake message, ``ReadMessage(message)``.

        A received ``e`` is only length-checked here; it is validated by the
        DH function when a DH token uses it.

        Args:
            message: the message as received.

        Returns:
            The decrypted payload.

        Raises:
            LocalProtocolError: it is our turn, or the handshake is over or
                failed.
            HandshakeFailed: the message is too long or too short for its
                tokens, or a received public key is invalid.
            DecryptError: an encrypted static key or the payload did not
                authenticate (wrong psk, wrong key, tampering).
        """
        self._check_turn(writing=False)
        tokens = self._protocol.pattern.messages[self._index]
        symmetric = self._symmetric
        try:
            size, tagged = self._layout(tokens)
            if len(message) > MAX_MESSAGE_LEN:
                raise HandshakeFailed("handshake message longer than 65535 bytes")
            if len(message) < size + (TAG_LEN if tagged else 0):
                raise HandshakeFailed("handshake message too short")
            pubkey_len = self._dh.pubkey_len
            pos = 0
            for tok in tokens:
                if tok == "e":
                    # Keep the raw bytes: decoding waits for the first DH.
                    public = bytes(message[pos : pos + pubkey_len])
                    pos += pubkey_len
                    self._re = public
                    symmetric.mix_hash(public)
                    if self._psk_mode:
                        symmetric.mix_key(public)
                elif tok == "s":
                    end = pos + pubkey_len + (TAG_LEN if symmetric.has_key() else 0)
                    self._rs = symmetric.decrypt_and_hash(bytes(message[pos:end]))
                    pos = end
                elif tok == "psk":
                    symmetric.mix_key_and_hash(self._psks.pop(0))
                else:
                    symmetric.mix_key(self._dh_token(tok))
            payload = symmetric.decrypt_and_hash(bytes(message[pos:]))
        except BaseException:
            self._failed = True
            raise
        self._index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """Derive the transport cipher states, ``Split()``.

        May be called once: a second pair would reuse nonces.

        Returns:
            ``(initiator_to_responder, responder_to_initiator)``.  For
            one-way patterns only the first is used.

        Raises:
            LocalProtocolError: the handshake is not complete, failed, or
                was already split.
        """
        if self._failed or not self.complete:
            raise LocalProtocolError("split before the handshake completed")
        if self._split_done:
            raise LocalProtocolError("split called twice")
        self._split_done = True
        return self._symmetric.split()
