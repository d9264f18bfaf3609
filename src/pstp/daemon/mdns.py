"""Advertise this device with mDNS/DNS-SD (``_pstp._tcp.local.``, python-zeroconf).

docs/protocol.md §8.6.  The service instance carries a TXT record with the
device id (``id``), the protocol version (``v=2``) and the capability bits
(``caps``, 4 hex digits).  Like a PONG, an mDNS answer is a hint: the
handshake confirms the device id.  A device in stealth mode must not
advertise (:func:`advertise_device` returns ``None`` then).

zeroconf is imported only when something is advertised.  The advertisement
runs on zeroconf's own thread, so :func:`advertise` may be called from an
event loop without blocking it; :meth:`Advertisement.close` blocks briefly
(goodbye packets), so async code calls it with :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

from pstp.discovery.packets import DISCOVERY_VERSION, MDNS_SERVICE_TYPE, Caps
from pstp.netif import interfaces
from pstp.settings import Settings

if TYPE_CHECKING:
    from zeroconf import ServiceInfo, Zeroconf

__all__ = [
    "DEFAULT_CAPS",
    "SERVICE_TYPE",
    "Advertisement",
    "advertise",
    "advertise_device",
    "txt_record",
]

_log = logging.getLogger("pstp.mdns")

#: The DNS-SD service type of PSTP/2 devices (§8.6).
SERVICE_TYPE = MDNS_SERVICE_TYPE
#: What a daemon advertises by default, as in its PONGs (§8.1).
DEFAULT_CAPS = int(Caps.AES_256_GCM | Caps.CHACHA20_POLY1305)
_WILDCARDS = {"", "0.0.0.0", "::"}  # noqa: S104 - listen addresses meaning "all"
_T = TypeVar("_T")


def txt_record(device_id: str, caps: int) -> dict[str, str]:
    """The TXT properties of a device's service instance (§8.6)."""
    return {"id": device_id, "v": str(DISCOVERY_VERSION), "caps": f"{caps & 0xFFFF:04x}"}


def _label(device_id: str) -> str:
    """A DNS label from a device id: dots would split it, so they become dashes."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", device_id)[:63]


def _local_addresses() -> list[str]:
    """Every non-loopback IPv4 address of this host (loopback if there is none)."""
    found = [i.address for i in interfaces() if i.up and not i.loopback and i.address]
    return found or ["127.0.0.1"]


def _off_loop(make: Callable[[], _T]) -> _T:
    """Run ``make`` in a helper thread if this thread runs an event loop.

    zeroconf attaches itself to a running loop when there is one; off the loop it
    runs its own thread, which is what lets the daemon's loop never wait for it.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return make()
    result: list[_T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(make())
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    t = threading.Thread(target=run, name="pstp-mdns-start", daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


class Advertisement:
    """A running mDNS advertisement; :meth:`close` withdraws it.

    Args:
        zc: the zeroconf instance (owned: closed with the advertisement).
        info: the registered service.
        registered: completes when probing and the first announcements are done.
    """

    def __init__(
        self, zc: Zeroconf, info: ServiceInfo, registered: concurrent.futures.Future[None]
    ) -> None:
        self._zc = zc
        self._info = info
        self._registered = registered
        self._closed = False

    @property
    def name(self) -> str:
        """The service instance name (zeroconf may rename it on a conflict)."""
        return str(self._info.name)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the service is announced; False on timeout or failure."""
        try:
            self._registered.result(timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            return False
        except Exception as exc:
            _log.warning("mDNS registration of %s failed: %s", self.name, exc)
            return False
        return True

    def close(self) -> None:
        """Send goodbye packets and stop (idempotent; blocks for well under a second)."""
        if self._closed:
            return
        self._closed = True
        self._registered.cancel()
        try:
            if self._registered.done() and not self._registered.cancelled():
                self._zc.unregister_service(self._info)
        except Exception as exc:  # withdrawing is best effort: the TTL expires anyway
            _log.debug("mDNS unregister failed: %s", exc)
        finally:
            self._zc.close()


def advertise(
    device_id: str,
    port: int,
    addresses: Iterable[str] = (),
    *,
    caps: int = DEFAULT_CAPS,
) -> Advertisement:
    """Start advertising a device as ``_pstp._tcp.local.``.

    Returns at once; probing and announcing happen on zeroconf's thread.

    Args:
        device_id: the device id, in the TXT record (and, as a label, the instance name).
        port: the TCP port the device serves PSTP/2 on.
        addresses: the IPv4 addresses it listens on; empty or a wildcard means
            every non-loopback address of this host, answered on every interface.
        caps: the capability bits (§8.1).

    Returns:
        The running advertisement.

    Raises:
        ImportError: zeroconf is not installed.
        OSError: the mDNS sockets could not be opened.
        ValueError: a bad port or address.
    """
    from zeroconf import InterfaceChoice, IPVersion, ServiceInfo, Zeroconf

    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    given = [a for a in addresses if a not in _WILDCARDS]
    if given:
        packed = [socket.inet_aton(a) for a in given]
        choice: InterfaceChoice | list[str] = list(given)
    else:
        packed = [socket.inet_aton(a) for a in _local_addresses()]
        choice = InterfaceChoice.All
    label = _label(device_id)
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{label}.{SERVICE_TYPE}",
        port=port,
        properties=txt_record(device_id, caps),
        server=f"pstp-{label}.local.",
        addresses=packed,
    )
    zc = _off_loop(lambda: Zeroconf(interfaces=choice, ip_version=IPVersion.V4Only))
    loop = zc.loop
    assert loop is not None  # zeroconf started its thread

    async def register() -> None:
        announced = await zc.async_register_service(info, allow_name_change=True)
        await announced

    registered = asyncio.run_coroutine_threadsafe(register(), loop)
    _log.info("advertising %s on mDNS, port %d", device_id, port)
    return Advertisement(zc, info, registered)


def advertise_device(settings: Settings, bound: Sequence[tuple[str, int]]) -> list[Advertisement]:
    """Advertise a daemon on mDNS, per the configuration; never raises.

    Nothing is advertised when discovery is off or the device is in stealth mode
    (an mDNS answer would reveal it to everyone, §8.2), or when zeroconf is
    missing or fails (logged: broadcast discovery still works).  Specific IPv6
    listen addresses are left out (the A records are IPv4, §8.6); a port that
    has only those is not advertised, and the log says so.

    Args:
        settings: the daemon's configuration (device id, discovery, stealth).
        bound: the ``(host, port)`` each listener is bound to (one advertisement per port).

    Returns:
        The advertisements started (close each when stopping).
    """
    if not settings.discovery or settings.stealth:
        return []
    by_port: dict[int, list[str]] = {}
    for host, port in bound:
        by_port.setdefault(port, []).append(host)
    out: list[Advertisement] = []
    for port, hosts in by_port.items():
        # The records are IPv4 A records (docs/protocol.md §8.6): a specific IPv6
        # listen address has nothing to announce, '::' also serves IPv4 (§8.1).
        ipv4 = [h for h in hosts if ":" not in h or h == "::"]
        if not ipv4:
            _log.info(
                "not advertising port %d on mDNS: its addresses are IPv6 (%s), mDNS "
                "announces IPv4 only; peers reach it by address (§8.1)",
                port,
                ", ".join(hosts),
            )
            continue
        addresses = [] if any(h in _WILDCARDS for h in ipv4) else ipv4
        try:
            out.append(advertise(settings.device_id, port, addresses))
        except (ImportError, OSError, ValueError) as exc:
            _log.warning("not advertising on mDNS (port %d): %s", port, exc)
    return out
