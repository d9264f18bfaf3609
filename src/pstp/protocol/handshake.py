"""PSTP-HS: the session handshake (docs/protocol.md §5).

Noise ``NNpsk0`` over P-256, AES-256-GCM and SHA-256, keyed by a pair key,
with an encrypted monotonic timestamp, a blinded key id, capability
negotiation inside the transcript, and explicit key confirmation::

    HS_INIT   I -> R   version, flags, kid, [nonce], e_I, AEAD(timestamp, versions, suites, ...)
    HS_RESP   R -> I   version, e_R, AEAD(suite, max_record, keepalive, responder id), confirm_R
    CONFIRM   I -> R   first record: confirm_I

The responder finds the pair key by trial-matching the key id, and decrypts
HS_INIT before it spends an ECDH; any failure up to then leaves it silent.
"""

from __future__ import annotations

import hmac
from bisect import bisect_left, insort
from collections.abc import Callable, Iterator

import msgspec

from pstp.crypto.kdf import hkdf_expand_sha256, hkdf_sha256, hmac_sha256, random_bytes
from pstp.exceptions import DecryptError, HandshakeFailed, LocalProtocolError, RemoteProtocolError
from pstp.protocol.config import Config
from pstp.protocol.mqtt import rendezvous_id
from pstp.protocol.noise import HandshakeState
from pstp.wire.frames import (
    HS_FLAG_DISCOVERY,
    HS_FLAG_RESPONDER_ID,
    NONCE_LEN,
    P256_POINT_LEN,
    HsInit,
    HsResp,
    InitPayload,
    RespPayload,
    hs_init_header,
)

__all__ = [
    "MAX_AHEAD_NS",
    "NOISE_PROTOCOL",
    "PAIR_KEY_LEN",
    "REPLAY_SLOTS",
    "REPLAY_SPAN_NS",
    "DiscoveryBinding",
    "DiscoveryLookup",
    "InitiatorHandshake",
    "KeyRing",
    "PairKey",
    "PeerKey",
    "ResponderHandshake",
    "SessionKeys",
    "build_prologue",
    "make_kid",
]

#: The Noise protocol the handshake instantiates (§5).
NOISE_PROTOCOL = "Noise_NNpsk0_P256_AESGCM_SHA256"
#: Pair keys are 32 bytes from a CSPRNG (§5.2).
PAIR_KEY_LEN = 32
#: How far (ns) below the newest accepted timestamp an HS_INIT may still be
#: accepted once: concurrent handshakes from one key arrive in any order (§5.1).
REPLAY_SPAN_NS = 30_000_000_000
#: At most this many accepted timestamps are remembered per pair key (§5.1).
REPLAY_SLOTS = 1024
#: How far (ns) ahead of the responder's wall clock an HS_INIT timestamp may be (§5.1):
#: 5 minutes.  Further ahead, one HS_INIT would close the guard's window to every
#: later, honest one of that key until the clock caught up (years, say).
MAX_AHEAD_NS = 300_000_000_000

# Domain-separation labels (§5.2, §5.5).  Each use of the pair key or of the
# final chaining key gets its own label, so no value is valid in two roles.
LABEL_PSK = b"PSTP/2 psk"
LABEL_KID = b"PSTP/2 key id"
LABEL_PROLOGUE = b"PSTP/2 prologue"
LABEL_CONFIRM_R = b"PSTP/2 confirm responder"
LABEL_CONFIRM_I = b"PSTP/2 confirm initiator"
LABEL_EXPORTER = b"PSTP/2 exporter"
_KID_RANDOM_LEN = 16

#: What an initiator saw in discovery: (nonce, raw PING, raw PONG), §5.3.
DiscoveryBinding = tuple[bytes, bytes, bytes]
#: Responder callback: the PING and PONG it exchanged under a nonce, if any.
DiscoveryLookup = Callable[[bytes], tuple[bytes, bytes] | None]


class PairKey(bytes):
    """A 32-byte pair key, marked as such: APIs given one run PSTP-HS (§5).

    Plain ``bytes`` given to the PPCP-compatible API are treated as a human
    passphrase (PSTP-PAKE, §15), so a key must be wrapped to be used as a key.

    Raises:
        ValueError: not exactly 32 bytes.
    """

    def __new__(cls, value: bytes) -> PairKey:
        if len(value) != PAIR_KEY_LEN:
            raise ValueError("a pair key is exactly 32 bytes")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return "PairKey(<32 bytes>)"

    # bytes.__str__ does not call __repr__: without this, str(), f"{key}" and
    # logging's %s would print the key.
    __str__ = __repr__


def _derive(pair_key: bytes, label: bytes) -> bytes:
    if len(pair_key) != PAIR_KEY_LEN:
        raise ValueError("a pair key is exactly 32 bytes")
    return hkdf_sha256(pair_key, salt=None, info=label, length=32)


def make_kid(kid_key: bytes, r: bytes) -> bytes:
    """Key id ``r || HMAC-SHA256(kid_key, r)[:16]`` (§5.2)."""
    return r + hmac_sha256(kid_key, r)[:16]


class PeerKey(msgspec.Struct):
    """A pair key as the responder holds it, with its replay guard (§5.1).

    The guard accepts a timestamp once: above ``floor``, not more than
    :data:`REPLAY_SPAN_NS` below the newest accepted, and not accepted before.
    Every timestamp ever accepted is either remembered or at or below
    ``floor``, so memory stays bounded (:data:`REPLAY_SLOTS`) without letting a
    replay through.

    Attributes:
        device_id: the peer's device id.
        psk: the Noise psk derived from the pair key.
        kid_key: the key-id MAC key derived from the pair key.
        last_timestamp: the newest HS_INIT timestamp accepted.
        floor: timestamps at or below this are refused.
        token: the id of the token whose secret this key comes from (§20), or
            None for the peer's pair key.
    """

    device_id: str
    psk: bytes
    kid_key: bytes
    last_timestamp: int = 0
    floor: int = 0
    _recent: list[int] = msgspec.field(default_factory=list)
    token: str | None = None
    #: The key's MQTT rendezvous id (§19.3), derived from the pair key.
    rid: str = ""

    def __repr__(self) -> str:  # never the keys
        return f"PeerKey(device_id={self.device_id!r}, last_timestamp={self.last_timestamp})"

    @property
    def ring_key(self) -> str:
        """Its entry in a :class:`KeyRing`: the device id, or ``token:ID``."""
        return self.device_id if self.token is None else "token:" + self.token

    def fresh(self, timestamp: int) -> bool:
        """True if ``timestamp`` passes the replay guard (nothing is recorded)."""
        if timestamp <= self.floor:
            return False
        if timestamp > self.last_timestamp:
            return True
        if self.last_timestamp - timestamp >= REPLAY_SPAN_NS:
            return False
        i = bisect_left(self._recent, timestamp)
        return i == len(self._recent) or self._recent[i] != timestamp

    def accept(self, timestamp: int) -> None:
        """Record ``timestamp`` as used (call only after :meth:`fresh` said yes)."""
        insort(self._recent, timestamp)
        self.last_timestamp = max(self.last_timestamp, timestamp)
        oldest = self.last_timestamp - REPLAY_SPAN_NS
        drop = bisect_left(self._recent, oldest + 1)
        drop = max(drop, len(self._recent) - REPLAY_SLOTS)
        if drop:
            self.floor = max(self.floor, self._recent[drop - 1])
            del self._recent[:drop]

    @classmethod
    def from_pair_key(cls, device_id: str, pair_key: bytes) -> PeerKey:
        """Derive the per-use keys from a 32-byte pair key.

        Raises:
            ValueError: the pair key is not 32 bytes.
        """
        return cls(
            device_id,
            _derive(pair_key, LABEL_PSK),
            _derive(pair_key, LABEL_KID),
            rid=rendezvous_id(pair_key),
        )

    def matches(self, kid: bytes) -> bool:
        """True if ``kid`` was made with this key (constant-time compare)."""
        expected = hmac_sha256(self.kid_key, kid[:_KID_RANDOM_LEN])[:16]
        return hmac.compare_digest(expected, kid[_KID_RANDOM_LEN:])


class KeyRing:
    """The responder's pair keys, found by key id (§5.2).

    The ring is shared by every connection of a server; it also holds the
    replay guard of each key (:class:`PeerKey`).
    """

    def __init__(self) -> None:
        self._peers: dict[str, PeerKey] = {}

    def add(self, device_id: str, pair_key: bytes, last_timestamp: int = 0) -> None:
        """Add or replace a peer's pair key.

        Raises:
            ValueError: the pair key is not 32 bytes.
        """
        peer = PeerKey.from_pair_key(device_id, pair_key)
        old = self._peers.get(device_id)
        # A new ring entry (a restart, or a new key for a known device) refuses
        # everything up to the newest timestamp seen: the window starts closed.
        newest = max(last_timestamp, old.last_timestamp if old else 0)
        peer.last_timestamp = peer.floor = newest
        self._peers[device_id] = peer

    def add_token(
        self, token_id: str, device_id: str, secret: bytes, last_timestamp: int = 0
    ) -> None:
        """Add a token's key (§20): its secret is used as a pair key is, for ``device_id``.

        It sits beside the peer's pair key (a handshake with either
        authenticates as ``device_id``; :attr:`PeerKey.token` tells which)
        and has its own replay guard, closed up to ``last_timestamp``.

        Raises:
            ValueError: the secret is not 32 bytes.
        """
        key = PeerKey.from_pair_key(device_id, secret)
        key.token = token_id
        key.last_timestamp = key.floor = last_timestamp
        self._peers.setdefault(key.ring_key, key)

    def get(self, ring_key: str) -> PeerKey | None:
        """The key at ``ring_key`` (a device id, or ``token:ID``), or None."""
        return self._peers.get(ring_key)

    def tokens(self) -> set[str]:
        """The ids of the tokens in the ring."""
        return {p.token for p in self._peers.values() if p.token is not None}

    def subset(self, rid: str) -> KeyRing:
        """A ring of the keys whose MQTT rendezvous id is ``rid`` (§19.3).

        The keys are the same objects, replay guards and all: a handshake through
        the subset is guarded as one through the whole ring.
        """
        ring = KeyRing()
        ring._peers = {k: p for k, p in self._peers.items() if p.rid == rid}
        return ring

    def remove(self, device_id: str) -> None:
        """Forget a peer's pair key, or a token's key as ``token:ID`` (no error if unknown)."""
        self._peers.pop(device_id, None)

    def take(self, device_id: str) -> PeerKey | None:
        """Remove a peer's key and hand it over, replay guard and all (``None``: unknown).

        A device suspends a flooding peer this way: its HS_INITs then match no
        key and cost no key exchange; :meth:`put` brings the same key back.
        """
        return self._peers.pop(device_id, None)

    def put(self, peer: PeerKey) -> None:
        """Bring back a key :meth:`take` removed, unless that device got a new one meanwhile."""
        self._peers.setdefault(peer.ring_key, peer)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._peers

    def __iter__(self) -> Iterator[PeerKey]:
        return iter(list(self._peers.values()))

    def __len__(self) -> int:
        return len(self._peers)

    def find(self, kid: bytes) -> PeerKey | None:
        """Return the peer whose key made ``kid``, trying every key.

        Every key is tried even after a match, so the time taken does not
        depend on which peer matched.
        """
        found = None
        for peer in self._peers.values():
            if peer.matches(kid) and found is None:
                found = peer
        return found


def build_prologue(init_header: bytes, responder_id: str | None, ping: bytes, pong: bytes) -> bytes:
    """The Noise prologue (§5.3): label, HS_INIT cleartext header, ids, discovery bytes."""
    rid = b"" if responder_id is None else responder_id.encode("utf-8")
    return b"".join(
        (
            LABEL_PROLOGUE,
            len(init_header).to_bytes(2, "big"),
            init_header,
            len(rid).to_bytes(1, "big"),
            rid,
            len(ping).to_bytes(2, "big"),
            ping,
            len(pong).to_bytes(2, "big"),
            pong,
        )
    )


class SessionKeys(msgspec.Struct, frozen=True):
    """What a completed handshake hands to the record layer (§5.5).

    Attributes:
        suite: the negotiated record suite.
        i2r_key: initiator-to-responder key, epoch 0.
        r2i_key: responder-to-initiator key, epoch 0.
        session_id: the final handshake hash ``h``.
        exporter_secret: secret from which session-bound values are derived (§5.6).
        peer_max_record: the largest record body the peer accepts.
        keepalive_ms: the responder's heartbeat interval hint (0 = none).
        responder_id: the responder's device id as it stated it.
    """

    suite: int
    i2r_key: bytes
    r2i_key: bytes
    session_id: bytes
    exporter_secret: bytes
    peer_max_record: int
    keepalive_ms: int
    responder_id: str

    def __repr__(self) -> str:  # never the keys
        return (
            f"SessionKeys(suite={self.suite}, session_id={self.session_id.hex()}, "
            f"peer_max_record={self.peer_max_record}, keepalive_ms={self.keepalive_ms}, "
            f"responder_id={self.responder_id!r})"
        )


def _confirm(ck: bytes, label: bytes, h: bytes) -> bytes:
    return hmac_sha256(hkdf_expand_sha256(ck, label, 32), h)


def _split(noise: HandshakeState) -> tuple[bytes, bytes]:
    i2r, r2i = noise.split()
    assert i2r.key is not None and r2i.key is not None  # Split always yields keys
    return i2r.key, r2i.key


def _negotiated_version(offered: tuple[int, ...], ours: tuple[int, ...]) -> int | None:
    common = set(offered) & set(ours)
    return max(common) if common else None


class InitiatorHandshake:
    """The initiator's half of PSTP-HS.

    Args:
        pair_key: the 32-byte pair key.
        config: versions, suites and limits offered.
        timestamp: nanoseconds since the Unix epoch; must grow with every
            handshake under this pair key (§5.1).
        responder_id: the device id we expect to reach, bound into the
            prologue; ``None`` if unknown (the responder then states it).
        discovery: the (nonce, PING, PONG) that led here, bound into the
            prologue; ``None`` when the address came from elsewhere.
        ephemeral: fixed ephemeral private key (test vectors only).
        kid_random: fixed key-id randomness (test vectors only).
        version: the header version; default the highest we speak (tests only).
        initiator_id: our own device id, stated (encrypted) in HS_INIT.

    Raises:
        ValueError: bad key or nonce length.
    """

    def __init__(
        self,
        pair_key: bytes,
        config: Config,
        *,
        timestamp: int,
        responder_id: str | None = None,
        discovery: DiscoveryBinding | None = None,
        ephemeral: bytes | None = None,
        kid_random: bytes | None = None,
        version: int | None = None,
        initiator_id: str = "",
    ) -> None:
        if responder_id is not None and not 0 < len(responder_id.encode()) <= 64:
            raise ValueError("a device id is 1 to 64 bytes of UTF-8")
        peer = PeerKey.from_pair_key(responder_id or "", pair_key)
        self._config = config
        self._responder_id = responder_id
        flags = (HS_FLAG_RESPONDER_ID if responder_id is not None else 0) | (
            HS_FLAG_DISCOVERY if discovery is not None else 0
        )
        nonce, ping, pong = discovery if discovery is not None else (None, b"", b"")
        if nonce is not None and len(nonce) != NONCE_LEN:
            raise ValueError("discovery nonce must be 16 bytes")
        r = kid_random if kid_random is not None else random_bytes(_KID_RANDOM_LEN)
        self._version = version if version is not None else max(config.versions)
        kid = make_kid(peer.kid_key, r)
        header = hs_init_header(self._version, flags, kid, nonce)
        self._noise = HandshakeState(
            NOISE_PROTOCOL,
            initiator=True,
            prologue=build_prologue(header, responder_id, ping, pong),
            psks=[peer.psk],
            e=ephemeral,
        )
        payload = InitPayload(
            timestamp=timestamp,
            versions=tuple(config.versions),
            suites=tuple(int(s) for s in config.suites),
            max_record=config.max_record_size,
            service=config.service,
            initiator_id=initiator_id,
        )
        raw = self._noise.write_message(payload.serialize())
        eph, ct = raw[:P256_POINT_LEN], raw[P256_POINT_LEN:]
        self.message = HsInit(self._version, flags, kid, nonce, eph, ct)
        #: confirm_I, once HS_RESP verified: the "response" of the product story.
        self.confirm: bytes = b""
        #: The responder's fresh ephemeral e_R: the "challenge" of the product story.
        self.challenge: bytes = b""

    def read_response(self, body: bytes) -> SessionKeys:
        """Process HS_RESP and check confirm_R.

        On success ``self.confirm`` holds confirm_I for the first record.

        Raises:
            HandshakeFailed: malformed, wrong version, bad point, bad
                confirm_R, or a suite we did not offer.
            DecryptError: the payload did not decrypt.
        """
        try:
            msg = HsResp.parse(body)
            if msg.version != self._version:
                raise HandshakeFailed("responder answered with another version")
            plain = self._noise.read_message(msg.ephemeral + msg.ciphertext)
            payload = RespPayload.parse(plain)
        except (HandshakeFailed, DecryptError):
            raise
        except RemoteProtocolError as exc:
            raise HandshakeFailed("malformed HS_RESP") from exc
        ck, h = self._noise.chaining_key, self._noise.handshake_hash
        if not hmac.compare_digest(_confirm(ck, LABEL_CONFIRM_R, h), msg.confirm):
            raise HandshakeFailed("responder key confirmation failed")
        if payload.suite not in self._config.suites:
            raise HandshakeFailed("responder chose a suite we did not offer")
        if self._responder_id is not None and payload.responder_id != self._responder_id:
            raise HandshakeFailed("responder stated another device id")
        if payload.max_record < 1024:
            raise HandshakeFailed("responder record limit below the minimum")
        self.confirm = _confirm(ck, LABEL_CONFIRM_I, h)
        self.challenge = msg.ephemeral
        i2r, r2i = _split(self._noise)
        return SessionKeys(
            suite=payload.suite,
            i2r_key=i2r,
            r2i_key=r2i,
            session_id=h,
            exporter_secret=hkdf_expand_sha256(ck, LABEL_EXPORTER, 32),
            peer_max_record=payload.max_record,
            keepalive_ms=payload.keepalive_ms,
            responder_id=payload.responder_id,
        )


class ResponderHandshake:
    """The responder's half of PSTP-HS.

    Args:
        keyring: the pair keys we accept, with their replay guards.
        config: versions, suites and limits we accept.
        own_id: our device id, stated in HS_RESP and checked against the prologue.
        discovery_lookup: finds the PING/PONG we exchanged under a nonce.
        keepalive_ms: the heartbeat interval we suggest.
        ephemeral: fixed ephemeral private key (test vectors only).
        wall_clock: the responder's wall clock, nanoseconds since the Unix epoch
            (``time.time_ns``); an HS_INIT timestamp more than :data:`MAX_AHEAD_NS`
            ahead of it is refused.  ``None``: no bound (this core reads no clock;
            the drivers pass one, see :func:`pstp.clock.responder`).
    """

    def __init__(
        self,
        keyring: KeyRing,
        config: Config,
        *,
        own_id: str,
        discovery_lookup: DiscoveryLookup | None = None,
        keepalive_ms: int = 0,
        ephemeral: bytes | None = None,
        wall_clock: Callable[[], int] | None = None,
    ) -> None:
        self._wall_clock = wall_clock
        self._keyring = keyring
        self._config = config
        self._own_id = own_id
        self._lookup = discovery_lookup
        self._keepalive_ms = keepalive_ms
        self._ephemeral = ephemeral
        self._noise: HandshakeState | None = None
        self._init: InitPayload | None = None
        self._version = 0
        self.peer: PeerKey | None = None
        self._confirm_i = b""

    @property
    def service(self) -> str:
        """The service the initiator asked for (after :meth:`read_init`)."""
        return self._init.service if self._init is not None else ""

    @property
    def initiator_id(self) -> str:
        """The device id the initiator stated in HS_INIT (may be empty)."""
        return self._init.initiator_id if self._init is not None else ""

    def read_init(self, body: bytes) -> None:
        """Authenticate HS_INIT without any ECDH (§5.1).

        The replay guard of the matched key moves only when every check passes.

        Raises:
            HandshakeFailed: unknown key id, bad version, unknown discovery
                nonce, replayed or stale timestamp, a timestamp too far ahead of
                the wall clock, downgrade, no common suite.
            DecryptError: the payload did not decrypt.
            RemoteProtocolError: malformed.
        """
        msg = HsInit.parse(body)
        if msg.version not in self._config.versions:
            raise HandshakeFailed("unsupported version")
        peer = self._keyring.find(msg.kid)
        if peer is None:
            raise HandshakeFailed("unknown key id")
        ping = pong = b""
        if msg.discovery_nonce is not None:
            seen = self._lookup(msg.discovery_nonce) if self._lookup is not None else None
            if seen is None:
                raise HandshakeFailed("unknown discovery nonce")
            ping, pong = seen
        rid = self._own_id if msg.flags & HS_FLAG_RESPONDER_ID else None
        noise = HandshakeState(
            NOISE_PROTOCOL,
            initiator=False,
            prologue=build_prologue(msg.header_bytes(), rid, ping, pong),
            psks=[peer.psk],
            e=self._ephemeral,
        )
        payload = InitPayload.parse(noise.read_message(msg.ephemeral + msg.ciphertext))
        if not peer.fresh(payload.timestamp):
            raise HandshakeFailed("replayed or stale HS_INIT")
        if self._wall_clock is not None and payload.timestamp > self._wall_clock() + MAX_AHEAD_NS:
            raise HandshakeFailed("HS_INIT timestamp too far ahead of this clock")
        # Downgrade guard (§11): the header must carry the best common version.
        if _negotiated_version(payload.versions, self._config.versions) != msg.version:
            raise HandshakeFailed("version downgrade detected")
        if not any(s in payload.suites for s in self._config.suites):
            raise HandshakeFailed("no common cipher suite")
        if payload.max_record < 1024:
            raise HandshakeFailed("initiator record limit below the minimum")
        peer.accept(payload.timestamp)
        self.peer, self._noise, self._init, self._version = peer, noise, payload, msg.version

    def write_response(self) -> tuple[bytes, SessionKeys]:
        """Build HS_RESP (this is where the one ECDH happens).

        Returns:
            The HS_RESP frame and the session keys.

        Raises:
            LocalProtocolError: :meth:`read_init` has not succeeded.
            HandshakeFailed: the initiator's ephemeral is not a valid point.
        """
        if self._noise is None or self._init is None:
            raise LocalProtocolError("write_response before read_init")
        suite = int(next(s for s in self._config.suites if s in self._init.suites))
        payload = RespPayload(
            suite=suite,
            max_record=self._config.max_record_size,
            keepalive_ms=self._keepalive_ms,
            responder_id=self._own_id,
        )
        raw = self._noise.write_message(payload.serialize())
        ck, h = self._noise.chaining_key, self._noise.handshake_hash
        self._confirm_i = _confirm(ck, LABEL_CONFIRM_I, h)
        frame = HsResp(
            self._version,
            raw[:P256_POINT_LEN],
            raw[P256_POINT_LEN:],
            _confirm(ck, LABEL_CONFIRM_R, h),
        ).serialize()
        i2r, r2i = _split(self._noise)
        keys = SessionKeys(
            suite=suite,
            i2r_key=i2r,
            r2i_key=r2i,
            session_id=h,
            exporter_secret=hkdf_expand_sha256(ck, LABEL_EXPORTER, 32),
            peer_max_record=self._init.max_record,
            keepalive_ms=self._keepalive_ms,
            responder_id=self._own_id,
        )
        return frame, keys

    def check_confirm(self, confirm_i: bytes) -> None:
        """Verify confirm_I from the initiator's first record (§5.5).

        Raises:
            HandshakeFailed: it does not match.
        """
        if not self._confirm_i or not hmac.compare_digest(self._confirm_i, confirm_i):
            raise HandshakeFailed("initiator key confirmation failed")
