"""``pstp discover``: list the PSTP/2 devices on the local network.

Broadcast PING/PONG (docs/protocol.md §8) and mDNS (§8.6) run side by side for
the same time; answers are merged by (device id, address, port).  When the
configuration holds pair keys, the PINGs carry their key ids so that stealth
devices paired with us answer too (§8.2).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pstp.cli.main import Console
from pstp.discovery.packets import Caps
from pstp.settings import Settings, config_path, load

if TYPE_CHECKING:
    from pstp.client.mdns import MdnsFound
    from pstp.discovery.protocol import Found

__all__ = [
    "Answer",
    "Device",
    "answers",
    "caps_names",
    "discover",
    "gather",
    "load_optional",
    "merge",
]


@dataclass(slots=True)
class Device:
    """One device as listed: what it claims, where, and how we heard of it.

    Attributes:
        device_id: the id it claims (confirmed only by a handshake).
        host: its address.
        port: its TCP port.
        caps: its capability bits.
        via: ``"broadcast"`` and/or ``"mdns"``.
        key: whether our configuration holds a pair key for this id.
    """

    device_id: str
    host: str
    port: int
    caps: int
    via: list[str] = field(default_factory=list)
    key: bool = False

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def as_json(self) -> dict[str, object]:
        """The JSON object printed by ``--json``."""
        return {
            "device_id": self.device_id,
            "address": self.address,
            "host": self.host,
            "port": self.port,
            "caps": self.caps,
            "caps_names": caps_names(self.caps),
            "via": self.via,
            "key": self.key,
        }


def caps_names(caps: int) -> list[str]:
    """Capability bits as lowercase names (unknown bits as hex)."""
    names = [c.name.lower().replace("_", "-") for c in Caps if c.name and caps & c]
    rest = caps & ~sum(int(c) for c in Caps)
    return names + ([f"0x{rest:04x}"] if rest else [])


def merge(answers: list[Answer], keys: set[str] | frozenset[str] = frozenset()) -> list[Device]:
    """Merge ``(device_id, host, port, caps, via)`` answers, first seen first.

    Args:
        answers: every answer from every method, in order of arrival.
        keys: the device ids our configuration holds a pair key for.

    Returns:
        One device per (device id, host, port), listing every method that found it.
    """
    out: dict[tuple[str, str, int], Device] = {}
    for device_id, host, port, caps, via in answers:
        dev = out.get((device_id, host, port))
        if dev is None:
            dev = Device(device_id, host, port, caps, key=device_id in keys)
            out[(device_id, host, port)] = dev
        if via not in dev.via:
            dev.via.append(via)
    return list(out.values())


def load_optional(args: argparse.Namespace) -> Settings | None:
    """The configuration if there is one; discovery needs none.

    Raises:
        ConfigError: a configuration exists (or was named) but is invalid.
    """
    path = config_path(args.config)
    if not path.exists() and not args.config:
        return None
    return load(path)


Answer = tuple[str, str, int, int, str]


async def gather(
    port: int,
    timeout: float,
    kid_keys: list[bytes],
    *,
    mdns: bool = True,
    console: Console | None = None,
) -> tuple[list[Found], list[MdnsFound]]:
    """Run broadcast discovery (one PING per key id, or one plain PING) and mDNS together.

    A device that is not in stealth mode answers any well-formed PING, keyed or
    not, so with keys the plain PING is not needed (and the responder's per-source
    rate limit, §8.3, is spent on fewer PINGs).

    Returns:
        The PONGs (with their handshake bindings) and the mDNS answers.
    """
    import asyncio

    from pstp.asyncio.discovery import discover as ping

    pings = [ping(port, timeout, kid_key=k) for k in kid_keys] or [ping(port, timeout)]
    browse_task = asyncio.create_task(_browse(timeout, console)) if mdns else None
    found = [f for each in await asyncio.gather(*pings) for f in each]
    return found, (await browse_task if browse_task is not None else [])


def answers(found: list[Found], mdns: list[MdnsFound]) -> list[Answer]:
    """``(device_id, host, port, caps, via)`` for every answer, broadcast first."""
    out = [(f.device_id, f.host, f.port, f.caps, "broadcast") for f in found]
    return out + [(m.device_id, m.host, m.port, m.caps, "mdns") for m in mdns]


async def _browse(timeout: float, console: Console | None) -> list[MdnsFound]:
    import asyncio

    from pstp.client.mdns import browse

    try:
        return await asyncio.to_thread(browse, timeout)
    except (ImportError, OSError) as exc:
        if console is not None:
            console.error(f"mDNS browsing unavailable: {exc}")
        return []


def discover(args: argparse.Namespace, console: Console) -> int:
    """List devices answering on the LAN with address, id, capabilities and key status."""
    from pstp.cli.common import run
    from pstp.protocol.handshake import PeerKey

    settings = load_optional(args)
    peers = settings.peers if settings is not None else {}
    kid_keys = [PeerKey.from_pair_key(p.id, p.key).kid_key for p in peers.values()]
    found, mdns = run(
        gather(args.port, args.timeout, kid_keys, mdns=not args.no_mdns, console=console)
    )
    devices = merge(answers(found, mdns), set(peers))
    if args.json:
        console.print(json.dumps([d.as_json() for d in devices], indent=2))
        return 0
    if not devices:
        console.error(
            f"no PSTP device answered on UDP port {args.port} or mDNS within "
            f"{args.timeout:g} s (run `pstp doctor` to see why)"
        )
        return 0
    rows = [("DEVICE", "ADDRESS", "CAPS", "VIA", "KEY")]
    for d in devices:
        caps = ",".join(caps_names(d.caps)) or "-"
        rows.append((d.device_id, d.address, caps, "+".join(d.via), "yes" if d.key else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        console.print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
