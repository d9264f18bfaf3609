"""Serve PSTP/2 sessions over TCP (asyncio)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from pstp.asyncio.connection import Authorizer, ChannelHandler, Session, SessionProtocol
from pstp.clock import responder
from pstp.exceptions import ErrorCode, PstpError
from pstp.protocol.config import Config
from pstp.protocol.connection import Connection
from pstp.protocol.handshake import DiscoveryLookup, KeyRing
from pstp.protocol.pake import PakeVerifier

__all__ = ["Server", "serve"]

_log = logging.getLogger("pstp.server")

#: What the application runs for each established session.
Handler = Callable[[Session], Awaitable[None]]


class Server:
    """A listening PSTP/2 server; close it with :meth:`close` or ``async with``."""

    def __init__(
        self,
        server: asyncio.Server,
        tasks: set[asyncio.Task[None]],
        pake: list[PakeVerifier | None] | None = None,
    ) -> None:
        self._server = server
        self._tasks = tasks
        self._pake: list[PakeVerifier | None] = pake if pake is not None else [None]

    @property
    def pake(self) -> PakeVerifier | None:
        """The PSTP-PAKE verifier new connections are offered (``None``: PSTP-HS only).

        Assign to open or close a pairing window on a running server;
        connections already accepted keep the verifier they started with.
        """
        return self._pake[0]

    @pake.setter
    def pake(self, verifier: PakeVerifier | None) -> None:
        self._pake[0] = verifier

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The (host, port) addresses we listen on."""
        return [s.getsockname()[:2] for s in self._server.sockets]

    @property
    def port(self) -> int:
        """The first listening port (handy with port 0)."""
        return int(self.sockets[0][1])

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening and end every session with GOING_AWAY."""
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def serve(
    handler: Handler | None,
    host: str,
    port: int,
    *,
    keyring: KeyRing,
    own_id: str,
    config: Config | None = None,
    discovery_lookup: DiscoveryLookup | None = None,
    handlers: Mapping[str, ChannelHandler] | None = None,
    pake: PakeVerifier | None = None,
    authorize: Authorizer | None = None,
    on_session: Callable[[Session], Callable[[], None] | None] | None = None,
    on_handshake_failed: Callable[[Connection, str], None] | None = None,
    admit: Callable[[Connection], str | None] | None = None,
    session_data: bool = True,
) -> Server:
    """Listen for PSTP/2 sessions and run ``handler`` for each established one.

    A connection that fails the handshake is closed without a word (§5.1);
    the handler never sees it.

    Args:
        handler: coroutine run with each established :class:`Session`; when it
            returns the session is closed.  ``None``: sessions live until the
            peer closes them, serving only channels.
        host: address to bind.
        port: TCP port (0 picks a free one).
        keyring: the pair keys we accept.
        own_id: our device id.
        config: limits and algorithms.
        discovery_lookup: PING/PONG exchanged under a discovery nonce.
        handlers: channel kinds served to every session, and what runs for each.
        pake: also accept PSTP-PAKE sessions proving this code (e.g. a pairing
            window); :attr:`Server.pake` changes it later.
        authorize: asked before each channel a peer opens is accepted; returns
            ``None`` or the reason to refuse it.
        on_session: called with each established session; it may return a
            callable run when the session ends (for counting and cleanup).
        on_handshake_failed: called with the connection and the peer's address
            when a handshake fails (for the audit log); the peer learns nothing.
        admit: decides each session the moment its handshake completes, before
            any of its channels; a returned reason closes it with REFUSED.
        session_data: someone reads session-level DATA (``Session.recv``).  A
            server of channels only passes false: DATA from a peer then ends its
            session with REFUSED instead of waiting unread (docs/protocol.md §12.1).

    Raises:
        OSError: the address could not be bound.
    """
    config = config or Config()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    current_pake: list[PakeVerifier | None] = [pake]  # shared with Server.pake

    async def run(proto: SessionProtocol) -> None:
        try:
            await proto.handshake
        except PstpError:
            if on_handshake_failed is not None:
                on_handshake_failed(proto.conn, proto.peer_address)
            return
        session = Session(proto)
        done = on_session(session) if on_session is not None else None
        try:
            if handler is None:
                await session.wait_closed()
                return
            await handler(session)
        except asyncio.CancelledError:
            proto.close(ErrorCode.GOING_AWAY, "server shutting down")
            raise
        except PstpError as exc:
            _log.info("session with %s ended: %s", session.peer_id, exc)
        except Exception:
            _log.exception("handler failed for %s", session.peer_id)
            proto.close(ErrorCode.INTERNAL_ERROR)
        else:
            proto.close()
        finally:
            if done is not None:
                done()

    def factory() -> SessionProtocol:
        conn = responder(config, keyring, own_id, discovery_lookup, current_pake[0])
        proto = SessionProtocol(
            conn,
            handlers=handlers,
            authorize=authorize,
            admit=admit,
            session_data=session_data,
        )
        task = loop.create_task(run(proto))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return proto

    server = await loop.create_server(factory, host, port)
    return Server(server, tasks, current_pake)
