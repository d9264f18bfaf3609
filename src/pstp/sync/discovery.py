"""Blocking discovery driver: a responder thread for devices, and broadcast queries.

The protocol lives in :mod:`pstp.discovery.protocol`; this module only moves
datagrams.  Queries go to every IPv4 interface's broadcast address, to the
limited broadcast 255.255.255.255, and to 127.0.0.1 (a device on this host).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable

from pstp.discovery.protocol import Browser, Found, Responder
from pstp.netif import broadcast_addresses

__all__ = [
    "ResponderThread",
    "broadcast_addresses",
    "discover",
    "find_first",
    "start_responder",
]

_log = logging.getLogger("pstp.discovery")

#: Backoff after an unexpected receive error: from the first value, doubling, to the last.
_BACKOFF = (0.05, 2.0)
#: While errors repeat, at most one log line per this many seconds.
_LOG_EVERY = 60.0


class ResponderThread:
    """Answers discovery PINGs on a UDP port from a background thread.

    Args:
        responder: the sans-I/O responder.
        host: address to bind (default all).
    """

    def __init__(self, responder: Responder, host: str = "0.0.0.0") -> None:  # noqa: S104
        self.responder = responder
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, responder.port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pstp-discovery", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the UDP socket is bound to."""
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> ResponderThread:
        """Start answering; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the socket."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self._sock.close()

    def lookup(self, nonce: bytes) -> tuple[bytes, bytes] | None:
        """The (PING, PONG) exchanged under ``nonce`` (the handshake's discovery lookup)."""
        with self._lock:
            return self.responder.lookup(nonce, time.monotonic())

    def _run(self) -> None:
        """Answer until stopped.

        An unexpected error (a receive error such as ENOBUFS, or a bug in the
        handling of one datagram) does not end the thread: it is logged (the
        first one, then at most one line a minute with the count), the thread
        waits (50 ms, doubling up to 2 s, back to 50 ms after a datagram is
        handled) and carries on.
        """
        delay = _BACKOFF[0]
        failures, logged_at = 0, -_LOG_EVERY
        while not self._stop.is_set():
            try:
                self._answer_one()
            except Exception as exc:
                if self._stop.is_set():
                    return
                failures += 1
                now = time.monotonic()
                if now - logged_at >= _LOG_EVERY:
                    _log.warning(
                        "discovery responder on port %d: %s (%d error(s)); retrying",
                        *(self.responder.port, exc, failures),
                    )
                    logged_at = now
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, _BACKOFF[1])
            else:
                delay = _BACKOFF[0]

    def _answer_one(self) -> None:
        try:
            data, addr = self._sock.recvfrom(2048)
        except TimeoutError:
            return
        with self._lock:
            self.responder.receive_datagram(data, (addr[0], addr[1]), time.monotonic())
            out = self.responder.datagrams_to_send()
        for pong, dest in out:
            with contextlib.suppress(OSError):
                self._sock.sendto(pong, dest)


def start_responder(
    device_id: str,
    port: int,
    *,
    host: str = "0.0.0.0",  # noqa: S104
    stealth_keys: Callable[[], Iterable[bytes]] | None = None,
) -> ResponderThread:
    """Start answering discovery PINGs for ``device_id`` on UDP ``port``.

    Raises:
        OSError: the UDP port could not be bound.
    """
    return ResponderThread(Responder(device_id, port, stealth_keys=stealth_keys), host).start()


def discover(
    port: int = 9000,
    timeout: float = 1.0,
    *,
    first: bool = False,
    kid_key: bytes | None = None,
    addresses: Iterable[str] | None = None,
) -> list[Found]:
    """Blocking :func:`pstp.asyncio.discovery.discover`: the same arguments and result.

    Broadcasts a PING (to ``addresses``, default :func:`broadcast_addresses`)
    and returns the devices that answered within ``timeout``, in order of
    arrival (only the first with ``first``); ``kid_key`` makes stealth
    devices answer (docs/protocol.md §8.2).

    Raises:
        OSError: the UDP socket could not be created.
    """
    browser = Browser(kid_key=kid_key)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("0.0.0.0", 0))  # noqa: S104 - answers come back from anywhere on the LAN
        for addr in addresses if addresses is not None else broadcast_addresses():
            try:
                sock.sendto(browser.ping, (addr, port))
            except OSError as exc:  # e.g. no route for the limited broadcast
                _log.debug("PING to %s:%d failed: %s", addr, port, exc)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, src = sock.recvfrom(2048)
            except TimeoutError:
                break
            if browser.receive_datagram(data, (src[0], src[1]), time.monotonic()) and first:
                break
    return browser.found


def find_first(
    port: int = 9000,
    timeout: float = 2.0,
    *,
    kid_key: bytes | None = None,
    addresses: Iterable[str] | None = None,
) -> Found:
    """The first device that answers a PING (sent to ``addresses``, as :func:`discover`).

    Raises:
        TimeoutError: nobody answered within ``timeout``.
    """
    found = discover(port, timeout, first=True, kid_key=kid_key, addresses=addresses)
    if not found:
        raise TimeoutError(f"no PSTP device answered on UDP port {port} within {timeout:g} s")
    return found[0]
