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
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pstp.protocol.handshake import KeyRing
from pstp.settings import Settings, write_private

__all__ = ["GUARD_NAME", "guard_path", "load_guard", "save_guard"]

_log = logging.getLogger(__name__)

#: The file's name, beside the configuration.
GUARD_NAME = "replay-guard.json"
_FORMAT = 1


def guard_path(settings: Settings) -> Path:
    """Where the replay guard of this configuration is saved."""
    return settings.path.parent / GUARD_NAME


def load_guard(path: Path) -> dict[str, int]:
    """The saved newest timestamp of each peer; ``{}`` when there is none.

    A missing file is normal (first start). A file that cannot be read or
    parsed is logged as a warning and ignored.
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
    return {
        str(peer): value
        for peer, value in newest.items()
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64
    }


def snapshot(ring: KeyRing) -> dict[str, int]:
    """Each peer's newest accepted timestamp (peers that never connected left out)."""
    return {p.device_id: p.last_timestamp for p in ring if p.last_timestamp}


def save_guard(path: Path, newest: dict[str, int]) -> None:
    """Write ``newest`` atomically (temporary file, fsync, rename; mode 0600).

    Raises:
        OSError: the file could not be written.
    """
    text = json.dumps({"format": _FORMAT, "newest": dict(sorted(newest.items()))}, indent=1)
    write_private(path, text + "\n")
