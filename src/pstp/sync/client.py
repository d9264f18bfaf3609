"""Open a PSTP/2 session to a device over TCP (blocking)."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping

from pstp.clock import initiator
from pstp.protocol.config import Config
from pstp.protocol.handshake import DiscoveryBinding
from pstp.protocol.pake import PakeProver
from pstp.sync.connection import ChannelHandler, SyncSession

__all__ = ["connect"]


def connect(
    host: str | None = None,
    port: int | None = None,
    *,
    pair_key: bytes | None = None,
    pake: PakeProver | None = None,
    device_id: str | None = None,
    config: Config | None = None,
    timeout: float | None = None,
    own_id: str = "",
    discovery: DiscoveryBinding | None = None,
    handlers: Mapping[str, ChannelHandler] | None = None,
    sock: socket.socket | None = None,
) -> SyncSession:
    """Connect, run PSTP-HS as the initiator, and return the established session.

    Args:
        host: address or name of the device (ignored when ``sock`` is given).
        port: its TCP port (ignored when ``sock`` is given).
        pair_key: the 32-byte pair key shared with the device (PSTP-HS).
        pake: instead of a pair key, a human code or passphrase (PSTP-PAKE, §15).
        device_id: the device id we expect it to have, if known.
        config: limits and algorithms.
        timeout: seconds for connect and handshake together (default: the
            config's handshake timeout).
        own_id: our device id, stated to the device inside the encrypted handshake.
        discovery: the (nonce, PING, PONG) that found the device, if any.
        handlers: channel kinds we serve if the device opens channels to us.
        sock: an already-connected stream socket to run the handshake over;
            the session owns it from now on (it is closed on failure too).

    Raises:
        ValueError: no pake and the pair key is not 32 bytes, or neither ``sock`` nor
            ``host`` and ``port`` were given.
        OSError: the TCP connection failed.
        HandshakeFailed: the device did not prove the pair key, or hung up.
        TimeoutError: the handshake took too long.
    """
    config = config or Config()
    conn = initiator(config, pair_key, pake, device_id, discovery, own_id)
    limit = timeout if timeout is not None else config.handshake_timeout
    deadline = time.monotonic() + limit
    if sock is None:
        if host is None or port is None:
            raise ValueError("connect() needs host and port, or sock")
        sock = socket.create_connection((host, port), timeout=limit)
    session = SyncSession(conn, sock, handlers=handlers)
    session._start()
    session._wait_established(max(0.0, deadline - time.monotonic()))
    return session
