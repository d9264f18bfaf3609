"""High-level client operations on configured peers: connect, ping, pair.

A peer is reached at its remembered address first, then by discovery on the
LAN (a PONG from the expected device id, bound into the handshake), and the
address that worked is remembered for next time.
"""

from __future__ import annotations

import msgspec

from pstp.asyncio.client import connect, tls_context
from pstp.asyncio.connection import Session
from pstp.asyncio.discovery import discover
from pstp.client.quick import Attempts, PeerNotFound, info, os_reason, remember_address
from pstp.exceptions import HandshakeFailed, PermissionDenied
from pstp.protocol.config import Config
from pstp.protocol.handshake import PeerKey
from pstp.protocol.pake import PAIR_CHANNEL, PAIR_KEY_LABEL, PairHello, PakeProver
from pstp.settings import (
    DEFAULT_PORT,
    Settings,
    add_peer,
    check_channel,
    format_address,
)

__all__ = ["PeerNotFound", "connect_peer", "discover_peer", "pair_with"]


async def connect_peer(
    settings: Settings,
    peer_id: str,
    *,
    address: str | None = None,
    config: Config | None = None,
    discovery_timeout: float = 1.0,
) -> Session:
    """Open a PSTP-HS session to a configured peer.

    Args:
        settings: our configuration (holds the peer's pair key).
        peer_id: the peer's device id.
        address: a channel address (``host[:port]``, ``ws://``, ``wss://``) to use
            alone: no remembered address and no discovery if it fails (as ssh
            with a host name).
        config: protocol limits.
        discovery_timeout: seconds to wait for PONGs when no address works.

    Raises:
        KeyError: no such peer in the configuration.
        PeerNotFound: no address worked and discovery found nothing, or the
            given ``address`` did not answer.
        HandshakeFailed: the device answered but did not prove the pair key.
    """
    attempts = Attempts(settings, peer_id, address, config)
    for candidate, where in attempts.candidates:
        tls = tls_context(attempts.ca_file) if where.scheme == "wss" else None
        try:
            session = await connect(where, ssl=tls, **attempts.options)
        except OSError as exc:
            attempts.failed(candidate, exc)
            continue
        attempts.worked(candidate)
        return session
    attempts.give_up()
    return await discover_peer(
        settings, peer_id, tried=attempts.tried, config=config, discovery_timeout=discovery_timeout
    )


async def discover_peer(
    settings: Settings,
    peer_id: str,
    *,
    tried: list[str] | None = None,
    config: Config | None = None,
    discovery_timeout: float = 1.0,
) -> Session:
    """Find a configured peer on the LAN and open a PSTP-HS session to it.

    Every device that answers with the peer's id is tried (a PONG is only a
    hint); the address that works is remembered.

    Args:
        settings: our configuration (holds the peer's pair key).
        peer_id: the peer's device id.
        tried: notes on addresses that already failed, for the error message.
        config: protocol limits.
        discovery_timeout: seconds to wait for PONGs.

    Raises:
        KeyError: no such peer in the configuration.
        PeerNotFound: discovery found no device that worked.
        HandshakeFailed: the device answered but did not prove the pair key.
    """
    peer = settings.peers[peer_id]
    tried = list(tried or ())
    port = DEFAULT_PORT
    if peer.address and not (where := check_channel(peer.address)).websocket:
        port = where.port
    # The PING carries our key id for this peer, so a stealth peer answers too (§8.2).
    kid_key = PeerKey.from_pair_key(peer.device_id, peer.key).kid_key
    found = await discover(port, discovery_timeout, kid_key=kid_key)
    failure: Exception | None = None
    for dev in found:
        if dev.device_id != peer.device_id:
            continue
        # A PONG is only a hint: a spoofed one fails its handshake, so try every
        # candidate before giving up (a forger must not hide the real device).
        try:
            session = await connect(
                dev.host,
                dev.port,
                pair_key=peer.key,
                device_id=peer.device_id,
                config=config,
                discovery=dev.binding,
                own_id=settings.device_id,
            )
        except (OSError, HandshakeFailed) as exc:
            why = exc if isinstance(exc, HandshakeFailed) else os_reason(exc)
            tried.append(f"{dev.host}:{dev.port} (discovered): {why}")
            failure = exc
            continue
        info("%s: connected at %s:%d (found by discovery)", peer_id, dev.host, dev.port)
        remember_address(settings, peer_id, format_address(dev.host, dev.port))
        return session
    if isinstance(failure, HandshakeFailed):
        raise failure
    if not any(dev.device_id == peer.device_id for dev in found):
        tried.append(f"discovery on port {port}: no answer in {discovery_timeout:g} s")
    if not peer.address:
        tried.insert(0, "no remembered address")
    raise PeerNotFound(
        f"{peer_id} not reached: tried {'; '.join(tried)}. `pstp doctor {peer_id}` says why"
    )


async def pair_with(
    settings: Settings, host: str, port: int, code: bytes, *, config: Config | None = None
) -> str:
    """Pair with the device at host:port using the code it shows; store its pair key.

    Returns:
        The new peer's device id.

    Raises:
        HandshakeFailed: wrong code, no pairing window open, or the device refused.
        OSError: the device could not be reached.
    """
    prover = PakeProver(code, settings.device_id, pairing=True)
    session = await connect(host, port, pake=prover, config=config)
    async with session:
        hello = PairHello(settings.device_id, settings.listen[0][1] if settings.listen else None)
        reply = await session.request(PAIR_CHANNEL, msgspec.msgpack.encode(hello))
        try:
            theirs = msgspec.msgpack.decode(reply, type=PairHello)
        except msgspec.DecodeError as exc:
            raise HandshakeFailed("the device sent a malformed pairing reply") from exc
        peer_id = session.peer_id
        if theirs.device_id != peer_id:
            raise HandshakeFailed("the device named itself differently in the handshake")
        if peer_id in settings.peers:
            raise PermissionDenied(
                f"a peer named {peer_id!r} is already configured; remove it first "
                f"(pstp device remove {peer_id})"
            )
        if theirs.port is not None and not 0 < theirs.port < 65536:
            raise HandshakeFailed("the device sent an invalid port")
        key = session.connection.export_secret(PAIR_KEY_LABEL)
    add_peer(
        settings.path,
        peer_id,
        key,
        address=format_address(host, theirs.port or port),
        default_policy=True,
    )
    return peer_id
