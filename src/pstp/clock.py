"""HS_INIT timestamps, shared by every driver in the process (docs/protocol.md §5.1).

One counter for the asyncio and the blocking driver alike: the responder's
replay guard refuses a timestamp it has already accepted, so two handshakes
started in one process, by either driver, must never carry the same value.
:func:`initiator` and :func:`responder` build the connections both drivers run.
"""

from __future__ import annotations

import threading
import time

from pstp.protocol.config import Config
from pstp.protocol.connection import Connection, Role
from pstp.protocol.handshake import DiscoveryBinding, DiscoveryLookup, KeyRing
from pstp.protocol.pake import PakeProver, PakeVerifier

__all__ = ["initiator", "next_timestamp", "responder"]

_lock = threading.Lock()
_last = 0


def next_timestamp() -> int:
    """Wall-clock nanoseconds, strictly increasing within this process (thread-safe)."""
    global _last
    with _lock:
        _last = max(time.time_ns(), _last + 1)
        return _last


def initiator(
    config: Config,
    pair_key: bytes | None,
    pake: PakeProver | None,
    device_id: str | None,
    discovery: DiscoveryBinding | None,
    own_id: str,
) -> Connection:
    """An initiator's connection, stamped with this process's next HS_INIT timestamp.

    Raises:
        ValueError: no ``pake`` and the pair key is not 32 bytes.
    """
    if pake is None and (pair_key is None or len(pair_key) != _PAIR_KEY_LEN):
        raise ValueError("a pair key is exactly 32 bytes")
    return Connection(
        Role.CLIENT,
        config,
        pair_key=pair_key,
        timestamp=next_timestamp(),
        responder_id=device_id,
        discovery=discovery,
        own_id=own_id,
        pake=pake,
    )


def responder(
    config: Config | None,
    keyring: KeyRing,
    own_id: str,
    discovery_lookup: DiscoveryLookup | None,
    pake: PakeVerifier | None,
) -> Connection:
    """A responder's connection for one incoming transport connection.

    It reads this process's wall clock, so an HS_INIT timestamp more than
    :data:`~pstp.protocol.handshake.MAX_AHEAD_NS` (5 minutes) ahead of it is
    refused, and cannot close the replay guard of its key (§5.1).
    """
    return Connection(
        Role.SERVER,
        config,
        keyring=keyring,
        own_id=own_id,
        discovery_lookup=discovery_lookup,
        pake=pake,
        wall_clock=time.time_ns,
    )


#: Bytes in a pair key (docs/protocol.md §5.2).
_PAIR_KEY_LEN = 32
