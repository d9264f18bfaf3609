"""The HS_INIT replay guard across restarts (docs/protocol.md §5.1, §12.2).

The responder remembers, per pair key, the newest HS_INIT timestamp it has
accepted.  Kept only in memory, a restart would let an HS_INIT recorded before
it be accepted once more (it still yields no session, but costs an ECDH).  The
daemon therefore saves each peer's newest timestamp to ``replay-guard.json``
beside its configuration, every few seconds while it changes and when it
stops, and loads it at start-up, where every loaded key starts with its window
closed up to that value.

A crash loses at most the last interval, which is the residual risk the spec
describes.  A damaged file is reported and ignored: the daemon starts, as it
would have before the file existed.

Nothing further ahead than :data:`MAX_AHEAD_NS` (5 minutes) of this device's
clock is saved or loaded.  A key holder whose clock is (or who claims to be)
years ahead would otherwise close the window for every later, honest HS_INIT
of that key, and, the value being saved, for good.  Such a value is stored as
"now + 5 minutes": after a restart the key works again within 5 minutes at
most, and at worst an HS_INIT recorded before the restart with a timestamp
beyond that bound could be answered once more (an ECDH, never a session).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pstp.protocol.handshake import KeyRing
from pstp.settings import Settings, write_private

__all__ = ["GUARD_NAME", "MAX_AHEAD_NS", "guard_path", "load_guard", "save_guard", "snapshot"]

_log = logging.getLogger(__name__)

#: The file's name, beside the configuration.
GUARD_NAME = "replay-guard.json"
_FORMAT = 1
#: How far (ns) ahead of this device's clock a saved or loaded timestamp may be.
MAX_AHEAD_NS = 300_000_000_000


def guard_path(settings: Settings) -> Path:
    """Where the replay guard of this configuration is saved."""
    return settings.path.parent / GUARD_NAME


def _bound(now: int | None) -> int:
    return (time.time_ns() if now is None else now) + MAX_AHEAD_NS


def load_guard(path: Path, *, now: int | None = None) -> dict[str, int]:
    """The saved newest timestamp of each peer; ``{}`` when there is none.

    A missing file is normal (first start). A file that cannot be read or
    parsed is logged as a warning and ignored.  A value further than
    :data:`MAX_AHEAD_NS` ahead of ``now`` (default: the wall clock, in ns) is
    lowered to that bound, with a warning.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        _log.warning("ignoring the replay guard in %s: %s", path, exc)
        return {}
    newest = data.get("newest") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(newest, dict):
        _log.warning("ignoring the replay guard in %s: not a format-%d file", path, _FORMAT)
        return {}
    bound = _bound(now)
    loaded = {}
    for peer, value in newest.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
            continue
        if value > bound:
            _log.warning(
                "replay guard in %s: the saved timestamp of %r is %.0f s ahead of this "
                "clock; lowered to %d s ahead",
                *(path, peer, (value - bound + MAX_AHEAD_NS) / 1e9, MAX_AHEAD_NS // 10**9),
            )
            value = bound
        loaded[str(peer)] = value
    return loaded


def snapshot(ring: KeyRing, *, now: int | None = None) -> dict[str, int]:
    """Each peer's newest accepted timestamp (peers that never connected left out).

    No value is further than :data:`MAX_AHEAD_NS` ahead of ``now`` (default:
    the wall clock, in ns).
    """
    bound = _bound(now)
    # A token's guard lives with the token (pstp.daemon.tokens), not here.
    return {
        p.device_id: min(p.last_timestamp, bound)
        for p in ring
        if p.last_timestamp and p.token is None
    }


def save_guard(path: Path, newest: dict[str, int]) -> None:
    """Write ``newest`` atomically (temporary file, fsync, rename; mode 0600).

    Raises:
        OSError: the file could not be written.
    """
    text = json.dumps({"format": _FORMAT, "newest": dict(sorted(newest.items()))}, indent=1)
    write_private(path, text + "\n")
