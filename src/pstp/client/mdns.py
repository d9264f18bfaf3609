"""Browse mDNS/DNS-SD for PSTP/2 devices (``_pstp._tcp.local.``, python-zeroconf).

docs/protocol.md §8.6.  What a device says about itself here is a hint, like a
PONG: the handshake confirms its id.  Results from mDNS carry no discovery
binding, so a connection to one is a plain handshake (no DISCOVERY flag).

zeroconf is imported only when :func:`browse` runs.  :func:`browse` blocks;
async code runs it with :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pstp.discovery.packets import DISCOVERY_VERSION, MDNS_SERVICE_TYPE

if TYPE_CHECKING:
    from zeroconf import ServiceInfo

__all__ = ["SERVICE_TYPE", "MdnsFound", "browse", "parse_service"]

_log = logging.getLogger("pstp.mdns")

#: The DNS-SD service type of PSTP/2 devices (§8.6).
SERVICE_TYPE = MDNS_SERVICE_TYPE
#: Seconds to spend resolving one instance whose records were not in the answer.
_RESOLVE_TIMEOUT = 0.5


@dataclass(frozen=True, slots=True)
class MdnsFound:
    """A device that advertises itself on mDNS.

    Attributes:
        device_id: the id in its TXT record (confirmed only by the handshake).
        host: its first IPv4 address (or its host name if it gave none).
        port: the TCP port it serves PSTP/2 on.
        caps: its capability bits (§8.1).
        addresses: every IPv4 address it advertised.
        name: the service instance name.
    """

    device_id: str
    host: str
    port: int
    caps: int
    addresses: tuple[str, ...] = ()
    name: str = ""


def _text(props: Mapping[bytes, bytes | None], key: bytes) -> str | None:
    value = props.get(key)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_service(info: ServiceInfo) -> MdnsFound | None:
    """An mDNS answer as a device, or ``None`` if it is not a usable PSTP/2 record.

    Records of another protocol version, without an id or a port, or with
    malformed caps are skipped (like a malformed PONG).
    """
    from zeroconf import IPVersion

    props = info.properties or {}
    device_id = _text(props, b"id")
    if _text(props, b"v") != str(DISCOVERY_VERSION) or not device_id or len(device_id) > 64:
        return None
    try:
        caps = int(_text(props, b"caps") or "0", 16)
    except ValueError:
        return None
    port = info.port
    if not port:
        return None
    addresses = tuple(info.parsed_addresses(IPVersion.V4Only))
    host = addresses[0] if addresses else (info.server or "").rstrip(".")
    if not host:
        return None
    return MdnsFound(device_id, host, port, caps & 0xFFFF, addresses, str(info.name))


def browse(timeout: float = 1.0) -> list[MdnsFound]:
    """Look for ``_pstp._tcp`` services for ``timeout`` seconds.

    Args:
        timeout: seconds to listen for answers (resolving instances whose
            records did not come with the answer may add up to half a second each).

    Returns:
        The devices seen, in order of discovery, de-duplicated by instance name.

    Raises:
        ImportError: zeroconf is not installed.
        OSError: the mDNS sockets could not be opened.
        RuntimeError: called from a thread running an event loop (use
            ``asyncio.to_thread(browse, timeout)``).
    """
    from zeroconf import (
        InterfaceChoice,
        IPVersion,
        ServiceBrowser,
        ServiceStateChange,
        Zeroconf,
    )
    from zeroconf import ServiceInfo as Info

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("browse() blocks: call it with asyncio.to_thread()")
    names: list[str] = []
    lock = threading.Lock()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            with lock:
                if name not in names:
                    names.append(name)

    zc = Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        time.sleep(timeout)
        browser.cancel()
        with lock:
            seen = list(names)
        out: list[MdnsFound] = []
        for name in seen:
            info = Info(SERVICE_TYPE, name)
            if not info.load_from_cache(zc) and not info.request(zc, _RESOLVE_TIMEOUT * 1000):
                _log.debug("mDNS: %s did not resolve", name)
                continue
            found = parse_service(info)
            if found is not None:
                out.append(found)
    finally:
        zc.close()
    return out
