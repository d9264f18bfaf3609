"""The PPCP quick start, running over PSTP/2 (the source documents' quick start, kept working).

The Ping-Pong Communication Protocol's README shows four calls; they work
here unchanged apart from the import line::

    from pstp import create_tcp_server, server_accept

    listener = create_tcp_server("0.0.0.0", 9000)
    while True:
        sock, addr = listener.accept()
        session = server_accept(sock, pre_shared_key)
        print(f"Connected to {session.client_id}!")

    from pstp import find_server, client_connect

    server_socket = find_server(port=9000)
    session = client_connect(server_socket, pre_shared_key)

Underneath, :func:`create_tcp_server` also answers discovery PINGs on the
same UDP port, :func:`find_server` broadcasts one, and the handshake binds
the PING/PONG that found the server (docs/protocol.md §5.3), so a forged
PONG cannot steer the client to another device.  The secret is a
:class:`pstp.PairKey` (PSTP-HS) or plain bytes, which are a passphrase
(PSTP-PAKE, docs/protocol.md §15).

A :class:`PpcpSession` is message-oriented: each :meth:`PpcpSession.send`
is one message and each :meth:`PpcpSession.recv` returns exactly one, framed
on the session-level stream as docs/protocol.md §6.6 says.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator

from pstp.discovery.protocol import Found
from pstp.exceptions import ConnectionClosed, ErrorCode, RemoteProtocolError
from pstp.protocol.connection import Connection
from pstp.protocol.handshake import KeyRing, PairKey
from pstp.protocol.pake import PakeProver, PakeVerifier, Passphrase
from pstp.sync import discovery
from pstp.sync.client import connect
from pstp.sync.connection import ChannelHandler, SyncChannel, SyncSession
from pstp.sync.server import accept
from pstp.wire.messages import Params

__all__ = [
    "MAX_MESSAGE_SIZE",
    "PpcpSession",
    "client_connect",
    "close_tcp_server",
    "create_tcp_server",
    "find_server",
    "server_accept",
]

#: Largest message :meth:`PpcpSession.recv` accepts; the length prefix is
#: checked before the body is buffered, so a peer cannot make us hold more.
MAX_MESSAGE_SIZE = 64 << 20

_LENGTH = struct.Struct(">I")  # the message length prefix, big-endian like every PSTP field
#: The name a PPCP server's key ring gives the one key it holds.
_PEER_NAME = "ppcp-client"

_registry_lock = threading.Lock()
# Listening port -> the discovery responder started with it, so server_accept
# can bind the handshake to the PING/PONG the client saw.
_responders: dict[int, discovery.ResponderThread] = {}
# Sockets from find_server -> the discovery answer that led to them.
_found: weakref.WeakKeyDictionary[socket.socket, Found] = weakref.WeakKeyDictionary()
# Pair key -> its key ring: one ring per key keeps the responder's replay
# guard (the newest HS_INIT timestamp, §5.1) across server_accept calls.
_keyrings: dict[bytes, KeyRing] = {}
# Passphrase -> (SPAKE2+ verifier, when it was seen locked out), and -> prover.
_verifiers: dict[bytes, tuple[PakeVerifier, float | None]] = {}
_provers: dict[bytes, PakeProver] = {}
#: Seconds a locked-out passphrase verifier stays closed before it is replaced.
_LOCKOUT = 60.0


def _device_id() -> str:
    """This host's device id: its name, cut to the 64 bytes of UTF-8 an id may hold."""
    name = socket.gethostname().encode("utf-8")[:64].decode("utf-8", "ignore")
    return name or "pstp-device"


def _credential(secret: bytes | str) -> PairKey | Passphrase:
    """What a PPCP secret stands for: a :class:`PairKey` runs PSTP-HS; anything else
    (plain ``bytes`` such as the quick start's ``b"super-secret-key"``, or ``str``) is a
    human passphrase and runs PSTP-PAKE, so a captured session never becomes an
    offline guessing oracle.  The type decides, never the length.

    Raises:
        TypeError: the secret is neither bytes nor str.
        ValueError: the secret is empty.
    """
    if isinstance(secret, (PairKey, Passphrase)):
        return secret
    if not isinstance(secret, (bytes, bytearray, memoryview, str)):
        raise TypeError("the secret must be bytes, str, pstp.PairKey or pstp.Passphrase")
    return Passphrase(secret if isinstance(secret, str) else bytes(secret))


def _verifier_for(secret: Passphrase) -> PakeVerifier:
    """The server's SPAKE2+ verifier for a passphrase: stretched once per process.

    It allows 20 failed attempts; then it stays closed for a minute and is
    replaced (with a new salt), which caps online guessing at 20 a minute.
    """
    now = time.monotonic()
    with _registry_lock:
        entry = _verifiers.get(secret)
        if entry is not None:
            verifier, closed_at = entry
            if not verifier.closed:
                return verifier
            if closed_at is None:
                _verifiers[secret] = (verifier, now)
                return verifier
            if now - closed_at < _LOCKOUT:
                return verifier
    verifier = PakeVerifier.from_code(
        secret, _device_id(), pairing=False, single_use=False, max_failures=20
    )
    with _registry_lock:
        _verifiers[secret] = (verifier, None)
    return verifier


def _prover_for(secret: Passphrase) -> PakeProver:
    """The client's SPAKE2+ credential for a passphrase, with its PBKDF2 cache."""
    with _registry_lock:
        prover = _provers.get(secret)
        if prover is None:
            prover = _provers[secret] = PakeProver(secret, _device_id())
        return prover


def _keyring_for(key: bytes) -> KeyRing:
    with _registry_lock:
        ring = _keyrings.get(key)
        if ring is None:
            ring = _keyrings[key] = KeyRing()
            ring.add(_PEER_NAME, key)
        return ring


def _local_port(sock: socket.socket) -> int:
    """The socket's local port, or -1 (e.g. a Unix socketpair has none)."""
    try:
        name = sock.getsockname()
    except OSError:
        return -1
    return int(name[1]) if isinstance(name, tuple) else -1


def _stop_responder(port: int, responder: discovery.ResponderThread) -> None:
    with _registry_lock:
        if _responders.get(port) is responder:
            del _responders[port]
    responder.stop()


def create_tcp_server(host: str, port: int) -> socket.socket:
    """Listen for PPCP clients on TCP ``port`` and answer discovery on UDP ``port``.

    The listener has SO_REUSEADDR and a backlog of 128.  Discovery is
    answered on the same address (every IPv4 interface for a wildcard or
    IPv6 ``host``) until :func:`close_tcp_server` is called or the listener
    is garbage-collected.

    Args:
        host: the address to bind, e.g. ``"0.0.0.0"``.
        port: the TCP port (0 picks a free one); discovery uses the same number.

    Returns:
        The listening socket; call ``accept()`` on it.

    Raises:
        OSError: the TCP or UDP port could not be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        bound = int(listener.getsockname()[1])
        # Answer discovery only where the service listens: a server bound to
        # loopback must not announce itself on the LAN.  (Discovery is IPv4.)
        ipv4_wildcard = family is socket.AF_INET6 or host in ("", "0.0.0.0")  # noqa: S104
        responder = discovery.start_responder(
            device_id=_device_id(),
            port=bound,
            host="0.0.0.0" if ipv4_wildcard else host,  # noqa: S104
        )
    except BaseException:
        listener.close()
        raise
    with _registry_lock:
        old = _responders.get(bound)
        _responders[bound] = responder
    if old is not None:
        old.stop()
    weakref.finalize(listener, _stop_responder, bound, responder)
    return listener


def close_tcp_server(listener: socket.socket) -> None:
    """Close a listener from :func:`create_tcp_server` and stop its discovery responder."""
    port = _local_port(listener)
    listener.close()
    with _registry_lock:
        responder = _responders.get(port)
    if responder is not None:
        _stop_responder(port, responder)


def server_accept(sock: socket.socket, secret: bytes | str) -> PpcpSession:
    """Run the handshake as the server over an accepted socket.

    Args:
        sock: a socket from ``listener.accept()``; the session owns it.
        secret: a :class:`~pstp.PairKey` (PSTP-HS), or a passphrase as bytes or
            str (PSTP-PAKE; see :func:`_credential`).

    Returns:
        The established session; ``client_id`` names the client.

    Raises:
        TypeError: the secret is not bytes or str.
        ValueError: the secret is empty.
        HandshakeFailed: the client did not prove the key (the socket is closed).
    """
    cred = _credential(secret)
    port = _local_port(sock)
    with _registry_lock:
        responder = _responders.get(port)
    if isinstance(cred, PairKey):
        session = accept(
            sock,
            keyring=_keyring_for(cred),
            own_id=_device_id(),
            discovery_lookup=responder.lookup if responder is not None else None,
        )
    else:
        session = accept(sock, keyring=KeyRing(), own_id=_device_id(), pake=_verifier_for(cred))
    conn = session.connection
    return PpcpSession(session, client_id=conn.peer_stated_id or session.peer_id)


def find_server(
    port: int = 9000, timeout: float = 2.0, *, addresses: Iterable[str] | None = None
) -> socket.socket:
    """Find a server on the LAN by discovery and connect to it over TCP.

    Args:
        port: the UDP discovery port (the server's TCP port comes in its answer).
        timeout: seconds for discovery, then again for the TCP connection.
        addresses: where to send the PING (default: every interface's broadcast
            address, then 255.255.255.255 and 127.0.0.1).

    Returns:
        A connected socket; pass it to :func:`client_connect`, which binds the
        handshake to the discovery exchange that found the server.

    Raises:
        TimeoutError: no server answered.
        OSError: the TCP connection failed.
    """
    found = discovery.find_first(port=port, timeout=timeout, addresses=addresses)
    sock = socket.create_connection((found.host, found.port), timeout=timeout)
    sock.settimeout(None)
    with _registry_lock:
        _found[sock] = found
    return sock


def client_connect(sock: socket.socket, secret: bytes | str) -> PpcpSession:
    """Run the handshake as the client over a connected socket.

    Args:
        sock: a connected socket, from :func:`find_server` or elsewhere; the
            session owns it.
        secret: a :class:`~pstp.PairKey` (PSTP-HS), or a passphrase as bytes or
            str (PSTP-PAKE).

    Returns:
        The established session; ``client_id`` names the server.

    Raises:
        TypeError: the secret is not bytes or str.
        ValueError: the secret is empty.
        HandshakeFailed: the server did not prove the key, or hung up.
        TimeoutError: the handshake took too long.
    """
    cred = _credential(secret)
    with _registry_lock:
        found = _found.pop(sock, None)
    device_id = found.device_id if found is not None else None
    if isinstance(cred, PairKey):
        session = connect(
            sock=sock,
            pair_key=cred,
            device_id=device_id,
            discovery=found.binding if found is not None else None,
            own_id=_device_id(),
        )
    else:
        session = connect(sock=sock, pake=_prover_for(cred), device_id=device_id)
    return PpcpSession(session, client_id=session.peer_id)


class PpcpSession:
    """A PPCP session: whole messages over a PSTP/2 session.

    Each :meth:`send` is one message; each :meth:`recv` returns exactly one.
    Channels and everything else of the underlying :class:`SyncSession` stay
    available (:attr:`session`, :meth:`open_channel`, :meth:`request`).

    Args:
        session: the established session.
        client_id: the other side's name (see :attr:`client_id`).
        max_message_size: the largest message :meth:`recv` accepts.

    Attributes:
        client_id: on the server, the id the client stated for itself (or the
            name of its key); on the client, the server's device id.
    """

    def __init__(
        self, session: SyncSession, client_id: str, *, max_message_size: int = MAX_MESSAGE_SIZE
    ) -> None:
        self._session = session
        self.client_id = client_id
        self._max = max_message_size
        self._buf = bytearray()
        self._recv_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<PpcpSession client_id={self.client_id!r}>"

    @property
    def session(self) -> SyncSession:
        """The PSTP/2 session underneath."""
        return self._session

    @property
    def peer_id(self) -> str:
        """The peer's device id as the handshake established it."""
        return self._session.peer_id

    @property
    def session_id(self) -> bytes:
        """The handshake hash, unique to this session."""
        return self._session.session_id

    @property
    def connection(self) -> Connection:
        """The sans-I/O connection underneath (for inspection)."""
        return self._session.connection

    def send(self, data: bytes) -> None:
        """Send ``data`` as one message.

        Raises:
            ValueError: the message does not fit the 4-byte length prefix.
            ConnectionClosed: the session has ended.
        """
        if len(data) > 0xFFFFFFFF:
            raise ValueError("a message is at most 4 GiB - 1 bytes")
        self._session.send(_LENGTH.pack(len(data)) + bytes(data))

    def recv(self, timeout: float | None = None) -> bytes:
        """Receive the next whole message.

        Args:
            timeout: seconds to wait; ``None`` waits as long as it takes.

        Raises:
            ConnectionClosed: the session has ended.
            RemoteProtocolError: the peer announced a message above the limit
                (the session is closed: the framing cannot be trusted).
            TimeoutError: no whole message in time (the session stays usable).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._recv_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"no message within {timeout} s")
        try:
            while True:
                if len(self._buf) >= _LENGTH.size:
                    (size,) = _LENGTH.unpack_from(self._buf)
                    if size > self._max:
                        self._session.close(ErrorCode.PROTOCOL_ERROR)
                        raise RemoteProtocolError(
                            f"message of {size} bytes exceeds the limit of {self._max}"
                        )
                    end = _LENGTH.size + size
                    if len(self._buf) >= end:
                        message = bytes(self._buf[_LENGTH.size : end])
                        del self._buf[:end]
                        return message
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._buf += self._session.recv(left)
        finally:
            self._recv_lock.release()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return self.recv()
        except ConnectionClosed as exc:
            if exc.code == ErrorCode.NORMAL:
                raise StopIteration from None
            raise

    def open_channel(
        self,
        kind: str,
        params: Params | None = None,
        *,
        wait_accepted: bool = True,
        timeout: float | None = None,
    ) -> SyncChannel:
        """Open a channel on the session; see :meth:`SyncSession.open_channel`.

        Raises:
            ChannelError: the peer rejected the channel.
            ConnectionClosed: the session has ended.
            TimeoutError: no ACCEPT in time.
        """
        return self._session.open_channel(
            kind, params, wait_accepted=wait_accepted, timeout=timeout
        )

    def request(
        self,
        kind: str,
        data: bytes = b"",
        params: Params | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """One request/response exchange on a channel; see :meth:`SyncSession.request`.

        Raises:
            ChannelError: rejected, or the peer closed the channel with an error.
            ConnectionClosed: the session has ended.
            TimeoutError: no complete reply in time.
        """
        return self._session.request(kind, data, params, timeout)

    def set_handler(self, kind: str, handler: ChannelHandler | None) -> None:
        """Serve (or stop serving) channels of ``kind``; see :meth:`SyncSession.set_handler`."""
        self._session.set_handler(kind, handler)

    def close(self) -> None:
        """Close the session (does nothing if it is already closed)."""
        self._session.close()

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the session has ended.

        Raises:
            TimeoutError: it is still open after ``timeout`` seconds.
        """
        self._session.wait_closed(timeout)

    def __enter__(self) -> PpcpSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
