"""Hostile and helper peers for the network-namespace tests (run inside a namespace).

    python -m tests.discovery.netns_peers spoof --mode own-address --capture DIR
    python -m tests.discovery.netns_peers spoof --mode forged-pong --server IP --capture DIR
    python -m tests.discovery.netns_peers flood --target IP --broadcast IP --seconds S
    python -m tests.discovery.netns_peers advertise --id ID --port P
    python -m tests.discovery.netns_peers find --port P [--respond ID] [--seconds S]

Every loop here is bounded in count and time and ends by itself; all traffic
stays inside the test's own namespaces.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import socket
import struct
import sys
import time
from pathlib import Path

from pstp.discovery.packets import Caps, Ping, Pong
from pstp.exceptions import RemoteProtocolError

__all__ = ["main", "udp_packet"]

PORT = 9000


def say(*parts: object) -> None:
    """One line on stdout for the test to wait on."""
    print(*parts, flush=True)


def udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4+UDP packet with a chosen (forged) source; the kernel fills the IP checksum."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # no UDP checksum
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        random.randrange(1, 0xFFFF),
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return ip + udp


def _own_addresses() -> set[str]:
    from pstp.netif import interfaces

    return {i.address for i in interfaces() if i.address}


def spoof(args: argparse.Namespace) -> int:
    """Answer PINGs with forged PONGs for ``--device``; capture any TCP connection."""
    capture = Path(args.capture)
    mine = _own_addresses()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind(("0.0.0.0", PORT))
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    tcp = None
    if args.mode == "own-address":
        tcp = socket.socket()
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("0.0.0.0", PORT))
        tcp.listen(4)
    say("ready")
    deadline = time.monotonic() + args.seconds
    answered = 0
    conns: list[tuple[socket.socket, bytearray, float]] = []
    while (left := deadline - time.monotonic()) > 0:
        watch = [udp] + ([tcp] if tcp else []) + [c for c, _, _ in conns]
        ready, _, _ = select.select(watch, [], [], min(left, 0.1))
        for s in ready:
            if s is udp:
                data, (host, port) = udp.recvfrom(2048)
                if host in mine:
                    continue
                try:
                    ping = Ping.parse(data)
                except RemoteProtocolError:
                    continue
                (capture / f"ping{answered}.bin").write_bytes(data)
                if args.mode == "own-address":
                    # The right device id, from the attacker's own address.
                    pong = Pong(ping.nonce, PORT, Caps.AES_256_GCM, args.device).serialize()
                    udp.sendto(pong, (host, port))
                else:
                    # A modified PONG (extra caps) claiming to come from the real device.
                    caps = Caps.AES_256_GCM | Caps.CHACHA20_POLY1305 | Caps.PAIRING
                    pong = Pong(ping.nonce, PORT, caps, args.device).serialize()
                    raw.sendto(udp_packet(args.server, PORT, host, port, pong), (host, 0))
                answered += 1
                say("answered", host, port)
            elif s is tcp:
                conn, peer = tcp.accept()
                say("accepted", peer[0])
                conns.append((conn, bytearray(), time.monotonic()))
            else:
                for i, (conn, buf, _) in enumerate(conns):
                    if conn is s:
                        chunk = conn.recv(65536)
                        buf += chunk
                        conns[i] = (conn, buf, time.monotonic())
                        if not chunk:
                            conns[i] = (conn, buf, 0.0)  # closed by the client
        # Keep each connection until it has been idle for a second, then give up on it:
        # we cannot answer HS_INIT without the pair key.
        for conn, buf, last in list(conns):
            if time.monotonic() - last > 1.0:
                conns.remove((conn, buf, last))
                (capture / "tcp.bin").write_bytes(bytes(buf))
                conn.close()
                say("captured", len(buf))
                if args.mode == "own-address":
                    return 0
    return 0


def _junk(rng: random.Random, nonce: bytes) -> list[bytes]:
    """A round of hostile datagrams: PONGs, garbage, broken and oversized PINGs."""
    good = Ping(nonce).serialize()
    return [
        Pong(nonce, PORT, 3, "home").serialize(),  # a PONG sent to a responder
        Pong(rng.randbytes(16), 1, 0xFFFF, "x" * 64).serialize(),
        rng.randbytes(rng.randrange(0, 600)),  # garbage
        good[:20],  # truncated
        good[:-1] + b"\x01",  # non-zero padding
        good + bytes(1400 - len(good)),  # oversized
        b"PSTP\x03\x01\x00\x00" + bytes(120),  # unknown version
        good,  # well-formed, from our own address: rate-limited per source
    ]


def flood(args: argparse.Namespace) -> int:
    """Send hostile datagrams to the responder for ``--seconds`` (at most ``--max``)."""
    rng = random.Random(args.seed)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    targets = [(args.target, PORT)] + ([(args.broadcast, PORT)] if args.broadcast else [])
    deadline = time.monotonic() + args.seconds
    sent = 0
    announced = False
    while time.monotonic() < deadline and sent < args.max:
        for data in _junk(rng, rng.randbytes(16)):
            for dest in targets:
                try:
                    s.sendto(data, dest)
                    sent += 1
                except OSError:
                    pass
        if not announced and sent >= 500:
            say("flooding")
            announced = True
        time.sleep(0.001)  # about 10 000 datagrams per second: a flood, not a CPU hog
    say("sent", sent)
    return 0


def advertise(args: argparse.Namespace) -> int:
    """Advertise a device on mDNS until stdin closes or ``--seconds`` pass."""
    from pstp.daemon.mdns import advertise as start

    ad = start(args.id, args.port, args.address or [])
    say("announced" if ad.wait(5.0) else "not-announced", ad.name)
    try:
        select.select([sys.stdin], [], [], args.seconds)
    finally:
        ad.close()
    return 0


def find(args: argparse.Namespace) -> int:
    """Find a device with the sync driver's default targets; print JSON (exit 1 if none).

    With ``--respond ID`` a responder for ID on ``--port`` answers from this process.
    Tries again until ``--seconds`` pass (a server starting up).
    """
    import json

    from pstp.sync.discovery import broadcast_addresses, find_first, start_responder

    responder = start_responder(args.respond, args.port) if args.respond else None
    try:
        deadline = time.monotonic() + args.seconds
        while True:
            try:
                found = find_first(args.port, timeout=min(1.0, args.seconds))
            except TimeoutError:
                if time.monotonic() < deadline:
                    continue
                say(json.dumps({"targets": broadcast_addresses(), "found": None}))
                return 1
            say(
                json.dumps(
                    {
                        "targets": broadcast_addresses(),
                        "found": [found.device_id, found.host, found.port],
                        "bound": responder is not None
                        and responder.lookup(found.nonce) == (found.ping, found.pong),
                    }
                )
            )
            return 0
    finally:
        if responder is not None:
            responder.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="netns_peers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("spoof")
    p.add_argument("--mode", choices=["own-address", "forged-pong"], required=True)
    p.add_argument("--device", default="home")
    p.add_argument("--server", default="")
    p.add_argument("--capture", required=True)
    p.add_argument("--seconds", type=float, default=20.0)
    p.set_defaults(func=spoof)
    f = sub.add_parser("flood")
    f.add_argument("--target", required=True)
    f.add_argument("--broadcast", default="")
    f.add_argument("--seconds", type=float, default=5.0)
    f.add_argument("--max", type=int, default=60_000)
    f.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    f.set_defaults(func=flood)
    a = sub.add_parser("advertise")
    a.add_argument("--id", required=True)
    a.add_argument("--port", type=int, default=PORT)
    a.add_argument("--address", action="append")
    a.add_argument("--seconds", type=float, default=20.0)
    a.set_defaults(func=advertise)
    d = sub.add_parser("find")
    d.add_argument("--port", type=int, default=PORT)
    d.add_argument("--respond", default="")
    d.add_argument("--seconds", type=float, default=5.0)
    d.set_defaults(func=find)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
