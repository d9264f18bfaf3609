"""The pairing window: a short code that installs a pair key (docs/protocol.md §15, §16).

The serving device opens a window (``pstp pair --allow``): it shows a code
and a QR code, keeps only the SPAKE2+ verifier (w0, L), and closes after one
success, 20 failed attempts or its timeout (10 minutes by default).  The other
device runs ``pstp pair HOST`` and types the code.  Over the resulting
PSTP-PAKE session both sides exchange their ids on a ``pair`` channel and
derive the same pair key from the session (``export("pair key")``), which
each stores in its configuration file (mode 0600).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from pstp.asyncio.connection import Channel
from pstp.exceptions import PermissionDenied
from pstp.protocol.pake import PAIR_KEY_LABEL, PairHello, PakeVerifier
from pstp.settings import add_peer, format_address, load

__all__ = [
    "CODE_DIGITS",
    "PairingWindow",
    "code_uri",
    "generate_code",
    "normalize_code",
]

_log = logging.getLogger("pstp.pairing")

#: Digits in a generated code: 10^8 codes, 20 online guesses (Matter's numbers).
CODE_DIGITS = 8


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


def code_uri(host: str, port: int, device_id: str, code: str) -> str:
    """The ``pstp://`` URI put in the QR code: everything the other device needs."""
    return f"pstp://{format_address(host, port)}/pair?id={device_id}&code={code}"


@dataclass
class PairingWindow:
    """A pairing window on the serving device.

    Attributes:
        verifier: the SPAKE2+ verifier and its attempt budget.
        config_path: where the new peer is written.
        port: our service port, told to the new peer.
        on_paired: called with the new peer's id once its key is stored.
    """

    verifier: PakeVerifier
    config_path: str
    port: int
    on_paired: Callable[[str, bytes], None] | None = None
    paired_with: str | None = None

    @classmethod
    def open(
        cls, code: bytes, own_id: str, config_path: str, port: int, *, timeout: float, now: float
    ) -> PairingWindow:
        """Stretch the code into a verifier (the code itself is not kept).

        Raises:
            ValueError: empty code.
        """
        verifier = PakeVerifier.from_code(
            code, own_id, pairing=True, max_failures=20, expires_at=now + timeout, single_use=True
        )
        return cls(verifier, config_path, port)

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
