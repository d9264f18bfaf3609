"""The pairing window: a short code that installs a pair key (docs/protocol.md §15, §16).

The serving device opens a window (``pstp pair --allow``): it shows a code
and a QR code, keeps only the SPAKE2+ verifier (w0, L), and closes after one
success, :data:`MAX_FAILURES` failed attempts or its timeout (10 minutes by default).  The other
device runs ``pstp pair HOST`` and types the code.  Over the resulting
PSTP-PAKE session both sides exchange their ids on a ``pair`` channel and
derive the same pair key from the session (``export("pair key")``), which
each stores in its configuration file (mode 0600).

Each wrong code is reported as it happens (:attr:`PairingWindow.on_failed`),
with the tries the window has left, so the device showing the code can say so.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

import msgspec

from pstp.asyncio.connection import Channel
from pstp.exceptions import PermissionDenied
from pstp.protocol.pake import PAIR_KEY_LABEL, PairHello, PakeVerifier
from pstp.settings import add_peer, format_address, load

__all__ = [
    "CODE_DIGITS",
    "MAX_FAILURES",
    "MAX_LINK_ADDRESSES",
    "Link",
    "PairingWindow",
    "code_uri",
    "generate_code",
    "link_uri",
    "normalize_code",
    "parse_link",
]

_log = logging.getLogger("pstp.pairing")

#: Digits in a generated code: 10^8 codes, 20 online guesses (Matter's numbers).
CODE_DIGITS = 8
#: Wrong codes a pairing window takes before it closes (docs/protocol.md §16.3).
MAX_FAILURES = 20
#: Addresses a pstp:// link carries at most (the first and 7 ``alt``): a QR code
#: stays small enough to scan from a terminal.
MAX_LINK_ADDRESSES = 8


def generate_code() -> str:
    """A fresh 8-digit code from the OS CSPRNG."""
    return "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))


def normalize_code(text: str) -> bytes:
    """The bytes of a code as typed: spaces, dashes and underscores dropped (``1234-5678``).

    Raises:
        ValueError: nothing left.
    """
    code = "".join(ch for ch in text.strip() if ch not in " -_")
    if not code:
        raise ValueError("empty code")
    return code.encode("utf-8")


def link_uri(
    kind: str,
    hosts: Sequence[str] | str,
    port: int,
    *,
    via: Sequence[str] = (),
    **params: str,
) -> str:
    """A ``pstp://`` link (docs/protocol.md §16.2) to ``hosts`` at ``port``.

    The first host is the authority, as in every link since the first; the
    others follow as ``alt=HOST:PORT`` parameters (IPv6 in brackets, written
    ``%5B``/``%5D`` there, RFC 3986 §3.4), at most :data:`MAX_LINK_ADDRESSES`
    in all.  A reader that knows no ``alt`` still gets the first address.
    ``via`` adds channel addresses of any transport (``wss://...``, §19.1),
    percent-encoded whole, as ``via=`` parameters.

    Raises:
        ValueError: no host.
    """
    hosts = [hosts] if isinstance(hosts, str) else list(hosts)
    if not hosts:
        raise ValueError("a link needs at least one address")
    hosts = hosts[:MAX_LINK_ADDRESSES]
    query = "&".join(f"{k}={v}" for k, v in params.items())
    for host in hosts[1:]:
        query += "&alt=" + quote(format_address(host, port), safe=":")
    for address in via:
        query += "&via=" + quote(address, safe="")
    return f"pstp://{format_address(hosts[0], port)}/{kind}?{query}"


def code_uri(hosts: Sequence[str] | str, port: int, device_id: str, code: str) -> str:
    """The ``pstp://`` URI put in the QR code: everything the other device needs."""
    return link_uri("pair", hosts, port, id=device_id, code=code)


@dataclass(frozen=True, slots=True)
class Link:
    """A parsed ``pstp://`` link.

    Attributes:
        kind: ``pair`` (a pairing window's code) or ``peer`` (a pair key).
        addresses: ``(host, port)`` in the order given, the authority first.
        params: the other query parameters (``id``, ``code``, ``key``, ``token``), one
            value each.
        via: channel addresses (URLs, §19.1) given as ``via`` parameters, in order.
    """

    kind: str
    addresses: tuple[tuple[str, int], ...]
    params: dict[str, str]
    via: tuple[str, ...] = ()


def parse_link(uri: str) -> Link:
    """Read a ``pstp://`` link: links with one address (no ``alt``) and with several.

    Raises:
        ValueError: not a pstp:// link, or a malformed address.
    """
    from pstp.settings import parse_address

    parts = urlsplit(uri)
    if parts.scheme != "pstp" or not parts.netloc:
        raise ValueError(f"not a pstp:// link: {uri!r}")
    first = parse_address(parts.netloc)
    query = parse_qs(parts.query, keep_blank_values=True)
    alts = tuple(parse_address(a) for a in query.pop("alt", []))
    via = tuple(query.pop("via", []))
    for address in via:
        parse_address(address)  # a malformed one is refused here
    params = {k: v[-1] for k, v in query.items()}
    return Link(parts.path.strip("/"), (first, *alts), params, via)


@dataclass
class PairingWindow:
    """A pairing window on the serving device.

    Attributes:
        verifier: the SPAKE2+ verifier and its attempt budget.
        config_path: where the new peer is written.
        port: our service port, told to the new peer.
        on_paired: called with the new peer's id once its key is stored.
        on_failed: called with the prover's address and the tries left after
            each wrong code (an attempt that spent a guess and failed).
    """

    verifier: PakeVerifier
    config_path: str
    port: int
    on_paired: Callable[[str, bytes], None] | None = None
    on_failed: Callable[[str, int], None] | None = None
    paired_with: str | None = None
    _failures_seen: int = 0

    @classmethod
    def open(
        cls, code: bytes, own_id: str, config_path: str, port: int, *, timeout: float, now: float
    ) -> PairingWindow:
        """Stretch the code into a verifier (the code itself is not kept).

        Raises:
            ValueError: empty code.
        """
        verifier = PakeVerifier.from_code(
            code,
            own_id,
            pairing=True,
            max_failures=MAX_FAILURES,
            expires_at=now + timeout,
            single_use=True,
        )
        return cls(verifier, config_path, port)

    @property
    def tries_left(self) -> int:
        """Wrong codes the window still takes before it closes."""
        v = self.verifier
        limit = MAX_FAILURES if v.max_failures is None else v.max_failures
        return max(0, limit - v.failures)

    def note_failure(self, peer_address: str) -> int | None:
        """After a failed handshake: the tries left if it was a wrong code, else ``None``.

        A wrong code is an attempt that spent a guess (§15.6): the verifier's
        count went up.  ``on_failed`` is told.
        """
        failures = self.verifier.failures
        if failures <= self._failures_seen:
            return None
        self._failures_seen = failures
        left = self.tries_left
        _log.info("wrong pairing code from %s: %d tries left", peer_address, left)
        if self.on_failed is not None:
            self.on_failed(peer_address, left)
        return left

    def is_open(self, now: float) -> bool:
        """True while attempts are still possible."""
        v = self.verifier
        expired = v.expires_at is not None and now >= v.expires_at
        return not (v.closed or expired)

    async def handle(self, ch: Channel) -> int:
        """The ``pair`` channel on the serving side: store the peer, answer with our id.

        Raises:
            PermissionDenied: the session was not opened by pairing.
        """
        conn = ch.connection
        if not conn.via_pake or conn.peer_id is None:
            raise PermissionDenied("the pair channel is only open to a pairing session")
        hello = msgspec.msgpack.decode(await ch.read_all(limit=4096), type=PairHello)
        peer_id = conn.peer_id
        if hello.device_id != peer_id:
            raise PermissionDenied("the peer named itself differently in the handshake")
        if peer_id in load(self.config_path).peers:
            # Never take over an existing peer (its key, and the policy it was given):
            # a stated id is only a name (§16.6).  The owner removes the old one first.
            raise PermissionDenied(f"a peer named {peer_id!r} exists; remove it first")
        key = conn.export_secret(PAIR_KEY_LABEL)
        add_peer(self.config_path, peer_id, key, default_policy=True)
        self.paired_with = peer_id
        _log.info("paired with %s; its key is stored in %s", peer_id, self.config_path)
        if self.on_paired is not None:
            self.on_paired(peer_id, key)
        await ch.write(msgspec.msgpack.encode(PairHello(self.verifier.own_id, self.port)))
        return 0
