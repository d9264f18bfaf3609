"""High-level client operations on configured peers: connect, ping, pair.

A peer is reached up its reach ladder (``[peers.NAME] reach``): its remembered
address and other direct ones first, then discovery on the LAN (a PONG from the
expected device id, bound into the handshake), then its WebSocket and MQTT
addresses; a direct address that worked is remembered for next time.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from pstp.asyncio.client import connect, tls_context
from pstp.asyncio.connection import ChannelHandler, Session
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
    broker_options,
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
    attempts: Attempts | None = None,
    handlers: Mapping[str, ChannelHandler] | None = None,
) -> Session:
    """Open a PSTP-HS session to a configured peer, up its reach ladder.

    The ladder (``[peers.NAME] reach``, by default direct, LAN, WebSocket,
    MQTT) is climbed until a way works; ``-v`` says each step, and
    :attr:`Session.reached` tells which way worked.

    Args:
        settings: our configuration (holds the peer's pair key).
        peer_id: the peer's device id.
        address: a channel address (``host[:port]``, ``ws://``, ``wss://``,
            ``mqtt://``) to use alone: no other address and no discovery if it
            fails (as ssh with a host name).
        config: protocol limits.
        discovery_timeout: seconds to wait for PONGs at the ``lan`` step.
        attempts: the ladder as the blocking driver left it (its addresses
            already tried are not tried again).
        handlers: channel kinds this side serves if the device opens them
            (``forward-in`` for ``pstp forward -R``).

    Raises:
        KeyError: no such peer in the configuration.
        PeerNotFound: no way worked, or the given ``address`` did not answer.
        HandshakeFailed: the device answered but did not prove the pair key.
    """
    if attempts is None:
        attempts = Attempts(settings, peer_id, address, config)
    if handlers:
        attempts.options["handlers"] = handlers
    for step, found in attempts.steps:
        if step == "lan":
            noted = len(attempts.tried)
            session = await _discover(
                settings, peer_id, attempts.tried, config, discovery_timeout, handlers
            )
            if session is not None:
                return session
            for note in attempts.tried[noted:]:
                info("%s: %s", peer_id, note)
            continue
        for candidate, where in found:
            if candidate in attempts.done:
                continue
            attempts.done.add(candidate)
            tls = tls_context(attempts.ca_file) if where.scheme == "wss" else None
            broker = broker_options(settings, where) if where.mqtt else None
            try:
                session = await connect(where, ssl=tls, broker=broker, **attempts.options)
            except OSError as exc:
                attempts.failed(candidate, exc, step)
                continue
            attempts.worked(candidate, step)
            session.reached = (step, candidate)
            return session
    attempts.give_up()
    peer = settings.peers[peer_id]
    if not peer.address and not peer.via:
        attempts.tried.insert(0, "no remembered address")
    raise PeerNotFound(
        f"{peer_id} not reached: tried {'; '.join(attempts.tried) or 'nothing'}. "
        f"`pstp doctor {peer_id}` says why"
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
    session = await _discover(settings, peer_id, tried, config, discovery_timeout)
    if session is not None:
        return session
    if not peer.address:
        tried.insert(0, "no remembered address")
    raise PeerNotFound(
        f"{peer_id} not reached: tried {'; '.join(tried)}. `pstp doctor {peer_id}` says why"
    )


async def _discover(
    settings: Settings,
    peer_id: str,
    tried: list[str],
    config: Config | None,
    discovery_timeout: float,
    handlers: Mapping[str, ChannelHandler] | None = None,
) -> Session | None:
    """The ``lan`` step: a session to the peer found by discovery, or None (noted in ``tried``).

    Raises:
        HandshakeFailed: a device with the peer's id answered but failed the handshake.
    """
    peer = settings.peers[peer_id]
    port = DEFAULT_PORT
    if peer.address and (where := check_channel(peer.address)).scheme == "tcp":
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
                handlers=handlers,
            )
        except (OSError, HandshakeFailed) as exc:
            why = exc if isinstance(exc, HandshakeFailed) else os_reason(exc)
            tried.append(f"{dev.host}:{dev.port} (discovered): {why}")
            failure = exc
            continue
        found_at = format_address(dev.host, dev.port)
        info("%s: connected at %s (found by discovery)", peer_id, found_at)
        remember_address(settings, peer_id, found_at)
        session.reached = ("lan", found_at)
        return session
    if isinstance(failure, HandshakeFailed):
        raise failure
    if not any(dev.device_id == peer.device_id for dev in found):
        tried.append(f"discovery on port {port}: no answer in {discovery_timeout:g} s")
    return None


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
