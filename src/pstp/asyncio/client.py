"""Open a PSTP/2 session to a device over TCP (asyncio)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from pstp.asyncio.connection import ChannelHandler, Session, SessionProtocol
from pstp.clock import initiator
from pstp.protocol.config import Config
from pstp.protocol.handshake import DiscoveryBinding
from pstp.protocol.pake import PakeProver

__all__ = ["connect"]


async def connect(
    host: str,
    port: int,
    *,
    pair_key: bytes | None = None,
    pake: PakeProver | None = None,
    device_id: str | None = None,
    config: Config | None = None,
    discovery: DiscoveryBinding | None = None,
    timeout: float | None = None,
    own_id: str = "",
    handlers: Mapping[str, ChannelHandler] | None = None,
) -> Session:
    """Connect, run PSTP-HS, and return the established session.

    Args:
        host: address or name of the device.
        port: its TCP port.
        pair_key: the 32-byte pair key shared with the device (PSTP-HS).
        pake: instead of a pair key, a human code or passphrase (PSTP-PAKE, §15).
        device_id: the device id we expect it to have, if known.
        config: limits and algorithms.
        discovery: the (nonce, PING, PONG) that found the device, if any.
        timeout: seconds for connect and handshake together (default: the
            config's handshake timeout).
        own_id: our device id, stated to the device inside the encrypted handshake.
        handlers: channel kinds we serve if the device opens channels to us.

    Raises:
        OSError: the TCP connection failed.
        HandshakeFailed: the device did not prove the pair key, or did not answer.
        TimeoutError: the handshake took too long.
    """
    config = config or Config()
    loop = asyncio.get_running_loop()
    conn = initiator(config, pair_key, pake, device_id, discovery, own_id)

    async def run() -> Session:
        _, proto = await loop.create_connection(
            lambda: SessionProtocol(conn, handlers=handlers), host, port
        )
        try:
            await proto.handshake
        except BaseException:
            proto.close()
            raise
        return Session(proto)

    return await asyncio.wait_for(run(), timeout or config.handshake_timeout)
