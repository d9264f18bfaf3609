"""A raw peer: a bare sans-I/O Connection over a real socket, driven by the test.

It lets a conformance case send exact records (several control messages in
one write, REJECT with any code) to the driver under test.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from pstp.protocol.connection import Connection, ConnectionState
from pstp.protocol.events import ChannelOpenRequested, Event
from pstp.wire.frames import InnerType
from pstp.wire.messages import ControlMessage, encode_control
from tests.helpers import TIMEOUT, make_client, make_server

__all__ = ["RawPeer"]


class RawPeer:
    """One end of a session, driven by hand over ``sock``."""

    def __init__(self, sock: socket.socket, conn: Connection) -> None:
        self.sock = sock
        self.conn = conn
        self.events: list[Event] = []
        sock.settimeout(0.05)
        conn.start(time.monotonic())
        self.flush()

    @classmethod
    def client(cls, sock: socket.socket) -> RawPeer:
        """An initiator (it has the test pair key)."""
        return cls(sock, make_client())

    @classmethod
    def server(cls, sock: socket.socket) -> RawPeer:
        """A responder that accepts the test pair key."""
        return cls(sock, make_server())

    def flush(self) -> None:
        """Send whatever the connection has queued, in one write."""
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def poll(self) -> None:
        """Read once (briefly) and feed the connection."""
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            data = None
        except OSError:
            data = b""
        now = time.monotonic()
        if data:
            self.conn.receive_data(data, now)
        elif data == b"" and self.conn.state is not ConnectionState.CLOSED:
            self.conn.receive_eof(now)
        self.events += self.conn.events_received()
        self.flush()

    def until(self, done: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Poll until ``done()``; fail after ``timeout``."""
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                raise AssertionError(f"raw peer: condition not met; events {self.events}")
            self.poll()

    def established(self) -> RawPeer:
        """Wait for the handshake."""
        self.until(lambda: self.conn.state is ConnectionState.ESTABLISHED)
        return self

    def send_control(self, *messages: ControlMessage) -> None:
        """Seal control messages behind the channel table's back, sent in one write."""
        for msg in messages:
            self.conn._seal(InnerType.CHANNEL_CONTROL, encode_control(msg))
        self.flush()

    def opens(self) -> list[ChannelOpenRequested]:
        """The OPENs received so far."""
        return [e for e in self.events if isinstance(e, ChannelOpenRequested)]
