"""Serve one PSTP/2 session over an accepted socket (blocking)."""

from __future__ import annotations

import socket
from collections.abc import Mapping

from pstp.clock import responder
from pstp.exceptions import HandshakeFailed
from pstp.protocol.config import Config
from pstp.protocol.handshake import DiscoveryLookup, KeyRing
from pstp.protocol.pake import PakeVerifier
from pstp.protocol.session import Admitter, Authorizer
from pstp.sync.connection import ChannelHandler, SyncSession

__all__ = ["accept"]


def accept(
    sock: socket.socket,
    *,
    keyring: KeyRing,
    own_id: str,
    config: Config | None = None,
    discovery_lookup: DiscoveryLookup | None = None,
    handlers: Mapping[str, ChannelHandler] | None = None,
    timeout: float | None = None,
    pake: PakeVerifier | None = None,
    authorize: Authorizer | None = None,
    admit: Admitter | None = None,
) -> SyncSession:
    """Run PSTP-HS as the responder over an accepted socket and return the session.

    A peer that fails the handshake learns nothing: the socket is closed
    without a word (§5.1).

    Args:
        sock: a connected stream socket, e.g. from ``listener.accept()``; the
            session owns it from now on (it is closed on failure).
        keyring: the pair keys we accept.
        own_id: our device id.
        config: limits and algorithms.
        discovery_lookup: PING/PONG exchanged under a discovery nonce.
        handlers: channel kinds served to the peer, and what runs for each.
        timeout: seconds for the handshake (default: the config's handshake timeout).
        pake: also accept PSTP-PAKE sessions proving this code or passphrase (§15).
        authorize: asked before each channel the peer opens is accepted; returns
            ``None``, the reason to refuse, or a verdict kept on the channel.
        admit: decides the session the moment its handshake completes; a
            returned reason closes it with REFUSED.

    Raises:
        HandshakeFailed: the peer did not prove a key in the ring, hung up, or
            did not finish in time; the socket is closed.
    """
    conn = responder(config, keyring, own_id, discovery_lookup, pake)
    session = SyncSession(conn, sock, handlers=handlers, authorize=authorize, admit=admit)
    session._start()
    try:
        session._wait_established(timeout)
    except TimeoutError as exc:
        raise HandshakeFailed("handshake timed out") from exc
    return session
