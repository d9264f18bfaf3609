"""PSTP/2: private, authenticated, encrypted access to your own devices.

The names below load on first use, so ``import pstp`` (and the CLI) stays
cheap until a session is actually opened.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "connect": "pstp.asyncio.client",
    "serve": "pstp.asyncio.server",
    "Server": "pstp.asyncio.server",
    "Session": "pstp.asyncio.connection",
    "Config": "pstp.protocol.config",
    "KeyRing": "pstp.protocol.handshake",
    "PstpError": "pstp.exceptions",
    "ConnectionClosed": "pstp.exceptions",
    "HandshakeFailed": "pstp.exceptions",
    "ErrorCode": "pstp.exceptions",
}

__all__ = [
    "Config",
    "ConnectionClosed",
    "ErrorCode",
    "HandshakeFailed",
    "KeyRing",
    "PstpError",
    "Server",
    "Session",
    "__version__",
    "connect",
    "serve",
]

if TYPE_CHECKING:
    from pstp.asyncio.client import connect
    from pstp.asyncio.connection import Session
    from pstp.asyncio.server import Server, serve
    from pstp.exceptions import ConnectionClosed, ErrorCode, HandshakeFailed, PstpError
    from pstp.protocol.config import Config
    from pstp.protocol.handshake import KeyRing


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pstp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
