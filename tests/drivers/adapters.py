"""One small adapter per driver, so the conformance cases run unchanged on both.

Each adapter starts a real loopback TCP server and client of its driver, with
server-side channel *behaviours* (named below) written once per driver in its
own idiom, and exposes one blocking API to the tests.  The asyncio adapter
runs its event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from pstp.asyncio.client import connect as aconnect
from pstp.asyncio.connection import Channel as AChannel
from pstp.asyncio.server import serve as aserve
from pstp.exceptions import ChannelFailure, PermissionDenied, PstpError
from pstp.protocol.config import Config
from pstp.protocol.session import Authorizer
from pstp.sync.client import connect as sconnect
from pstp.sync.connection import SyncChannel, SyncSession
from pstp.sync.server import accept as saccept
from tests.helpers import PAIR_KEY, SERVER_ID, TIMEOUT, make_client, make_keyring, make_server

__all__ = ["BEHAVIOURS", "ChannelSide", "Driver", "SessionSide", "make_driver"]

#: Server behaviours every adapter implements: name -> what it does.
BEHAVIOURS = {
    "echo": "echo everything, then EOF, exit 7",
    "status": "read to EOF, exit with the int in the data (empty: None)",
    "size": "read to EOF, reply with the byte count as text",
    "deny": "raise PermissionDenied('not for you')",
    "fail": "raise ChannelFailure(127, 'command not found')",
    "local": "raise PstpError('local detail')",
    "boom": "raise RuntimeError('secret detail')",
    "big": "read an int n, write n bytes, exit 0",
    "wait": "read to EOF, then exit 0 (blocks until the peer half-closes)",
    "first": "read one chunk, reply with it, exit 0 (leaves the rest unread)",
    "notint": "read to EOF, return a string (no exit status)",
    "hold": "read to EOF, then keep the channel open until the opener closes it",
}


class ChannelSide(Protocol):
    """A channel seen through an adapter (blocking calls)."""

    id: int

    def read(self, n: int = -1) -> bytes: ...
    def read_all(self, limit: int | None = None) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def close(self, status: int | None = None, code: int = 0, reason: str = "") -> None: ...
    def wait_closed(self) -> int | None: ...
    def exit_status(self) -> int | None: ...
    def close_code(self) -> int | None: ...
    def close_reason(self) -> str: ...
    def kind(self) -> str: ...


class SessionSide(Protocol):
    """A client session seen through an adapter (blocking calls)."""

    def request(
        self, kind: str, data: bytes = b"", params: dict[str, Any] | None = None
    ) -> bytes: ...
    def open(
        self, kind: str, params: dict[str, Any] | None = None, wait: bool = True
    ) -> ChannelSide: ...
    def send(self, data: bytes) -> None: ...
    def recv(self) -> bytes: ...
    def recv_all(self) -> list[bytes]: ...
    def close(self, code: int = 0, reason: str = "") -> None: ...
    def wait_closed(self) -> None: ...
    def is_closed(self) -> bool: ...
    def last_rtt(self) -> float | None: ...
    def peer_id(self) -> str: ...
    def session_id(self) -> bytes: ...
    def serve_kind(self, kind: str, behaviour: str | None) -> None: ...


class Driver(Protocol):
    """Starts a served session pair of one driver."""

    name: str

    def session(
        self,
        *,
        config: Config | None = None,
        authorize: Authorizer | None = None,
        extra: dict[str, str] | None = None,
        client_handlers: dict[str, str] | None = None,
    ) -> SessionSide: ...
    def server_session(self) -> SessionSide: ...
    def serve_raw(self, sock: socket.socket, config: Config | None = None) -> None: ...
    def client_over(self, sock: socket.socket, config: Config | None = None) -> SessionSide: ...
    def stop(self) -> None: ...


def _status_of(data: bytes) -> int | None:
    return int(data) if data else None


# -- the blocking driver -------------------------------------------------------


def _sync_behaviour(name: str) -> Callable[[SyncChannel], int | None]:
    def echo(ch: SyncChannel) -> int:
        for data in ch:
            ch.write(data)
        ch.write_eof()
        return 7

    def status(ch: SyncChannel) -> int | None:
        return _status_of(ch.read_all())

    def size(ch: SyncChannel) -> None:
        ch.write(str(len(ch.read_all())).encode())

    def deny(ch: SyncChannel) -> None:
        raise PermissionDenied("not for you")

    def fail(ch: SyncChannel) -> None:
        raise ChannelFailure(127, "command not found")

    def local(ch: SyncChannel) -> None:
        raise PstpError("local detail")

    def boom(ch: SyncChannel) -> None:
        raise RuntimeError("secret detail")

    def big(ch: SyncChannel) -> int:
        n = int(ch.read_all())
        ch.write(bytes(n))
        return 0

    def wait(ch: SyncChannel) -> int:
        ch.read_all()
        return 0

    def first(ch: SyncChannel) -> int:
        ch.write(ch.read())
        return 0

    def notint(ch: SyncChannel) -> Any:
        ch.read_all()
        return "done"

    def hold(ch: SyncChannel) -> None:
        ch.read_all()
        ch.wait_closed()

    return dict(
        echo=echo, status=status, size=size, deny=deny, fail=fail, local=local, boom=boom,
        big=big, wait=wait, first=first, notint=notint, hold=hold,
    )[name]  # fmt: skip


class _SyncChannel:
    def __init__(self, ch: SyncChannel) -> None:
        self._ch = ch
        self.id = ch.id

    def read(self, n: int = -1) -> bytes:
        return self._ch.read(n, timeout=TIMEOUT)

    def read_all(self, limit: int | None = None) -> bytes:
        return self._ch.read_all(timeout=TIMEOUT, limit=limit)

    def write(self, data: bytes) -> None:
        self._ch.write(data, timeout=TIMEOUT)

    def write_eof(self) -> None:
        self._ch.write_eof()

    def close(self, status: int | None = None, code: int = 0, reason: str = "") -> None:
        self._ch.close(status, code, reason)

    def wait_closed(self) -> int | None:
        return self._ch.wait_closed(timeout=TIMEOUT)

    def exit_status(self) -> int | None:
        return self._ch.exit_status

    def close_code(self) -> int | None:
        return self._ch.close_code

    def close_reason(self) -> str:
        return self._ch.close_reason

    def kind(self) -> str:
        return self._ch.kind


class _SyncSession:
    def __init__(self, s: SyncSession) -> None:
        self.s = s

    def request(self, kind: str, data: bytes = b"", params: dict[str, Any] | None = None) -> bytes:
        return self.s.request(kind, data, params, timeout=TIMEOUT)

    def open(
        self, kind: str, params: dict[str, Any] | None = None, wait: bool = True
    ) -> ChannelSide:
        return _SyncChannel(self.s.open_channel(kind, params, wait_accepted=wait, timeout=TIMEOUT))

    def send(self, data: bytes) -> None:
        self.s.send(data)

    def recv(self) -> bytes:
        return self.s.recv(timeout=TIMEOUT)

    def recv_all(self) -> list[bytes]:
        return list(self.s)

    def close(self, code: int = 0, reason: str = "") -> None:
        self.s.close(code, reason)

    def wait_closed(self) -> None:
        self.s.wait_closed(TIMEOUT)

    def is_closed(self) -> bool:
        return self.s.is_closed

    def last_rtt(self) -> float | None:
        return self.s.last_rtt

    def peer_id(self) -> str:
        return self.s.peer_id

    def session_id(self) -> bytes:
        return self.s.session_id

    def serve_kind(self, kind: str, behaviour: str | None) -> None:
        self.s.set_handler(kind, _sync_behaviour(behaviour) if behaviour else None)


class SyncDriver:
    """The blocking driver: a listening socket and an accept thread per session."""

    name = "sync"

    def __init__(self) -> None:
        self._sessions: list[SyncSession] = []
        self._servers: list[SyncSession] = []
        self._lock = threading.Lock()
        self._server_ready = threading.Event()

    def session(
        self,
        *,
        config: Config | None = None,
        authorize: Authorizer | None = None,
        extra: dict[str, str] | None = None,
        client_handlers: dict[str, str] | None = None,
    ) -> SessionSide:
        handlers = {k: _sync_behaviour(k) for k in BEHAVIOURS}
        handlers.update({k: _sync_behaviour(v) for k, v in (extra or {}).items()})
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def serve() -> None:
            with listener:
                sock, _ = listener.accept()
            session = saccept(
                sock,
                keyring=make_keyring(),
                own_id=SERVER_ID,
                config=config,
                handlers=handlers,
                timeout=TIMEOUT,
                authorize=authorize,
            )
            with self._lock:
                self._servers.append(session)
            self._server_ready.set()

        threading.Thread(target=serve, daemon=True).start()
        s = sconnect(
            "127.0.0.1",
            port,
            pair_key=PAIR_KEY,
            config=config,
            timeout=TIMEOUT,
            handlers={k: _sync_behaviour(v) for k, v in (client_handlers or {}).items()},
        )
        self._sessions.append(s)
        return _SyncSession(s)

    def server_session(self) -> SessionSide:
        assert self._server_ready.wait(TIMEOUT)
        with self._lock:
            return _SyncSession(self._servers[-1])

    def serve_raw(self, sock: socket.socket, config: Config | None = None) -> None:
        handlers = {k: _sync_behaviour(k) for k in BEHAVIOURS}

        def serve() -> None:
            session = saccept(
                sock,
                keyring=make_keyring(),
                own_id=SERVER_ID,
                config=config,
                handlers=handlers,
                timeout=TIMEOUT,
            )
            with self._lock:
                self._servers.append(session)
            self._server_ready.set()

        threading.Thread(target=serve, daemon=True).start()

    def client_over(self, sock: socket.socket, config: Config | None = None) -> SessionSide:
        s = sconnect(pair_key=PAIR_KEY, sock=sock, config=config, timeout=TIMEOUT)
        self._sessions.append(s)
        return _SyncSession(s)

    def stop(self) -> None:
        for s in [*self._sessions, *self._servers]:
            with contextlib.suppress(Exception):
                s.close()


# -- the asyncio driver -----------------------------------------------------------


def _async_behaviour(name: str) -> Callable[[AChannel], Coroutine[Any, Any, int | None]]:
    async def echo(ch: AChannel) -> int:
        async for data in ch:
            await ch.write(data)
        await ch.write_eof()
        return 7

    async def status(ch: AChannel) -> int | None:
        return _status_of(await ch.read_all())

    async def size(ch: AChannel) -> None:
        await ch.write(str(len(await ch.read_all())).encode())

    async def deny(ch: AChannel) -> None:
        raise PermissionDenied("not for you")

    async def fail(ch: AChannel) -> None:
        raise ChannelFailure(127, "command not found")

    async def local(ch: AChannel) -> None:
        raise PstpError("local detail")

    async def boom(ch: AChannel) -> None:
        raise RuntimeError("secret detail")

    async def big(ch: AChannel) -> int:
        n = int(await ch.read_all())
        await ch.write(bytes(n))
        return 0

    async def wait(ch: AChannel) -> int:
        await ch.read_all()
        return 0

    async def first(ch: AChannel) -> int:
        await ch.write(await ch.read())
        return 0

    async def notint(ch: AChannel) -> Any:
        await ch.read_all()
        return "done"

    async def hold(ch: AChannel) -> None:
        await ch.read_all()
        await ch.wait_closed()

    return dict(
        echo=echo, status=status, size=size, deny=deny, fail=fail, local=local, boom=boom,
        big=big, wait=wait, first=first, notint=notint, hold=hold,
    )[name]  # fmt: skip


class _Loop:
    """An event loop in a background thread; ``run`` blocks on a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)


class _AsyncChannel:
    def __init__(self, loop: _Loop, ch: AChannel) -> None:
        self._loop = loop
        self._ch = ch
        self.id = ch.id

    def read(self, n: int = -1) -> bytes:
        return self._loop.run(self._ch.read(n))  # type: ignore[no-any-return]

    def read_all(self, limit: int | None = None) -> bytes:
        return self._loop.run(self._ch.read_all(limit))  # type: ignore[no-any-return]

    def write(self, data: bytes) -> None:
        self._loop.run(self._ch.write(data))

    def write_eof(self) -> None:
        self._loop.run(self._ch.write_eof())

    def close(self, status: int | None = None, code: int = 0, reason: str = "") -> None:
        self._loop.run(self._ch.close(status, code, reason))

    def wait_closed(self) -> int | None:
        return self._loop.run(self._ch.wait_closed())  # type: ignore[no-any-return]

    def exit_status(self) -> int | None:
        return self._ch.exit_status

    def close_code(self) -> int | None:
        return self._ch.close_code

    def close_reason(self) -> str:
        return self._ch.close_reason

    def kind(self) -> str:
        return self._ch.kind


class _AsyncSession:
    def __init__(self, loop: _Loop, s: Any) -> None:
        self._loop = loop
        self.s = s

    def request(self, kind: str, data: bytes = b"", params: dict[str, Any] | None = None) -> bytes:
        return self._loop.run(self.s.request(kind, data, params))  # type: ignore[no-any-return]

    def open(
        self, kind: str, params: dict[str, Any] | None = None, wait: bool = True
    ) -> ChannelSide:
        ch = self._loop.run(self.s.open_channel(kind, params, wait_accepted=wait))
        return _AsyncChannel(self._loop, ch)

    def send(self, data: bytes) -> None:
        self._loop.run(self.s.send(data))

    def recv(self) -> bytes:
        return self._loop.run(self.s.recv())  # type: ignore[no-any-return]

    def recv_all(self) -> list[bytes]:
        async def all_() -> list[bytes]:
            return [chunk async for chunk in self.s]

        return self._loop.run(all_())  # type: ignore[no-any-return]

    def close(self, code: int = 0, reason: str = "") -> None:
        self._loop.run(self.s.close(code, reason))

    def wait_closed(self) -> None:
        self._loop.run(self.s.wait_closed())

    def is_closed(self) -> bool:
        return self.s.is_closed  # type: ignore[no-any-return]

    def last_rtt(self) -> float | None:
        return self.s.last_rtt  # type: ignore[no-any-return]

    def peer_id(self) -> str:
        return self.s.peer_id  # type: ignore[no-any-return]

    def session_id(self) -> bytes:
        return self.s.session_id  # type: ignore[no-any-return]

    def serve_kind(self, kind: str, behaviour: str | None) -> None:
        handler = _async_behaviour(behaviour) if behaviour else None
        self._loop.loop.call_soon_threadsafe(self.s.set_handler, kind, handler)
        self._loop.run(asyncio.sleep(0))  # the change is made before we return


class AsyncDriver:
    """The asyncio driver: ``serve`` and ``connect`` on a loop in a thread."""

    name = "asyncio"
    #: The HTTP path sessions are served on over WebSocket (None: TCP).
    websocket: str | None = None

    def __init__(self) -> None:
        self._loop = _Loop()
        self._servers: list[Any] = []
        self._sessions: list[Any] = []
        self._served: list[Any] = []

    def session(
        self,
        *,
        config: Config | None = None,
        authorize: Authorizer | None = None,
        extra: dict[str, str] | None = None,
        client_handlers: dict[str, str] | None = None,
    ) -> SessionSide:
        handlers = {k: _async_behaviour(k) for k in BEHAVIOURS}
        handlers.update({k: _async_behaviour(v) for k, v in (extra or {}).items()})

        async def start() -> Any:
            def on_session(session: Any) -> None:
                self._served.append(session)

            server = await aserve(
                None,
                "127.0.0.1",
                0,
                keyring=make_keyring(),
                own_id=SERVER_ID,
                config=config,
                handlers=handlers,
                authorize=authorize,
                on_session=on_session,
                websocket=self.websocket,
            )
            self._servers.append(server)
            where = f"ws://127.0.0.1:{server.port}{self.websocket}" if self.websocket else None
            return await aconnect(
                where or "127.0.0.1",
                None if where else server.port,
                pair_key=PAIR_KEY,
                config=config,
                handlers={k: _async_behaviour(v) for k, v in (client_handlers or {}).items()},
            )

        s = self._loop.run(start())
        self._sessions.append(s)
        return _AsyncSession(self._loop, s)

    def server_session(self) -> SessionSide:
        async def wait() -> Any:
            while not self._served:
                await asyncio.sleep(0.01)
            return self._served[-1]

        return _AsyncSession(self._loop, self._loop.run(wait()))

    def serve_raw(self, sock: socket.socket, config: Config | None = None) -> None:
        handlers = {k: _async_behaviour(k) for k in BEHAVIOURS}

        async def start() -> None:
            from pstp.asyncio.connection import Session, SessionProtocol

            conn = make_server(config)
            loop = asyncio.get_running_loop()
            _, proto = await loop.connect_accepted_socket(
                lambda: SessionProtocol(conn, handlers=handlers), sock
            )
            self._served.append(Session(proto))

        self._loop.run(start())

    def client_over(self, sock: socket.socket, config: Config | None = None) -> SessionSide:
        async def start() -> Any:
            from pstp.asyncio.connection import Session, SessionProtocol

            conn = make_client(config)
            loop = asyncio.get_running_loop()
            _, proto = await loop.connect_accepted_socket(lambda: SessionProtocol(conn), sock)
            await asyncio.wait_for(proto.handshake, TIMEOUT)
            return Session(proto)

        s = self._loop.run(start())
        self._sessions.append(s)
        return _AsyncSession(self._loop, s)

    def stop(self) -> None:
        async def close() -> None:
            for s in self._sessions:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.close(), TIMEOUT)
            for server in self._servers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.close(), TIMEOUT)

        with contextlib.suppress(Exception):
            self._loop.run(close())
        self._loop.stop()


class WebSocketDriver(AsyncDriver):
    """The asyncio driver over WebSocket: every session through a ws:// upgrade."""

    name = "websocket"
    websocket = "/pstp"


def make_driver(name: str) -> Driver:
    """The adapter for a driver name (``websocket``: asyncio over ws://)."""
    drivers: dict[str, type[Driver]] = {
        "sync": SyncDriver,
        "asyncio": AsyncDriver,
        "websocket": WebSocketDriver,
    }
    return drivers[name]()
