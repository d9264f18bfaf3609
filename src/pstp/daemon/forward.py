"""Port forwarding on the device: ``forward`` and ``forward-listen`` (protocol.md §17.14, §17.15).

``forward`` (``pstp forward PEER LPORT:HOST:PORT``, as ``ssh -L``): the policy
has allowed the target before the channel is accepted (``[peers.NAME.policy]
forward``), so a refused target is never connected to; the device then
connects to it and splices the connection to the channel.

``forward-listen`` (``pstp forward -R PORT:HOST:PORT PEER``, as ``ssh -R``):
the policy has allowed the address (``forward_listen``); the device listens
there for as long as the channel stays open, tells the peer the address it
bound, and opens a ``forward-in`` channel to the peer for every connection it
accepts.  Each forwarded connection, either way, gets its own audit row: the
target or origin, bytes each way, duration and how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from pstp.asyncio.connection import Channel, ChannelHandler
from pstp.asyncio.splice import Spliced, nodelay, os_reason, splice
from pstp.daemon.policy.model import norm_host
from pstp.exceptions import ChannelFailure, PstpError
from pstp.protocol.kinds import ForwardInOpen, ForwardOpen, ListenOpen
from pstp.wire.messages import ChannelCode

__all__ = [
    "CONNECT_TIMEOUT",
    "FORWARD_CHANNEL",
    "FORWARD_IN_CHANNEL",
    "LISTEN_CHANNEL",
    "MAX_CONNECTIONS_PER_LISTEN",
    "forward_handler",
    "listen_handler",
]

_log = logging.getLogger("pstp.forward")

FORWARD_CHANNEL = ForwardOpen.KIND
LISTEN_CHANNEL = ListenOpen.KIND
FORWARD_IN_CHANNEL = ForwardInOpen.KIND
#: Seconds the device waits for a forward target to accept its connection.
CONNECT_TIMEOUT = 10.0
#: Connections one ``forward-listen`` carries at once; more are refused at accept.
MAX_CONNECTIONS_PER_LISTEN = 256

#: ``record(kind, peer, decision, detail=..., args=..., result=...)``: the daemon's audit.
Record = Callable[..., bool]


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def forward_handler(connect_timeout: float = CONNECT_TIMEOUT) -> ChannelHandler:
    """The ``forward`` channel: connect to the allowed target and splice it (``ssh -L``)."""

    async def run(ch: Channel) -> int:
        ask = ForwardOpen.from_params(ch.params)
        host = norm_host(ask.host)  # the host the policy judged, exactly
        target = _show(host, ask.port)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, ask.port), connect_timeout
            )
        except TimeoutError:
            ch.audit["ended"] = "connect timed out"
            raise ChannelFailure(ChannelCode.NOT_FOUND, f"{target}: no answer") from None
        except OSError as exc:
            why = os_reason(exc)
            ch.audit["ended"] = why
            raise ChannelFailure(ChannelCode.NOT_FOUND, f"{target}: {why}") from None
        nodelay(writer)
        done = Spliced()
        try:
            await splice(ch, reader, writer, done)
        finally:  # cancelled (revoked, shutting down) too: the row has the counts
            ch.audit.update(done.audit())
        return 0 if done.ended == "closed" else 1

    return run


def listen_handler(record: Record) -> ChannelHandler:
    """The ``forward-listen`` channel: listen for the peer while it is open (``ssh -R``)."""

    async def run(ch: Channel) -> int:
        ask = ListenOpen.from_params(ch.params)
        peer = ch.connection.peer_id or "?"
        active: set[asyncio.Task[Any]] = set()
        session = ch.session

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            origin_addr = writer.get_extra_info("peername")
            origin = _show(*origin_addr[:2]) if isinstance(origin_addr, tuple) else "?"
            if len(active) >= MAX_CONNECTIONS_PER_LISTEN:
                writer.transport.abort()
                return
            task = asyncio.current_task()
            assert task is not None
            active.add(task)
            nodelay(writer)
            args = {"kind": LISTEN_CHANNEL, "listen": bound, "origin": origin}
            try:
                try:
                    inbound = await session.open_channel(
                        FORWARD_IN_CHANNEL, ForwardInOpen(listen=ch.id, origin=origin).to_params()
                    )
                except PstpError as exc:
                    writer.transport.abort()
                    record("forward", peer, "fail", detail=f"peer refused: {exc}", args=args)
                    return
                done = Spliced()
                try:
                    await splice(inbound, reader, writer, done)
                finally:  # a stopped listen's connections are reset and recorded too
                    record(
                        "forward",
                        peer,
                        "ok" if done.ended == "closed" else "fail",
                        detail=f"reverse {bound} from {origin}",
                        args=args,
                        result=done.audit(),
                    )
            except asyncio.CancelledError:
                # The listen stopped: splice reset the connection and the row is
                # written.  Not re-raised: asyncio 3.11 logs a traceback for a
                # cancelled client_connected_cb.
                return
            finally:
                active.discard(task)

        try:
            server = await asyncio.start_server(accepted, ask.host, ask.port)
        except OSError as exc:
            why = os_reason(exc)
            raise ChannelFailure(
                ChannelCode.APPLICATION_ERROR,
                f"cannot listen on {_show(ask.host, ask.port)}: {why}",
            ) from None
        host, port = server.sockets[0].getsockname()[:2]
        bound = _show(host, port)
        ch.audit["listen"] = bound
        try:
            await ch.write(f"{bound}\n".encode())
            # Open until the peer closes it (EOF, or the session ends).
            while await ch.read():
                pass
        finally:
            server.close()
            for task in list(active):
                task.cancel()
            await asyncio.gather(*active, return_exceptions=True)
            with contextlib.suppress(OSError):
                await server.wait_closed()
        return 0

    return run
