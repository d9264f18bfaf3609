"""``pstp doctor [PEER]``: explain why a peer (or any device) is not found.

The checks, in order, each printed with what a failure most likely means:

1. interfaces: which can broadcast, and whether 255.255.255.255 has a route;
2. a discovery PING (carrying PEER's key id, so a stealth PEER answers, §8.2)
   and an mDNS browse: who answered;
3. for PEER: every address we know (remembered, discovered), once each,
   whether it is on a local subnet, then one authenticated handshake (TCP
   refused or timed out: firewall?; a key mismatch shows as a handshake
   failure).  A working address costs the device one audited session and no
   failed-authentication row; a bare TCP connect is made only to explain a
   handshake that timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
from dataclasses import dataclass, field

import msgspec

from pstp.cli.cmd_discover import answers, caps_names, gather, load_optional, merge
from pstp.cli.main import Console
from pstp.netif import Interface, interfaces, limited_broadcast_routable
from pstp.settings import DEFAULT_PORT, PeerSettings, Settings, parse_address

__all__ = ["doctor", "local_subnet"]

_OK, _BAD, _HINT = "[ok]", "[!!]", "hint:"


@dataclass(slots=True)
class _Candidate:
    host: str
    port: int
    source: str
    binding: tuple[bytes, bytes, bytes] | None = None
    also: set[str] = field(default_factory=set)  # other sources of the same address


def local_subnet(host: str, ifaces: list[Interface]) -> Interface | None:
    """The interface whose IPv4 subnet holds ``host`` (loopback included), if any."""
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError:
        return None
    for iface in ifaces:
        net = iface.network
        if iface.up and net is not None and addr in net:
            return iface
    return None


def _interfaces(console: Console, port: int) -> list[Interface]:
    console.print("interfaces:")
    ifaces = interfaces()
    can_broadcast = False
    for i in ifaces:
        where = f"{i.address}/{i.network.prefixlen}" if i.address and i.network else "-"
        if not i.up:
            state = "down"
        elif i.address is None:
            state = "no IPv4 address"
        elif i.loopback:
            state = "loopback (reaches only this host)"
        elif i.broadcast is None:
            state = "no broadcast (point-to-point?): PINGs do not go out here"
        else:
            state = f"broadcast {i.broadcast}"
            can_broadcast = True
        console.print(f"  {i.name:<12} {where:<20} {state}")
    if limited_broadcast_routable(port):
        console.print(f"  {_OK} 255.255.255.255 is routable (via the default route)")
    else:
        console.print(
            "  255.255.255.255: no route (no default route); PINGs go to the interface "
            "broadcast addresses only"
        )
    if not can_broadcast:
        console.print(
            f"  {_BAD} no broadcast route: no interface that is up can broadcast, so a PING "
            "reaches only this host (127.0.0.1)"
        )
        console.print(
            f"  {_HINT} connect the device to a network, or reach peers by address "
            "(pstp ping PEER --address HOST:PORT)"
        )
    return ifaces


def _tcp_failure(exc: OSError, host: str, timeout: float) -> str:
    """What a failed TCP connect most likely means."""
    if isinstance(exc, ConnectionRefusedError):
        return (
            "TCP connection refused: nothing listens on that port (daemon not running, "
            "listening on another address or port), or a firewall rejects it"
        )
    if isinstance(exc, TimeoutError):
        return (
            f"TCP connect timed out after {timeout:g} s: the host is down or a firewall "
            "drops the packets"
        )
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"no route to {host} ({exc.strerror}): not on a network we reach"
    return f"TCP connect failed: {exc.strerror or exc}"


async def _tcp(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """A bare TCP connect, closed at once: only to tell a dead host from a silent device.

    The device sees a connection that sent nothing (it may audit it as a failed
    handshake), so this runs only after a handshake has already failed.
    """
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError as exc:
        return False, _tcp_failure(exc, host, timeout)
    except OSError as exc:
        return False, _tcp_failure(exc, host, timeout)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, "TCP connect ok"


async def _probe(
    settings: Settings, peer: PeerSettings, cand: _Candidate, timeout: float
) -> list[tuple[bool, str]]:
    """Connect and authenticate once; the verdicts on TCP and on the handshake.

    One real session, and nothing else when it works: the device audits one
    successful authentication, no failed one (a bare TCP probe first would read
    as a failed handshake in its audit log).  Only a handshake that timed out is
    followed by a bare TCP connect, to say whether TCP got through.
    """
    from pstp.asyncio.client import connect
    from pstp.exceptions import PstpError

    handshake_timeout = max(2 * timeout, 3.0)
    try:
        session = await connect(
            cand.host,
            cand.port,
            pair_key=peer.key,
            device_id=peer.id,
            own_id=settings.device_id,
            discovery=cand.binding,
            timeout=handshake_timeout,
        )
    except TimeoutError:
        reachable, why = await _tcp(cand.host, cand.port, max(timeout, 1.0))
        if not reachable:
            return [(False, why)]
        return [
            (True, why),
            (
                False,
                f"handshake timed out after {handshake_timeout:g} s: the device accepted TCP "
                "but never answered (overloaded, or not a PSTP/2 device)",
            ),
        ]
    except PstpError as exc:
        return [
            (True, "TCP connect ok"),
            (
                False,
                f"handshake failed ({exc}): this device did not prove our pair key for "
                f"{peer.id!r}. Its key for us ({settings.device_id!r}) differs or is missing "
                "(pair again, or check `pstp device list` on both sides), or it is another "
                "device answering for that id",
            ),
        ]
    except OSError as exc:  # the TCP connect itself failed
        return [(False, _tcp_failure(exc, cand.host, handshake_timeout))]
    async with session:
        got = session.peer_id
    return [(True, "TCP connect ok"), (True, f"handshake ok: authenticated as {got!r}")]


def _distinct(cands: list[_Candidate]) -> list[_Candidate]:
    """One candidate per address, named by its first source, all sources in ``also``.

    A discovery binding is kept if any source had one: one handshake per
    address, so the device audits one session, not one per way we learnt it.
    """
    out: dict[tuple[str, int], _Candidate] = {}
    for c in cands:
        seen = out.get((c.host, c.port))
        if seen is None:
            out[(c.host, c.port)] = _Candidate(c.host, c.port, c.source, c.binding)
        else:
            seen.also.add(c.source)
            seen.binding = seen.binding or c.binding
    return list(out.values())


async def _diagnose(args: argparse.Namespace, console: Console, settings: Settings | None) -> int:
    from pstp.protocol.handshake import PeerKey

    peer = settings.peers.get(args.peer) if settings is not None and args.peer else None
    if peer is not None and peer.address and "://" in peer.address and "tcp://" not in peer.address:
        # A ws:// or wss:// address is reached through HTTP, not by the LAN checks below.
        console.print(f"{peer.id} is reached at {peer.address}: `pstp ping -v {peer.id}` tries it;")
        console.print("the checks below are for the LAN (discovery and TCP).")
        peer = msgspec.structs.replace(peer, address=None)
    port = args.port or (parse_address(peer.address)[1] if peer and peer.address else None)
    port = port or DEFAULT_PORT
    timeout = args.timeout
    ifaces = _interfaces(console, port)

    keyed = [peer] if peer is not None else list(settings.peers.values()) if settings else []
    kid_keys = [PeerKey.from_pair_key(p.id, p.key).kid_key for p in keyed]
    what = f"with the key id for {peer.id}" if peer else f"with {len(kid_keys)} key id(s)"
    console.print(f"discovery: PING on UDP port {port} ({what}) and mDNS, {timeout:g} s:")
    found, mdns = await gather(port, timeout, kid_keys, console=console)
    known = set(settings.peers) if settings else set()
    devices = merge(answers(found, mdns), known)
    for d in devices:
        subnet = local_subnet(d.host, ifaces)
        on = f"on {subnet.name}" if subnet else "not on a local subnet"
        console.print(
            f"  {d.device_id:<16} {d.address:<21} {','.join(caps_names(d.caps)) or '-'}  "
            f"via {'+'.join(d.via)}, key: {'yes' if d.key else 'no'}, {on}"
        )
    if not devices:
        console.print(f"  {_BAD} nobody answered")
        console.print(
            f"  {_HINT} a device on this subnet that runs `pstp serve` with discovery on answers "
            f"on UDP {port}; check its firewall allows UDP {port} in, and that it listens on "
            f"0.0.0.0 (a socket bound to one address does not receive broadcasts)"
        )
    if not args.peer:
        return 0

    console.print(f"peer {args.peer}:")
    if peer is None or settings is None:
        where = settings.path if settings is not None else "(no configuration)"
        console.print(f"  {_BAD} no pair key for {args.peer!r} in {where}")
        console.print(f"  {_HINT} pair first: `pstp pair HOST` (or `pstp device add {args.peer}`)")
        return 1
    cands: list[_Candidate] = []
    if peer.address:
        host, p = parse_address(peer.address)
        cands.append(_Candidate(host, p, "remembered"))
    for f in found:
        if f.device_id == peer.id:
            cands.append(_Candidate(f.host, f.port, "PONG", f.binding))
    for d in devices:
        if d.device_id == peer.id and "mdns" in d.via and "broadcast" not in d.via:
            cands.append(_Candidate(d.host, d.port, "mDNS"))
    answered = any(d.device_id == peer.id for d in devices)
    if not answered:
        console.print(f"  {_BAD} {peer.id} answered neither the PING nor mDNS")
        console.print(
            f"  {_HINT} it may be off, its daemon not running or with discovery off, on another "
            "subnet (routers do not forward broadcasts or mDNS), or behind a firewall dropping "
            f"UDP {port}. Our PING carried its key id, so stealth mode hides it only if its "
            "key for us differs"
        )
    if not cands:
        console.print(f"  {_BAD} no remembered address, so nothing else to try")
        console.print(
            f"  {_HINT} if it is on another subnet, give its address once: "
            f"`pstp ping {peer.id} --address HOST:PORT` (it is then remembered)"
        )
        return 1
    ok = False
    remembered_ok = False
    cands = _distinct(cands)
    for cand in cands:
        label = f"{cand.host}:{cand.port} ({cand.source})"
        subnet = local_subnet(cand.host, ifaces)
        if subnet is None:
            console.print(
                f"  {label}: not on a local subnet; only this address (not discovery) can "
                "reach it, through a router"
            )
        verdicts = await _probe(settings, peer, cand, timeout)
        for passed, why in verdicts:
            console.print(f"  {_OK if passed else _BAD} {label}: {why}")
        good = len(verdicts) == 2 and verdicts[1][0]
        ok |= good
        remembered_ok |= good and "remembered" in {cand.source, *cand.also}
    remembered = peer.address and parse_address(peer.address)
    for cand in cands:
        if remembered_ok or not remembered:
            break
        if cand.source != "remembered" and (cand.host, cand.port) != remembered:
            console.print(
                f"  {_HINT} {peer.id} now answers at {cand.host}:{cand.port}; the remembered "
                f"{peer.address} is stale (the next successful connection remembers the new one)"
            )
            break
    verdict = "reachable and authenticated" if ok else "no address gave a working session"
    console.print(f"=> {peer.id}: {verdict}")
    return 0 if ok else 1


def doctor(args: argparse.Namespace, console: Console) -> int:
    """Explain what stands between this device and PEER (or any device)."""
    from pstp.cli.common import run

    settings = load_optional(args)
    if settings is not None:
        console.print(
            f"configuration: {settings.path} (this device: {settings.device_id!r}, "
            f"{len(settings.peers)} peer(s))"
        )
    else:
        console.print("configuration: none (discovery only; create one with `pstp init`)")
    return run(_diagnose(args, console, settings))
