"""Open a PSTP/2 session to a device over TCP or WebSocket (asyncio)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pstp.address import Address, parse
from pstp.asyncio.connection import ChannelHandler, Session, SessionProtocol
from pstp.clock import initiator
from pstp.protocol.config import Config
from pstp.protocol.handshake import DiscoveryBinding
from pstp.protocol.pake import PakeProver

if TYPE_CHECKING:
    import ssl

    from pstp.asyncio.mqtt import BrokerOptions

__all__ = ["connect", "tls_context"]


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The client TLS context for ``wss://``: the system's trust store, or ``ca_file`` alone."""
    import ssl

    return ssl.create_default_context(cafile=ca_file)


async def connect(
    host: str | Address,
    port: int | None = None,
    *,
    pair_key: bytes | None = None,
    pake: PakeProver | None = None,
    device_id: str | None = None,
    config: Config | None = None,
    discovery: DiscoveryBinding | None = None,
    timeout: float | None = None,
    own_id: str = "",
    handlers: Mapping[str, ChannelHandler] | None = None,
    ssl: ssl.SSLContext | None = None,
    broker: BrokerOptions | None = None,
) -> Session:
    """Connect, run PSTP-HS, and return the established session.

    Args:
        host: address or name of the device, with ``port``; or, without it, a
            channel address: ``host:port``, ``tcp://host:port``,
            ``ws://host[:port]/path``, ``wss://host[:port]/path``, or a broker
            both ends connect out to, ``mqtt://host[:port][/prefix]`` or
            ``mqtts://…`` (docs/protocol.md §19).
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
        ssl: the TLS context for ``wss://`` (default: :func:`tls_context`, the
            system's trust store; the certificate and host name are checked).
        broker: credentials and TLS for an ``mqtt://`` or ``mqtts://`` address.

    Raises:
        OSError: the connection failed (or the WebSocket upgrade was refused).
        ValueError: ``host`` is not a channel address, or an MQTT address
            without a pair key (its topic comes from the key).
        HandshakeFailed: the device did not prove the pair key, or did not answer.
        TimeoutError: the handshake took too long.
    """
    if isinstance(host, Address):
        address = host
    elif port is None:
        address = parse(host)
    else:
        address = Address("tcp", host, port)
    config = config or Config()
    loop = asyncio.get_running_loop()
    if address.mqtt:
        return await _connect_mqtt(
            address, broker, pair_key, device_id, config, timeout, own_id, handlers
        )
    conn = initiator(config, pair_key, pake, device_id, discovery, own_id)

    async def run() -> Session:
        if not address.websocket:
            _, proto = await loop.create_connection(
                lambda: SessionProtocol(conn, handlers=handlers), address.host, address.port
            )
        else:
            from pstp.asyncio.websocket import client_link

            proto = SessionProtocol(conn, handlers=handlers, messages=True)
            url = f"{address.scheme}://{address.netloc}{address.path}"
            context = (ssl or tls_context()) if address.scheme == "wss" else None
            _, wire = await loop.create_connection(
                lambda: client_link(url, proto, config),
                address.host,
                address.port,
                ssl=context,
                server_hostname=address.host if context is not None else None,
            )
            try:
                await wire.link.opened
            except BaseException:
                wire.link.abort()
                raise
        try:
            await proto.handshake
        except BaseException:
            proto.close()
            raise
        return Session(proto)

    return await asyncio.wait_for(run(), timeout or config.handshake_timeout)


async def _connect_mqtt(
    address: Address,
    broker: BrokerOptions | None,
    pair_key: bytes | None,
    device_id: str | None,
    config: Config,
    timeout: float | None,
    own_id: str,
    handlers: Mapping[str, ChannelHandler] | None,
) -> Session:
    from pstp.asyncio.mqtt import open_session
    from pstp.protocol.mqtt import rendezvous_id

    if pair_key is None:
        raise ValueError(
            f"{address}: a session through a broker needs a pair key or token (its topic "
            "comes from the key); pair over a direct path first"
        )
    rid = rendezvous_id(pair_key)

    def make(session_config: Config) -> SessionProtocol:
        conn = initiator(session_config, pair_key, None, device_id, None, own_id)
        return SessionProtocol(conn, handlers=handlers, messages=True)

    async def run() -> Session:
        deadline = timeout or config.handshake_timeout
        proto = await open_session(address, broker, rid, make, config, deadline)
        try:
            await proto.handshake
        except BaseException:
            proto.close()
            raise
        return Session(proto)

    return await asyncio.wait_for(run(), timeout or config.handshake_timeout)
