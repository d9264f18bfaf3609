"""File transfer: the ``file`` channel (docs/protocol.md §18).

- :mod:`pstp.files.frames`: frames, messages and a sans-I/O decoder (§18.2-§18.4, §18.7);
- :mod:`pstp.files.disk`: ``.part`` files, sidecars, locks and tree walks (§18.8);
- :mod:`pstp.files.engine`: the sender and the receiver (§18.5-§18.9);
- :mod:`pstp.files.client`: ``put`` and ``get`` (§18.11).

The daemon's confinement and handler are :mod:`pstp.daemon.files` (§18.10).
Nothing is imported here, so that the sans-I/O frames load alone.
"""

from __future__ import annotations

__all__: list[str] = []
