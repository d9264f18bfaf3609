"""Discovery, sans-I/O: a :class:`Responder` for devices and a :class:`Browser` for peers.

docs/protocol.md §8.  Datagrams go in with ``receive_datagram(data, addr,
now)``; answers come out of ``datagrams_to_send()``.  Malformed datagrams are
dropped silently and counted; answers are rate-limited per source and overall.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pstp.crypto.kdf import hmac_sha256, random_bytes
from pstp.discovery.packets import Caps, Ping, Pong
from pstp.exceptions import RemoteProtocolError

__all__ = [
    "KEYED_SHARE",
    "VERIFY_FACTOR",
    "Address",
    "Browser",
    "Found",
    "Responder",
    "discovery_tag",
]

#: (host, port) of a datagram's sender or destination.
Address = tuple[str, int]

_LABEL_DISCOVERY = b"PSTP/2 discovery"


def discovery_tag(kid_key: bytes, nonce: bytes) -> bytes:
    """The 16-byte proof in a stealth PING: ``HMAC(kid_key, label || nonce)[:16]`` (§8.2)."""
    return hmac_sha256(kid_key, _LABEL_DISCOVERY + nonce)[:16]


#: The part of the global answer budget kept for PINGs with a valid key tag (§8.3).
KEYED_SHARE = 0.25
#: Tagged PINGs checked per second past the shared budget, as a multiple of global_rate.
VERIFY_FACTOR = 4.0


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


def _refill(bucket: _Bucket, rate: float, now: float) -> _Bucket:
    bucket.tokens = min(rate, bucket.tokens + (now - bucket.stamp) * rate)
    bucket.stamp = now
    return bucket


class Responder:
    """Answers PINGs for one device.

    Args:
        device_id: our device id, sent in PONGs.
        port: the TCP port we serve PSTP/2 on.
        caps: capabilities to advertise.
        stealth_keys: when given, only PINGs proving one of these kid keys are
            answered (stealth mode, §8.2); called on each PING so key changes apply.
        rate: answers per second allowed per source address.
        burst: answers a source may get at once.
        global_rate: answers per second in total.
        remember: seconds a (PING, PONG) pair stays available to the handshake.
        max_remembered: most pairs kept (oldest dropped first).
        keys: the kid keys of our paired peers, to recognize PINGs that carry a
            valid key tag outside stealth mode too (default: ``stealth_keys``).
        keyed_share: the part of ``global_rate`` kept for PINGs with a valid key
            tag (§8.3): any PING may spend the rest, and a tagged PING that
            finds the rest spent is checked and answered from this reserve, so
            a spoofed flood of untagged PINGs does not hide us from a paired peer.
        verify_rate: tagged PINGs per second checked against the keys once the
            shared budget is spent (each check costs one HMAC per key).
    """

    def __init__(
        self,
        device_id: str,
        port: int,
        *,
        caps: int = Caps.AES_256_GCM | Caps.CHACHA20_POLY1305,
        stealth_keys: Callable[[], Iterable[bytes]] | None = None,
        rate: float = 2.0,
        burst: float = 5.0,
        global_rate: float = 200.0,
        remember: float = 120.0,
        max_remembered: int = 1024,
        keys: Callable[[], Iterable[bytes]] | None = None,
        keyed_share: float = KEYED_SHARE,
        verify_rate: float | None = None,
    ) -> None:
        Pong(b"\0" * 16, port, caps, device_id).serialize()  # validates id and port
        if not 0.0 <= keyed_share < 1.0:
            raise ValueError("keyed_share must be in [0, 1)")
        self.device_id = device_id
        self.port = port
        self.caps = caps
        self._stealth_keys = stealth_keys
        self._keys = keys if keys is not None else stealth_keys
        self._rate, self._burst = rate, burst
        self._global_rate = global_rate * (1.0 - keyed_share)
        self._global = _Bucket(self._global_rate, 0.0)
        self._keyed_rate = global_rate * keyed_share
        self._keyed = _Bucket(self._keyed_rate, 0.0)
        self._verify_rate = VERIFY_FACTOR * global_rate if verify_rate is None else verify_rate
        self._verify = _Bucket(self._verify_rate, 0.0)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._remember = remember
        self._max_remembered = max_remembered
        self._seen: OrderedDict[bytes, tuple[bytes, bytes, float]] = OrderedDict()
        self._out: list[tuple[bytes, Address]] = []
        #: Counters, for `pstp doctor` and tests.
        self.dropped_malformed = 0
        self.dropped_rate = 0
        self.dropped_stealth = 0
        self.dropped_replay = 0
        self.answered = 0
        #: Answers given from the reserve for PINGs with a valid key tag.
        self.answered_keyed = 0

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Handle one datagram; never raises for bad input."""
        try:
            ping = Ping.parse(data)
        except RemoteProtocolError:
            self.dropped_malformed += 1
            return
        # The rate limit comes first, so unauthenticated PINGs cannot make a
        # stealth responder spend one HMAC per pair key without bound (§8.3).
        admitted = self._allow(addr[0], ping, now)
        if admitted is None:
            self.dropped_rate += 1
            return
        self._expire(now)
        if ping.nonce in self._seen:
            # Each nonce is answered once: a replayed (even stealth) PING gets
            # nothing, and a stored pair cannot be overwritten by a copy.
            self.dropped_replay += 1
            return
        if ping.wanted & ~self.caps:
            return  # we lack what the querier needs
        if self._stealth_keys is not None and not admitted and not self._proves_key(ping):
            self.dropped_stealth += 1
            return
        pong = Pong(ping.nonce, self.port, self.caps, self.device_id).serialize()
        # Never larger than the PING (§8.1): a PONG is at most PONG_MAX_LEN bytes and
        # Ping.parse accepted at least PING_MIN_LEN, so this holds by construction.
        assert len(pong) <= len(data)
        self._out.append((pong, addr))
        self.answered += 1
        self._seen[ping.nonce] = (bytes(data), pong, now)
        self._expire(now)

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Return and forget the PONGs to send."""
        out, self._out = self._out, []
        return out

    def lookup(self, nonce: bytes, now: float | None = None) -> tuple[bytes, bytes] | None:
        """The (PING, PONG) we exchanged under ``nonce``, for the handshake prologue."""
        if now is not None:
            self._expire(now)
        seen = self._seen.get(nonce)
        return (seen[0], seen[1]) if seen is not None else None

    def _proves_key(self, ping: Ping, keys: Callable[[], Iterable[bytes]] | None = None) -> bool:
        keys = keys or self._stealth_keys
        if ping.kid_tag is None or keys is None:
            return False
        ok = False
        for key in keys():
            ok |= hmac.compare_digest(discovery_tag(key, ping.nonce), ping.kid_tag)
        return ok

    def _allow(self, host: str, ping: Ping, now: float) -> bool | None:
        """Spend the tokens a PING needs: ``None`` to drop it, True if its tag was proven.

        The shared global budget goes first; a PING with a key tag that finds it
        spent may spend a verification token, and if its tag is valid an answer
        from the keyed reserve (and then it needs no second check).
        """
        g = _refill(self._global, self._global_rate, now)
        b = self._buckets.get(host)
        if b is None:
            b = _Bucket(self._burst, now)
            self._buckets[host] = b
            if len(self._buckets) > 4096:
                self._buckets.popitem(last=False)  # least recently seen source
        else:
            self._buckets.move_to_end(host)
        b.tokens = min(self._burst, b.tokens + (now - b.stamp) * self._rate)
        b.stamp = now
        if b.tokens < 1:
            return None
        if g.tokens >= 1:
            g.tokens -= 1
            b.tokens -= 1
            return False
        if ping.kid_tag is None or self._keys is None:
            return None
        k = _refill(self._keyed, self._keyed_rate, now)
        v = _refill(self._verify, self._verify_rate, now)
        if k.tokens < 1 or v.tokens < 1:
            return None
        v.tokens -= 1
        if not self._proves_key(ping, self._keys):
            return None
        k.tokens -= 1
        b.tokens -= 1
        self.answered_keyed += 1
        return True

    def _expire(self, now: float) -> None:
        while self._seen:
            nonce, (_, _, when) = next(iter(self._seen.items()))
            if len(self._seen) <= self._max_remembered and now - when <= self._remember:
                break
            del self._seen[nonce]


@dataclass(frozen=True, slots=True)
class Found:
    """A device that answered.

    Attributes:
        device_id: the id it claims (confirmed only by the handshake).
        host: the address the PONG came from.
        port: the TCP port it says it serves.
        caps: its capabilities.
        nonce: our PING's nonce.
        ping: our PING, byte for byte.
        pong: its PONG, byte for byte.
    """

    device_id: str
    host: str
    port: int
    caps: int
    nonce: bytes
    ping: bytes
    pong: bytes

    @property
    def binding(self) -> tuple[bytes, bytes, bytes]:
        """(nonce, PING, PONG) for the handshake prologue (§5.3)."""
        return self.nonce, self.ping, self.pong


class Browser:
    """Builds one PING and collects the PONGs answering it.

    Args:
        wanted: capabilities we need (0 = any).
        kid_key: a pair key's key-id key, to be answered by stealth devices.
    """

    def __init__(self, *, wanted: int = 0, kid_key: bytes | None = None) -> None:
        self.nonce = random_bytes(16)
        tag = discovery_tag(kid_key, self.nonce) if kid_key is not None else None
        self.ping = Ping(self.nonce, wanted, tag).serialize()
        self._wanted = wanted
        self._found: dict[tuple[str, str, int], Found] = {}
        self.dropped = 0

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> Found | None:
        """Handle one datagram; returns a new device, or ``None``.  Never raises."""
        del now  # PONGs are matched by nonce; the caller owns the timeout
        try:
            pong = Pong.parse(data)
        except RemoteProtocolError:
            self.dropped += 1
            return None
        if pong.nonce != self.nonce or (pong.caps & self._wanted) != self._wanted:
            self.dropped += 1
            return None
        key = (pong.device_id, addr[0], pong.port)
        if key in self._found:
            return None
        found = Found(pong.device_id, addr[0], pong.port, pong.caps, self.nonce, self.ping, data)
        self._found[key] = found
        return found

    @property
    def found(self) -> list[Found]:
        """Every distinct device that answered, in order of arrival."""
        return list(self._found.values())
