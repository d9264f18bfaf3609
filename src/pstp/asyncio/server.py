"""Serve PSTP/2 sessions over TCP (asyncio).

Connections that have not completed the handshake (nobody has proved a key
yet) are capped per server.  When the table is full, a new connection sheds
an *older* one instead of being refused: the oldest of the source (IPv4
address, IPv6 /64) holding the most pending connections if it holds more than
its share, else the oldest of all.  A flood of idle connections thus holds at
most the cap's worth of descriptors, a flood from one address only displaces
itself, and a newcomer is never kept out: a legitimate client's handshake
completes before the flood ages it out.  Below the cap nothing is shed, so a
burst of honest clients behind one address is served.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from pstp.asyncio.connection import Authorizer, ChannelHandler, Session, SessionProtocol
from pstp.clock import responder
from pstp.exceptions import ErrorCode, PstpError
from pstp.protocol.config import Config
from pstp.protocol.connection import Connection
from pstp.protocol.handshake import DiscoveryLookup, KeyRing
from pstp.protocol.pake import PakeVerifier

if TYPE_CHECKING:
    from pstp.address import Address
    from pstp.asyncio.mqtt import BrokerOptions, MqttListener

__all__ = [
    "BACKLOG",
    "MAX_UNAUTHENTICATED",
    "MAX_UNAUTHENTICATED_PER_SOURCE",
    "SHED_REPORT_INTERVAL",
    "Server",
    "serve",
    "source_key",
]

_log = logging.getLogger("pstp.server")

#: What the application runs for each established session.
Handler = Callable[[Session], Awaitable[None]]

#: Connections that have not completed the handshake, at most, per server.
MAX_UNAUTHENTICATED = 256
#: A source's share once the table is full (IPv4 address, IPv6 /64 prefix): a fuller
#: source loses its oldest first.
MAX_UNAUTHENTICATED_PER_SOURCE = 32
#: Seconds between two log lines about shed connections (at most one per interval).
SHED_REPORT_INTERVAL = 10.0
#: The listening socket's accept queue (the kernel caps it at net.core.somaxconn).
#: asyncio's default of 100 overflows under a flood, and a dropped SYN costs a
#: legitimate client a 1 s (then 3 s...) retransmission; a queued connection
#: holds no descriptor and is shed, if need be, once accepted.
BACKLOG = 1024

_ACCEPT_FAILED = "socket.accept() out of system resource"


def source_key(host: str) -> str:
    """The source a connection from ``host`` counts against (per-source cap).

    An IPv4 address is its own source; an IPv6 address counts as its /64
    prefix (one host or LAN usually holds a whole /64); an IPv4-mapped IPv6
    address counts as the IPv4 address.  Anything else (a Unix socket path)
    is taken as it is.
    """
    if ":" not in host and host[-1:].isdigit():
        return host  # dotted IPv4, the common case: no parsing (a flood calls this a lot)
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Pending:
    """The unauthenticated connections of one server, oldest first (O(1) per connection)."""

    def __init__(self, limit: int, per_source: int) -> None:
        self.limit = limit
        self.per_source = per_source
        self.all: OrderedDict[_ServerProtocol, str] = OrderedDict()
        self.by_source: dict[str, OrderedDict[_ServerProtocol, None]] = {}
        #: Sources holding more than ``per_source`` pending connections now.
        self._over = 0
        self.shed = 0
        self._unreported = 0
        self._last_report = -SHED_REPORT_INTERVAL
        self._report: asyncio.TimerHandle | None = None
        self.accept_failures = 0
        self._accept_unreported = 0
        self._accept_last_report = -SHED_REPORT_INTERVAL

    def add(self, proto: _ServerProtocol, key: str) -> None:
        """Track a new connection, shedding an older one if the table is full.

        Only a full table sheds, so a burst of honest clients from one address
        (a NAT, a test) is not cut while there is room.  When it is full, the
        source holding the most pending connections loses its oldest if it holds
        more than ``per_source`` (a flood from one address only displaces
        itself); otherwise the oldest connection of all goes.
        """
        while len(self.all) >= self.limit:
            victims: Mapping[_ServerProtocol, object] = self.all
            if self._over:  # some source holds more than its share (rare: look for it)
                victims = max(self.by_source.values(), key=len)
            self._shed(next(iter(victims)))
        self.all[proto] = key
        same = self.by_source.setdefault(key, OrderedDict())
        same[proto] = None
        if len(same) == self.per_source + 1:
            self._over += 1

    def discard(self, proto: _ServerProtocol) -> None:
        """Forget a connection (handshake done, or closed); no error if unknown."""
        key = self.all.pop(proto, None)
        if key is None:
            return
        same = self.by_source[key]
        if len(same) == self.per_source + 1:
            self._over -= 1
        del same[proto]
        if not same:
            del self.by_source[key]

    def _shed(self, proto: _ServerProtocol) -> None:
        self.discard(proto)
        proto.shed = True
        proto.abort()
        self.shed += 1
        self._unreported += 1
        if self._report is None:
            loop = proto.loop
            delay = max(0.0, self._last_report + SHED_REPORT_INTERVAL - loop.time())
            self._report = loop.call_later(delay, self.report)

    def report(self) -> None:
        """Log how many connections were shed since the last line (if any)."""
        if self._report is not None:
            self._report.cancel()
            self._report = None
        if self._unreported:
            self._last_report = asyncio.get_running_loop().time()
            _log.warning(
                "shed %d unauthenticated connections (at most %d, %d per source; %d in all)",
                self._unreported,
                self.limit,
                self.per_source,
                self.shed,
            )
            self._unreported = 0

    def accept_failed(self, exc: object) -> None:
        """accept() ran out of descriptors: one line per interval, no traceback."""
        self.accept_failures += 1
        self._accept_unreported += 1
        now = time.monotonic()
        if now - self._accept_last_report >= SHED_REPORT_INTERVAL:
            _log.warning(
                "accept() failed %d times: %s (the descriptor limit is too low)",
                self._accept_unreported,
                exc,
            )
            self._accept_last_report = now
            self._accept_unreported = 0


class _ServerProtocol(SessionProtocol):
    """A server-side session that counts as unauthenticated until its handshake is done."""

    def __init__(self, pending: _Pending, conn: Connection, **kwargs: Any) -> None:
        super().__init__(conn, **kwargs)
        self._pending = pending
        #: The server aborted it to make room (a cap on unauthenticated connections).
        self.shed = False
        #: Whether the peer sent anything: a connection closed in silence (a port
        #: check, a scanner, ``nc -z``) attempted no handshake and failed none.
        self.heard = False
        self._abort: Callable[[], None] = lambda: None
        self.handshake.add_done_callback(lambda _: pending.discard(self))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A broker-borne session (MQTT) names its source itself: its key's topic.
        source = transport.get_extra_info("pstp_source")
        if source is None:
            peer = transport.get_extra_info("peername")
            host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
            source = source_key(str(host))
        self._abort = cast(asyncio.Transport, transport).abort
        self._pending.add(self, source)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pending.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        super().data_received(data)

    def message_received(self, message: bytes) -> None:
        self.heard = True
        super().message_received(message)

    def abort(self) -> None:
        """Drop the connection at once, without a word (the peer proved nothing)."""
        self._abort()


class _Listening(Protocol):
    """What :class:`Server` needs of an :class:`asyncio.Server` (or an MQTT listener)."""

    @property
    def sockets(self) -> Sequence[Any]: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...
    async def serve_forever(self) -> None: ...


class Server:
    """A listening PSTP/2 server; close it with :meth:`close` or ``async with``."""

    def __init__(
        self,
        server: _Listening,
        tasks: set[asyncio.Task[None]],
        pake: list[PakeVerifier | None] | None = None,
        pending: _Pending | None = None,
        restore: Callable[[], None] | None = None,
        mqtt: MqttListener | None = None,
    ) -> None:
        self._server = server
        #: The broker presence of a server made with ``serve(mqtt=...)``.
        self.mqtt = mqtt
        self._tasks = tasks
        self._pake: list[PakeVerifier | None] = pake if pake is not None else [None]
        self._pending = pending or _Pending(MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_PER_SOURCE)
        self._restore = restore

    @property
    def unauthenticated(self) -> int:
        """Connections open now that have not completed the handshake."""
        return len(self._pending.all)

    @property
    def shed(self) -> int:
        """Unauthenticated connections aborted so far to keep within the caps."""
        return self._pending.shed

    @property
    def per_source(self) -> dict[str, int]:
        """Unauthenticated connections open now, by source (:func:`source_key`)."""
        return {key: len(protos) for key, protos in self._pending.by_source.items()}

    @property
    def accept_failures(self) -> int:
        """Times accept() failed for lack of descriptors (or memory) so far."""
        return self._pending.accept_failures

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
        for proto in list(self._pending.all):  # nobody proved a key: nothing to say
            proto.abort()
        self._pending.report()
        if self._restore is not None:
            self._restore()
            self._restore = None
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
    max_unauthenticated: int = MAX_UNAUTHENTICATED,
    max_unauthenticated_per_source: int = MAX_UNAUTHENTICATED_PER_SOURCE,
    websocket: str | None = None,
    mqtt: Address | None = None,
    broker: BrokerOptions | None = None,
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
            A connection closed before it sent a byte attempted no handshake
            and is not reported.
        admit: decides each session the moment its handshake completes, before
            any of its channels; a returned reason closes it with REFUSED.
        session_data: someone reads session-level DATA (``Session.recv``).  A
            server of channels only passes false: DATA from a peer then ends its
            session with REFUSED instead of waiting unread (docs/protocol.md §12.1).
        max_unauthenticated: connections that have not completed the handshake,
            at most; one more sheds (aborts) an older one.
        max_unauthenticated_per_source: a source's share (IPv4 address, IPv6
            /64, :func:`source_key`) when the table is full: the connection shed
            is the oldest of the fullest source if it holds more, else the
            oldest of all.  Shed connections are counted (:attr:`Server.shed`)
            and logged at most once per :data:`SHED_REPORT_INTERVAL` seconds.
        websocket: serve WebSocket on this HTTP path (``"/pstp"``) instead of
            plain TCP: one frame per binary message, subprotocol ``pstp.v2``
            (docs/protocol.md §19.2).  A connection counts as unauthenticated,
            and its handshake deadline runs, from the TCP accept on, so a slow
            or missing upgrade is shed and timed out like a silent handshake.
        mqtt: instead of listening, connect out to this ``mqtt://`` or
            ``mqtts://`` broker and serve sessions through it (§19.3), for every
            key in ``keyring`` as the ring changes; ``host`` and ``port`` are
            ignored.  The connection is made (and remade) in the background:
            :attr:`Server.mqtt` tells whether it is up.
        broker: credentials and TLS for ``mqtt``.

    While the server is open, accept() failing for lack of descriptors is
    logged at most once per :data:`SHED_REPORT_INTERVAL` seconds, without a
    traceback (asyncio would log one per attempt): the loop's exception
    handler is wrapped for that, and restored by :meth:`Server.close`.

    Raises:
        OSError: the address could not be bound.
        ValueError: a cap below 1.
    """
    if max_unauthenticated < 1 or max_unauthenticated_per_source < 1:
        raise ValueError("the caps on unauthenticated connections must be at least 1")
    config = config or Config()
    loop = asyncio.get_running_loop()
    pending = _Pending(max_unauthenticated, max_unauthenticated_per_source)
    tasks: set[asyncio.Task[None]] = set()
    current_pake: list[PakeVerifier | None] = [pake]  # shared with Server.pake

    def handshake_done(proto: _ServerProtocol, result: asyncio.Future[None]) -> None:
        # A task per session starts only once a key is proved: a flood of keyless
        # connections costs no task, no coroutine and no wake-up each.
        if result.cancelled():
            return
        if result.exception() is not None:
            # A shed connection proved nothing and failed nothing: it is counted
            # (Server.shed), not reported as a failed handshake.
            # A peer that sent nothing attempted nothing (a port check): not reported.
            if on_handshake_failed is not None and not proto.shed and proto.heard:
                on_handshake_failed(proto.conn, proto.peer_address)
            return
        task = loop.create_task(run(proto))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def run(proto: _ServerProtocol) -> None:
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

    def factory(session_config: Config = config, ring: KeyRing = keyring) -> _ServerProtocol:
        conn = responder(session_config, ring, own_id, discovery_lookup, current_pake[0])
        proto = _ServerProtocol(
            pending,
            conn,
            handlers=handlers,
            authorize=authorize,
            admit=admit,
            session_data=session_data,
            messages=websocket is not None or mqtt is not None,
        )
        proto.handshake.add_done_callback(lambda result: handshake_done(proto, result))
        return proto

    if mqtt is not None:
        from pstp.asyncio.mqtt import MqttListener

        listener = MqttListener(mqtt, broker, keyring, factory, config)
        listener.start()
        return Server(listener, tasks, current_pake, pending, None, listener)

    protocols: Callable[[], asyncio.Protocol] = factory
    if websocket is not None:
        from pstp.asyncio.websocket import server_link

        protocols = server_link(factory, websocket, config)
    server = await loop.create_server(protocols, host, port, backlog=BACKLOG)
    restore = _quiet_accept_failures(loop, server, pending)
    return Server(server, tasks, current_pake, pending, restore)


def _quiet_accept_failures(
    loop: asyncio.AbstractEventLoop, server: asyncio.Server, pending: _Pending
) -> Callable[[], None]:
    """Log our accept() running out of descriptors once per interval; returns the undo."""
    previous = loop.get_exception_handler()
    ours = {s.fileno() for s in server.sockets}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        fileno = getattr(context.get("socket"), "fileno", None)
        if context.get("message") == _ACCEPT_FAILED and fileno is not None and fileno() in ours:
            pending.accept_failed(context.get("exception"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)

    def restore() -> None:
        if loop.get_exception_handler() is handler:
            loop.set_exception_handler(previous)

    return restore
