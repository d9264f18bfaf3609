"""Carry a TCP connection's bytes over a channel, both ways (docs/protocol.md §17.14).

Port forwarding on either side (the device's ``forward`` and ``forward-listen``
handlers, the client's ``pstp forward``) joins an accepted or opened TCP
connection to one channel: what TCP delivers goes out as channel data, what the
channel delivers is written to TCP, and each direction's end (TCP FIN, channel
EOF) is passed on as the other's half-close.  Flow control is the channel's
window one way and TCP's the other: nothing is buffered beyond one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass

from pstp.asyncio.connection import Channel
from pstp.exceptions import ChannelError, PstpError
from pstp.wire.messages import ChannelCode

__all__ = ["CHUNK", "Spliced", "nodelay", "os_reason", "splice"]

#: Bytes read from TCP at most at once (a few records' worth).
CHUNK = 256 << 10


@dataclass
class Spliced:
    """How a spliced connection went (for the audit log and ``-v``).

    Attributes:
        sent: bytes from TCP into the channel.
        received: bytes from the channel out to TCP.
        seconds: how long it lasted.
        ended: how it ended: ``"closed"`` (both sides finished), or what broke.
    """

    sent: int = 0
    received: int = 0
    seconds: float = 0.0
    ended: str = "closed"

    def audit(self) -> dict[str, object]:
        """The audit row's view of it."""
        return {
            "bytes_in": self.sent,
            "bytes_out": self.received,
            "seconds": round(self.seconds, 3),
            "ended": self.ended,
        }


def nodelay(writer: asyncio.StreamWriter) -> None:
    """Turn Nagle off on a forwarded TCP connection (interactive traffic goes at once)."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def splice(
    ch: Channel,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    done: Spliced | None = None,
) -> Spliced:
    """Carry bytes between ``reader``/``writer`` and ``ch`` until both directions ended.

    The TCP connection is closed on return.  A failure on one side (a reset,
    the channel closed with an error) ends the other: the channel is closed
    with APPLICATION_ERROR if TCP broke, the TCP connection is reset if the
    channel did.  Cancelled (the forward is stopped or revoked), it resets
    the TCP connection and closes the channel with CANCELLED.  ``done``, if
    given, is filled in as it goes, so a caller that is cancelled still has
    the counts.
    """
    done = done if done is not None else Spliced()
    started = time.monotonic()

    async def inbound() -> None:
        while data := await reader.read(CHUNK):
            done.sent += len(data)
            await ch.write(data)
        await ch.write_eof()

    async def outbound() -> None:
        while data := await ch.read():
            done.received += len(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    tasks = [asyncio.ensure_future(inbound()), asyncio.ensure_future(outbound())]
    try:
        for finished in asyncio.as_completed(tasks):
            try:
                await finished
            except (OSError, ChannelError, PstpError) as exc:
                done.ended = _why(exc)
                for task in tasks:
                    task.cancel()
                if isinstance(exc, OSError):
                    await ch.close(code=ChannelCode.APPLICATION_ERROR, reason=done.ended)
                else:
                    writer.transport.abort()
                break
    except asyncio.CancelledError:
        done.ended = "stopped"
        writer.transport.abort()
        with contextlib.suppress(PstpError):
            await ch.close(code=ChannelCode.CANCELLED, reason="forward stopped")
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        done.seconds = time.monotonic() - started
    return done


def os_reason(exc: OSError) -> str:
    """An OSError in words, the same on every event loop (``connection refused``)."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, OSError):
        return os_reason(exc)
    if isinstance(exc, ChannelError) and exc.reason:
        return exc.reason  # what the other side said, without the channel's number
    return str(exc) or type(exc).__name__
