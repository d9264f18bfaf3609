"""Asyncio discovery browser: broadcast one PING and collect the PONGs (docs/protocol.md §8).

The protocol lives in :class:`pstp.discovery.protocol.Browser`; this module
only moves datagrams.  The PING goes to every IPv4 interface's broadcast
address, to the limited broadcast 255.255.255.255 and to 127.0.0.1 (§8), from
one UDP socket bound to an ephemeral port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable

from pstp.discovery.protocol import Browser, Found
from pstp.netif import broadcast_addresses

__all__ = ["discover"]

_log = logging.getLogger("pstp.discovery")


class _BrowserProtocol(asyncio.DatagramProtocol):
    """Feeds every datagram received to the browser; wakes the caller on a new device."""

    def __init__(self, browser: Browser, first: bool, done: asyncio.Future[None]) -> None:
        self._browser = browser
        self._first = first
        self._done = done

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        now = asyncio.get_running_loop().time()
        found = self._browser.receive_datagram(data, (str(addr[0]), int(addr[1])), now)
        if found is not None and self._first and not self._done.done():
            self._done.set_result(None)

    def error_received(self, exc: Exception) -> None:
        # A send that fails (no route for the limited broadcast, §8) is skipped.
        _log.debug("discovery socket error: %s", exc)


async def discover(
    port: int = 9000,
    timeout: float = 1.0,
    *,
    first: bool = False,
    kid_key: bytes | None = None,
    addresses: Iterable[str] | None = None,
) -> list[Found]:
    """Broadcast a PING and collect the devices that answer within ``timeout``.

    Args:
        port: the discovery (service) port.
        timeout: seconds to wait for answers.
        first: return as soon as one device answers.
        kid_key: a pair key's key-id key, so stealth devices answer (§8.2).
        addresses: where to send the PING (default: every interface's broadcast
            address, then 255.255.255.255 and 127.0.0.1).

    Returns:
        The devices found, in order of arrival.

    Raises:
        OSError: the UDP socket could not be created.
    """
    loop = asyncio.get_running_loop()
    browser = Browser(kid_key=kid_key)
    done: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _BrowserProtocol(browser, first, done),
        local_addr=("0.0.0.0", 0),  # noqa: S104 - answers come back from anywhere on the LAN
        family=socket.AF_INET,
        allow_broadcast=True,
    )
    try:
        targets = list(addresses) if addresses is not None else broadcast_addresses()
        for target in targets:
            try:
                transport.sendto(browser.ping, (target, port))
            except OSError as exc:  # e.g. an unresolvable name given by the caller
                _log.debug("PING to %s:%d failed: %s", target, port, exc)
        await asyncio.wait({done}, timeout=timeout)
    finally:
        transport.close()
        if not done.done():
            done.cancel()
    return browser.found
