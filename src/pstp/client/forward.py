"""``pstp forward``: local (``-L``, as ``ssh -L``) and reverse (``-R``) port forwarding.

Local: the client listens on ``[ADDR:]PORT`` and opens one ``forward`` channel
per accepted connection; the device connects to the target, if its policy
allows (protocol.md §17.14).  Reverse: the client asks the device to listen
(``forward-listen``), and connects each ``forward-in`` channel the device then
opens to the local ``HOST:PORT`` it named (§17.15).  Each connection is one
channel with flow control and half-close; the session carries them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from pstp.asyncio.connection import Channel, ChannelHandler, Session
from pstp.asyncio.splice import nodelay, os_reason, splice
from pstp.exceptions import ChannelError, ChannelFailure, PstpError
from pstp.protocol.kinds import ForwardInOpen, ForwardOpen, ListenOpen
from pstp.wire.messages import ChannelCode

__all__ = ["CONNECT_TIMEOUT", "Forwarder", "Spec", "parse_spec", "show"]

#: Seconds to wait for a local target of a reverse forward to accept.
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Spec:
    """One forward: listen on ``bind_host:bind_port``, carry to ``host:port``.

    For ``-L`` the listening side is this machine and the target is reached
    from the device; for ``-R`` the device listens and the target is reached
    from here.
    """

    bind_host: str
    bind_port: int
    host: str
    port: int
    text: str

    def __str__(self) -> str:
        return self.text


def _split(text: str) -> list[str]:
    """``a:b:[v6]:c`` into its parts, an IPv6 address in brackets kept whole."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == "[":
            j = text.find("]", i)
            if j < 0 or (j + 1 < n and text[j + 1] != ":"):
                raise ValueError(f"{text!r}: an IPv6 address goes in brackets, then ':'")
            parts.append(text[i + 1 : j])
            i = j + 1
            if i >= n:
                return parts
        else:
            j = text.find(":", i)
            if j < 0:
                parts.append(text[i:])
                return parts
            parts.append(text[i:j])
            i = j
        i += 1  # the ':'


def _port(text: str, whole: str, *, zero: bool = False) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ValueError(f"{whole!r}: {text!r} is not a port")
    port = int(text)
    if not (0 if zero else 1) <= port <= 65535:
        raise ValueError(f"{whole!r}: port {port} is out of range")
    return port


def parse_spec(text: str, *, reverse: bool = False) -> Spec:
    """Read ``[BIND_ADDR:]BIND_PORT:HOST:HOST_PORT`` (IPv6 addresses in brackets).

    The bind address defaults to ``127.0.0.1`` (this machine only, as ssh does);
    it must be an IP address.  For ``-R`` a bind port of 0 asks the device for
    any free port.

    Raises:
        ValueError: what is wrong, with the form to write.
    """
    parts = _split(text.strip())
    if len(parts) == 3:
        parts.insert(0, "127.0.0.1")
    if len(parts) != 4 or not all(parts[i] for i in (0, 2)):
        raise ValueError(
            f"{text!r} is not [BIND_ADDR:]PORT:HOST:PORT (e.g. 8080:camera.local:80; "
            "IPv6 addresses in brackets)"
        )
    bind_host, bind_port, host, port = parts
    try:
        ipaddress.ip_address(bind_host)
    except ValueError:
        raise ValueError(f"{text!r}: listen on an IP address, not {bind_host!r}") from None
    return Spec(bind_host, _port(bind_port, text, zero=reverse), host, _port(port, text), text)


def show(host: str, port: int) -> str:
    """``HOST:PORT``, an IPv6 address in brackets."""
    return _show(host, port)


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Forwarder:
    """The forwards of one ``pstp forward`` run over one session.

    Args:
        say: where progress lines go (the CLI's stderr).
        reason: the reason sent with every channel (policy and audit).
    """

    def __init__(self, say: Callable[[str], None], reason: str | None = None) -> None:
        self._say = say
        self._reason = reason
        self._servers: list[asyncio.Server] = []
        self._listens: dict[int, Spec] = {}
        self._listen_channels: list[Channel] = []
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: Connections carried so far, refused by the device, and failed on the way
        #: (the target refused, a reset).
        self.carried = 0
        self.refused = 0
        self.failed = 0

    @property
    def handlers(self) -> dict[str, ChannelHandler]:
        """The channel kinds this side serves: ``forward-in`` for its ``-R`` forwards."""
        return {ForwardInOpen.KIND: self._forward_in}

    async def local(self, session: Session, spec: Spec) -> str:
        """Listen here for ``spec`` (``-L``); returns the address bound."""

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            nodelay(writer)
            try:
                params = ForwardOpen(host=spec.host, port=spec.port, reason=self._reason)
                try:
                    ch = await session.open_channel(ForwardOpen.KIND, params.to_params())
                except PstpError as exc:
                    self.refused += 1
                    self._say(f"{spec}: refused by the device: {_reason(exc)}")
                    writer.transport.abort()
                    return
                self.carried += 1
                done = await splice(ch, reader, writer)
                if done.ended != "closed":
                    self.failed += 1
                    self._say(f"{spec}: {done.ended}")
            except asyncio.CancelledError:
                # Stopping: splice reset the connection.  Not re-raised: asyncio 3.11
                # logs a traceback for a cancelled client_connected_cb.
                return
            finally:
                self._tasks.discard(task)

        server = await asyncio.start_server(accepted, spec.bind_host, spec.bind_port)
        self._servers.append(server)
        return _show(*server.sockets[0].getsockname()[:2])

    async def remote(self, session: Session, spec: Spec) -> str:
        """Ask the device to listen for ``spec`` (``-R``); returns the address it bound.

        Raises:
            ChannelError: the device refused (its policy, or the port is taken).
        """
        params = ListenOpen(host=spec.bind_host, port=spec.bind_port, reason=self._reason)
        ch = await session.open_channel(ListenOpen.KIND, params.to_params())
        self._listens[ch.id] = spec
        self._listen_channels.append(ch)
        line = b""
        while not line.endswith(b"\n"):
            chunk = await ch.read(256)
            if not chunk or len(line) > 256:
                raise ChannelError(ch.id, ChannelCode.APPLICATION_ERROR, "the device said nothing")
            line += chunk
        bound = line.decode(errors="replace").strip()
        watch = asyncio.ensure_future(self._watch(ch, spec, bound))
        self._tasks.add(watch)
        watch.add_done_callback(self._tasks.discard)
        return bound

    async def _watch(self, ch: Channel, spec: Spec, bound: str) -> None:
        """Say when the device stops listening for ``spec`` (revoked, or it went away)."""
        why = "it stopped listening"
        try:
            while await ch.read():
                pass
        except PstpError as exc:
            why = _reason(exc)
        finally:
            self._listens.pop(ch.id, None)
        if not self._closing:
            self._say(f"-R {spec}: the device no longer listens on {bound}: {why}")

    async def _forward_in(self, ch: Channel) -> int:
        ask = ForwardInOpen.from_params(ch.params)
        spec = self._listens.get(ask.listen)
        if spec is None:
            raise ChannelFailure(ChannelCode.REFUSED, "no such forward here")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(spec.host, spec.port), CONNECT_TIMEOUT
            )
        except TimeoutError:
            self._say(f"-R {spec}: {_show(spec.host, spec.port)}: no answer")
            raise ChannelFailure(ChannelCode.NOT_FOUND, "no answer") from None
        except OSError as exc:
            why = os_reason(exc)
            self._say(f"-R {spec}: {_show(spec.host, spec.port)}: {why}")
            raise ChannelFailure(ChannelCode.NOT_FOUND, why) from None
        nodelay(writer)
        self.carried += 1
        done = await splice(ch, reader, writer)
        return 0 if done.ended == "closed" else 1

    async def close(self) -> None:
        """Stop listening, here and on the device, and end the connections still carried."""
        self._closing = True
        for ch in self._listen_channels:  # the device stops listening and closes it
            with contextlib.suppress(PstpError):
                await ch.write_eof()
        for ch in self._listen_channels:
            with contextlib.suppress(PstpError, TimeoutError):
                await asyncio.wait_for(ch.wait_closed(), 2.0)
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(OSError):
                await server.wait_closed()


def _reason(exc: BaseException) -> str:
    return exc.reason or str(exc) if isinstance(exc, ChannelError) else str(exc)
