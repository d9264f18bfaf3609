"""File transfer for clients: :func:`put` and :func:`get` (docs/protocol.md §18.11).

The implementation is :mod:`pstp.files.client`; this module keeps the names
``pstp.client`` has always offered.
"""

from __future__ import annotations

from pstp.files.client import TransferSummary, get, put
from pstp.files.engine import Progress, ProgressCallback, TransferResult
from pstp.files.frames import CHUNK_SIZE

__all__ = [
    "CHUNK_SIZE",
    "Progress",
    "ProgressCallback",
    "TransferResult",
    "TransferSummary",
    "get",
    "put",
]
