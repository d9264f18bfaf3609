"""PSTP/2: private, authenticated, encrypted access to your own devices.

The names below load on first use (PEP 562), so ``import pstp`` (and the CLI)
stays cheap until a session is actually opened: it imports nothing at all, not
even :mod:`typing` (tests/cli/test_startup.py checks it).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

__version__ = "0.1.0"

_LAZY = {
    "connect": "pstp.asyncio.client",
    "serve": "pstp.asyncio.server",
    "Server": "pstp.asyncio.server",
    "Session": "pstp.asyncio.connection",
    "Channel": "pstp.asyncio.connection",
    "Config": "pstp.protocol.config",
    "KeyRing": "pstp.protocol.handshake",
    "PairKey": "pstp.protocol.handshake",
    "Passphrase": "pstp.protocol.pake",
    "PstpError": "pstp.exceptions",
    "ConnectionClosed": "pstp.exceptions",
    "HandshakeFailed": "pstp.exceptions",
    "ErrorCode": "pstp.exceptions",
    "create_tcp_server": "pstp.client.ppcp",
    "server_accept": "pstp.client.ppcp",
    "find_server": "pstp.client.ppcp",
    "client_connect": "pstp.client.ppcp",
    "PpcpSession": "pstp.client.ppcp",
    "SyncSession": "pstp.sync.connection",
    "SyncChannel": "pstp.sync.connection",
}

__all__ = [
    "Channel",
    "Config",
    "ConnectionClosed",
    "ErrorCode",
    "HandshakeFailed",
    "KeyRing",
    "PairKey",
    "Passphrase",
    "PpcpSession",
    "PstpError",
    "Server",
    "Session",
    "SyncChannel",
    "SyncSession",
    "__version__",
    "client_connect",
    "connect",
    "create_tcp_server",
    "find_server",
    "serve",
    "server_accept",
]

if TYPE_CHECKING:
    from typing import Any

    from pstp.asyncio.client import connect
    from pstp.asyncio.connection import Channel, Session
    from pstp.asyncio.server import Server, serve
    from pstp.client.ppcp import (
        PpcpSession,
        client_connect,
        create_tcp_server,
        find_server,
        server_accept,
    )
    from pstp.exceptions import ConnectionClosed, ErrorCode, HandshakeFailed, PstpError
    from pstp.protocol.config import Config
    from pstp.protocol.handshake import KeyRing, PairKey
    from pstp.protocol.pake import Passphrase
    from pstp.sync.connection import SyncChannel, SyncSession


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pstp' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
