"""PSTP/2 over WebSocket (docs/protocol.md §19.2): one frame per binary message.

The WebSocket layer is the ``websockets`` library's sans-I/O protocol, driven
here over an asyncio TCP or TLS transport; nothing else of that library runs
(no tasks, no queues, and no proxy: a ``ws://`` address is always reached
directly, whatever ``HTTP_PROXY`` or ``ALL_PROXY`` say).  The session on top is
the driver's :class:`SessionProtocol` with ``messages=True``, unchanged: to it a
:class:`WebSocketTransport` is an ordinary :class:`asyncio.Transport` that
carries one record per ``write``.

Authentication is the PSTP handshake inside the first messages: the HTTP
upgrade carries no secret (no token in the path or query, no header), and the
device answers any upgrade on its path with the subprotocol ``pstp.v2``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import CLOSED, OPEN
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from pstp.asyncio.connection import SessionProtocol
from pstp.protocol.config import Config
from pstp.wire.frames import FRAME_HEADER_LEN

__all__ = ["CLOSE_TIMEOUT", "SUBPROTOCOL", "WebSocketTransport", "client_link", "server_link"]

#: The WebSocket subprotocol (``Sec-WebSocket-Protocol``) both sides require.
SUBPROTOCOL = Subprotocol("pstp.v2")
#: Seconds to wait for the other side to close TCP after a close frame.
CLOSE_TIMEOUT = 2.0
# The record layer's own overhead above max_record_size (docs/protocol.md §3 rule 3).
_RECORD_EXTRA = 26
# websockets logs handshake failures and peer errors at its own levels: a
# stranger's bytes must not reach our log unbounded (docs/security.md), so its
# loggers get a null logger of their own.
_QUIET = logging.getLogger("pstp.websocket.wire")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def max_message(config: Config) -> int:
    """The largest binary message a peer may send: one frame (§3 rule 3)."""
    return FRAME_HEADER_LEN + max(config.max_record_size + _RECORD_EXTRA, config.max_handshake_size)


class WebSocketTransport(asyncio.Transport):
    """The transport a session sees: each ``write`` one binary WebSocket message.

    It owns the TCP (or TLS) transport underneath, through :class:`_Wire`, and the
    sans-I/O WebSocket protocol.  The session is attached once the upgrade is
    done (client) or at once (server: its handshake deadline then covers the
    upgrade too, and the caps on unauthenticated connections count it).
    """

    def __init__(
        self,
        ws: ServerProtocol | ClientProtocol,
        session: SessionProtocol,
        *,
        path: str | None = None,
        request: Request | None = None,
    ) -> None:
        super().__init__()
        self._ws = ws
        self._session = session
        self._path = path
        self._request = request
        self._tcp: asyncio.Transport | None = None
        self._closing = False
        self._attached = False
        self._fragments: list[bytes] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        #: Set once the upgrade succeeded, or with the error that refused it (client).
        self.opened: asyncio.Future[None] = session.loop.create_future()

    # -- what the session calls (asyncio.Transport) -----------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        ws = self._ws
        if self._closing or ws.state is not OPEN:
            return
        ws.send_binary(data)
        self._flush()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws.state is OPEN:
            ws.send_close(1000)
            self._flush()
        if self._tcp is not None:
            self._tcp.close()

    def abort(self) -> None:
        self._closing = True
        if self._tcp is not None:
            self._tcp.abort()

    def is_closing(self) -> bool:
        return self._closing or self._tcp is None or self._tcp.is_closing()

    def pause_reading(self) -> None:
        if self._tcp is not None:
            self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._tcp is not None:
            self._tcp.resume_reading()

    def is_reading(self) -> bool:
        return self._tcp is not None and self._tcp.is_reading()

    def get_write_buffer_size(self) -> int:
        return 0 if self._tcp is None else self._tcp.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._tcp is not None:
            self._tcp.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "websocket_path":
            return self._path
        if self._tcp is None:
            return default
        return self._tcp.get_extra_info(name, default)

    # -- what the TCP transport calls (through _Wire) ----------------------------

    def _made(self, tcp: asyncio.BaseTransport) -> None:
        self._tcp = tcp  # type: ignore[assignment]  # uvloop's transports do not subclass
        if isinstance(self._ws, ServerProtocol):
            self._attach()  # the handshake deadline and the pre-auth caps start now
        else:
            assert self._request is not None
            self._ws.send_request(self._request)
            self._flush()

    def _data(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        self._events()

    def _eof(self) -> None:
        self._ws.receive_eof()
        self._events()
        if self._attached:
            self._session.eof_received()

    def _lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._closing = True
        if not self.opened.done():
            if isinstance(self._ws, ClientProtocol):  # the server side has nobody waiting
                self.opened.set_exception(ConnectionError("the WebSocket connection closed"))
            else:
                self.opened.cancel()
        if self._attached:
            self._session.connection_lost(exc)

    # -- internals ---------------------------------------------------------------

    def _attach(self) -> None:
        self._attached = True
        self._session.connection_made(self)

    def _flush(self) -> None:
        tcp = self._tcp
        if tcp is None:
            return
        for chunk in self._ws.data_to_send():
            if chunk:
                tcp.write(chunk)
            elif tcp.can_write_eof() and not tcp.is_closing():
                tcp.write_eof()

    def _events(self) -> None:
        ws = self._ws
        for event in ws.events_received():
            if isinstance(event, Request):
                self._upgrade(event)
            elif isinstance(event, Response):
                self._upgraded(event)
            elif event.opcode is Opcode.BINARY or event.opcode is Opcode.CONT:
                self._message(event.data, event.fin)
            elif event.opcode is Opcode.TEXT:
                ws.fail(1003, "PSTP sends binary messages only")
            elif event.opcode is Opcode.CLOSE and self._attached:
                # The session learns it as the end of the transport: without a
                # PSTP CLOSE record first, that is truncation (§6.4).
                self._session.eof_received()
        self._flush()
        if ws.close_expected() and self._close_timer is None and self._tcp is not None:
            tcp = self._tcp
            self._close_timer = self._session.loop.call_later(CLOSE_TIMEOUT, tcp.abort)
        if ws.state is CLOSED and self._tcp is not None:
            self._tcp.close()

    def _message(self, data: bytes | bytearray | memoryview, fin: bool) -> None:
        if not fin or self._fragments is not None:
            # A fragmented message (websockets bounds its total size): rare, kept whole.
            if self._fragments is None:
                self._fragments = []
            self._fragments.append(bytes(data))
            if not fin:
                return
            data, self._fragments = b"".join(self._fragments), None
        if self._attached and not self._closing:
            self._session.message_received(bytes(data))

    def _upgrade(self, request: Request) -> None:
        ws = self._ws
        assert isinstance(ws, ServerProtocol)
        if request.path.partition("?")[0] != self._path:
            response = ws.reject(404, "Not Found\n")
        else:
            response = ws.accept(request)
            if response.status_code == 101 and ws.subprotocol != SUBPROTOCOL:
                ws.handshake_exc = InvalidHandshake("no PSTP subprotocol")
                response = ws.reject(400, f"Sec-WebSocket-Protocol must offer {SUBPROTOCOL}\n")
        if "Server" in response.headers:
            del response.headers["Server"]  # no version banner for strangers
        ws.send_response(response)
        self._flush()
        if response.status_code == 101:
            self.opened.set_result(None)
        elif self._tcp is not None:
            self._tcp.close()

    def _upgraded(self, response: Response) -> None:
        ws = self._ws
        if ws.handshake_exc is not None or ws.state is not OPEN:
            why = f"HTTP {response.status_code} {response.reason_phrase}".strip()
            self.opened.set_exception(
                ConnectionRefusedError(f"the WebSocket upgrade was refused ({why})")
            )
            self.abort()
            return
        self.opened.set_result(None)
        self._attach()


class _Wire(asyncio.Protocol):
    """The TCP side of a :class:`WebSocketTransport`."""

    def __init__(self, link: WebSocketTransport) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.link._made(transport)

    def data_received(self, data: bytes) -> None:
        self.link._data(data)

    def eof_received(self) -> bool:
        self.link._eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost(exc)

    def pause_writing(self) -> None:
        if self.link._attached:
            self.link._session.pause_writing()

    def resume_writing(self) -> None:
        if self.link._attached:
            self.link._session.resume_writing()


def server_link(
    session: Callable[[], SessionProtocol], path: str, config: Config
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for ``create_server``: PSTP sessions on WebSocket ``path``.

    ``session`` makes the session protocol of each connection, as for TCP
    (give it ``messages=True``).
    """

    def factory() -> asyncio.Protocol:
        ws = ServerProtocol(subprotocols=[SUBPROTOCOL], max_size=max_message(config), logger=_QUIET)
        return _Wire(WebSocketTransport(ws, session(), path=path))

    return factory


def client_link(url: str, session: SessionProtocol, config: Config) -> _Wire:
    """The protocol for ``create_connection`` that upgrades to ``url`` and then runs ``session``.

    Await ``protocol.link.opened`` for the upgrade, then the session's handshake.
    """
    ws = ClientProtocol(
        parse_uri(url), subprotocols=[SUBPROTOCOL], max_size=max_message(config), logger=_QUIET
    )
    request = ws.connect()
    return _Wire(WebSocketTransport(ws, session, path=ws.uri.resource_name, request=request))
