"""The serving device: sessions for trusted peers, discovery, and a pairing window.

This is the daemon's core loop.  Policy, actions, exec and the audit log
(docs/protocol.md §16 onwards) build on it; today it serves the built-in
``ping`` channel and, when a window is open, ``pair``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pstp.asyncio.connection import Channel, ChannelHandler, Session
from pstp.asyncio.server import Server, serve
from pstp.daemon.pairing import PairingWindow
from pstp.exceptions import ErrorCode
from pstp.protocol.config import Config
from pstp.protocol.handshake import KeyRing
from pstp.protocol.pake import PAIR_CHANNEL
from pstp.settings import Settings, load
from pstp.sync.discovery import ResponderThread, start_responder

__all__ = ["Daemon", "ping_handler"]

_log = logging.getLogger("pstp.daemon")


async def ping_handler(ch: Channel) -> int:
    """The built-in ``ping`` channel: answer with ``pong`` and what was sent."""
    data = await ch.read_all()
    await ch.write(b"pong " + data)
    return 0


@dataclass
class Daemon:
    """A running device.

    Attributes:
        settings: the loaded configuration.
        config: protocol limits.
        pairing: an open pairing window, if any.
    """

    settings: Settings
    config: Config = field(default_factory=Config)
    pairing: PairingWindow | None = None
    keyring: KeyRing = field(default_factory=KeyRing)
    servers: list[Server] = field(default_factory=list)
    responders: list[ResponderThread] = field(default_factory=list)
    sessions: dict[str, set[Session]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for peer in self.settings.peers.values():
            self.keyring.add(peer.id, peer.key)
        if self.pairing is not None:
            self.pairing.on_paired = self._paired

    def _paired(self, peer_id: str, key: bytes) -> None:
        # The new peer can open a PSTP-HS session at once, without a restart.
        self.keyring.add(peer_id, key)

    def _on_session(self, session: Session) -> Callable[[], None]:
        peer = session.peer_id
        self.sessions.setdefault(peer, set()).add(session)
        _log.info("session with %s established", peer)

        def done() -> None:
            live = self.sessions.get(peer)
            if live is not None:
                live.discard(session)
                if not live:
                    del self.sessions[peer]
            _log.info("session with %s ended", peer)

        return done

    async def reload(self) -> None:
        """Re-read the configuration (SIGHUP): new keys apply at once; the sessions of
        removed or re-keyed peers are closed; listening addresses stay as they are.

        Raises:
            ConfigError: the new file is invalid (the running configuration stays).
        """
        new = load(self.settings.path)
        old_keys = {p.id: p.key for p in self.settings.peers.values()}
        new_keys = {p.id: p.key for p in new.peers.values()}
        for peer_id, key in new_keys.items():
            if old_keys.get(peer_id) != key:
                self.keyring.add(peer_id, key)
        gone = [p for p in old_keys if old_keys[p] != new_keys.get(p)]
        for peer_id in gone:
            if peer_id not in new_keys:
                self.keyring.remove(peer_id)
            for session in list(self.sessions.get(peer_id, ())):
                await session.close(ErrorCode.REFUSED, "peer removed or re-keyed")
        self.settings = new
        _log.info("configuration reloaded: %d peer(s)", len(new.peers))

    def handlers(self) -> dict[str, ChannelHandler]:
        """The channel kinds this device serves."""
        handlers: dict[str, ChannelHandler] = {"ping": ping_handler}
        if self.pairing is not None:
            handlers[PAIR_CHANNEL] = self.pairing.handle
        return handlers

    async def start(self) -> None:
        """Listen on every configured address (TCP) and answer discovery (UDP).

        Raises:
            OSError: an address could not be bound.
        """
        lookup = None
        for host, port in self.settings.listen:
            if self.settings.discovery:
                keys = (
                    (lambda: [p.kid_key for p in self.keyring]) if self.settings.stealth else None
                )
                responder = start_responder(
                    self.settings.device_id, port, host=host, stealth_keys=keys
                )
                self.responders.append(responder)
                lookup = responder.lookup
            server = await serve(
                None,
                host,
                port,
                keyring=self.keyring,
                own_id=self.settings.device_id,
                config=self.config,
                discovery_lookup=lookup,
                handlers=self.handlers(),
                pake=self.pairing.verifier if self.pairing is not None else None,
                on_session=self._on_session,
            )
            self.servers.append(server)
            _log.info("serving %s on %s:%d", self.settings.device_id, host, server.port)

    async def close(self) -> None:
        """Stop listening; end every session with GOING_AWAY."""
        for server in self.servers:
            await server.close()
        for responder in self.responders:
            responder.stop()

    async def run_pairing(self, poll: float = 0.1) -> str | None:
        """Wait until the pairing window closes; returns the new peer's id, if any."""
        assert self.pairing is not None
        window = self.pairing
        while window.paired_with is None and window.is_open(time.monotonic()):
            await asyncio.sleep(poll)
        # Give the pair channel's reply a moment to leave before sessions end.
        await asyncio.sleep(poll)
        return window.paired_with
