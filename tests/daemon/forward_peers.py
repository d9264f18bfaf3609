"""Servers and clients for the port-forwarding tests (run inside a test's namespaces).

    python -m tests.daemon.forward_peers web --host H --port P --root DIR
    python -m tests.daemon.forward_peers echo --host H --port P
    python -m tests.daemon.forward_peers fetch --url URL [--try]
    python -m tests.daemon.forward_peers parallel --port P --count N --size BYTES
    python -m tests.daemon.forward_peers stream-recv --host H --port P
    python -m tests.daemon.forward_peers stream-send --port P --seconds S --rate B/S --piece B

Servers print ``listening`` once bound and ``accept N`` for every connection they
accept (so a test counts them) and run until the test stops them; clients print one
``result JSON`` line and end, every wait bounded by ``--timeout``.  Every address is
the one the test gives: loopback, or its own namespaces' addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import http.server
import json
import os
import socket
import struct
import sys
import time
import urllib.parse
from functools import partial
from typing import Any

__all__ = ["HEADER", "main", "piece"]

#: A stream piece's header: its sequence number and the sender's clock (time.time()).
HEADER = struct.Struct("!Qd")


def say(*parts: object) -> None:
    """One line on stdout for the test to wait on."""
    print(*parts, flush=True)


def result(**fields: Any) -> None:
    say("result", json.dumps(fields, sort_keys=True))


class _Accepts:
    """Counts and announces accepted connections."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1
        say("accept", self.n)


def web(args: argparse.Namespace) -> int:
    """Serve the files of ``--root`` over HTTP/1.0 (one request per connection)."""
    accepts = _Accepts()

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def verify_request(self, request: Any, client_address: Any) -> bool:
            accepts()
            return True

    handler = partial(http.server.SimpleHTTPRequestHandler, directory=args.root)
    with Server((args.host, args.port), handler) as server:
        say("listening", server.server_address[1])
        server.serve_forever()
    return 0


async def _echo(args: argparse.Namespace) -> int:
    """Send back what arrives as it arrives; at its end, its SHA-256 (32 bytes), then close."""
    accepts = _Accepts()

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepts()
        digest = hashlib.sha256()
        try:
            while data := await reader.read(1 << 16):
                digest.update(data)
                writer.write(data)
                await writer.drain()
            writer.write(digest.digest())
            await writer.drain()
        except OSError as exc:
            say("error", exc)
        finally:
            writer.close()

    server = await asyncio.start_server(one, args.host, args.port, backlog=256)
    say("listening", server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()
    return 0


def fetch(args: argparse.Namespace) -> int:
    """GET ``--url``: its status, length and SHA-256 (with ``--try``, a failure too)."""
    url = urllib.parse.urlsplit(args.url)
    started = time.monotonic()
    try:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=args.timeout)
        conn.request("GET", url.path)
        response = conn.getresponse()
        digest, size = hashlib.sha256(), 0
        while data := response.read(1 << 18):
            digest.update(data)
            size += len(data)
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        if not args.try_:
            raise
        result(error=type(exc).__name__, message=str(exc))
        return 0
    took = time.monotonic() - started
    result(status=response.status, bytes=size, sha256=digest.hexdigest(), seconds=took)
    return 0


async def _parallel(args: argparse.Namespace) -> int:
    """``--count`` echo exchanges at once, each ``--size`` + 7*i bytes, half-closed, checked."""
    gate = asyncio.Event()

    async def one(i: int) -> str | None:
        data = os.urandom(args.size + 7 * i)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        except OSError as exc:
            return f"{i}: connect: {exc}"
        await gate.wait()  # every connection is open before any sends

        async def send() -> None:
            for at in range(0, len(data), 1 << 15):
                writer.write(data[at : at + (1 << 15)])
                await writer.drain()
            writer.write_eof()

        try:
            sending = asyncio.ensure_future(send())
            got = await reader.read()
            await sending
        except OSError as exc:
            return f"{i}: {type(exc).__name__}: {exc}"
        finally:
            writer.close()
        if got != data + hashlib.sha256(data).digest():
            return f"{i}: {len(got)} bytes back for {len(data)}, not the same"
        return None

    tasks = [asyncio.ensure_future(one(i)) for i in range(args.count)]
    await asyncio.sleep(0)
    gate.set()
    errors = [e for e in await asyncio.wait_for(asyncio.gather(*tasks), args.timeout) if e]
    sizes = [args.size + 7 * i for i in range(args.count)]
    result(ok=args.count - len(errors), errors=errors, sizes=sizes)
    return 0


def piece(seq: int, size: int) -> bytes:
    """The payload of stream piece ``seq`` (after its header): fixed by ``seq`` alone."""
    return hashlib.shake_128(seq.to_bytes(8, "big")).digest(size - HEADER.size)


def stream_recv(args: argparse.Namespace) -> int:
    """Take one paced stream: every piece in order and intact, the gaps between them."""
    with socket.create_server((args.host, args.port)) as server:
        say("listening", server.getsockname()[1])
        server.settimeout(args.timeout)
        conn, _ = server.accept()
    with conn:
        conn.settimeout(args.timeout)
        stream = conn.makefile("rb")
        size = struct.unpack("!I", stream.read(4))[0]
        pieces = total = 0
        errors: list[str] = []
        max_gap = max_latency = 0.0
        first = last = None
        while True:
            head = stream.read(HEADER.size)
            if not head:
                break
            body = stream.read(size - HEADER.size)
            now = time.time()
            if len(head) != HEADER.size or len(body) != size - HEADER.size:
                errors.append(f"piece {pieces} cut short")
                break
            seq, sent = HEADER.unpack(head)
            if seq != pieces:
                errors.append(f"piece {seq} where {pieces} was due")
                break
            if body != piece(seq, size):
                errors.append(f"piece {seq} altered")
                break
            if last is not None:
                max_gap = max(max_gap, now - last)
            first = now if first is None else first
            last = now
            max_latency = max(max_latency, now - sent)
            pieces += 1
            total += size
        result(
            pieces=pieces,
            bytes=total,
            seconds=(last or 0) - (first or 0),
            max_gap=max_gap,
            max_latency=max_latency,
            errors=errors,
        )
    return 0


def stream_send(args: argparse.Namespace) -> int:
    """Send ``--rate`` bytes a second in ``--piece``-byte pieces for ``--seconds``, on time."""
    count = int(args.seconds * args.rate / args.piece)
    interval = args.piece / args.rate
    with socket.create_connection(("127.0.0.1", args.port), args.timeout) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(struct.pack("!I", args.piece))
        start = time.monotonic()
        late = 0.0
        for seq in range(count):
            due = start + seq * interval
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                late = max(late, -wait)
            conn.sendall(HEADER.pack(seq, time.time()) + piece(seq, args.piece))
        conn.shutdown(socket.SHUT_WR)
        took = time.monotonic() - start
        conn.settimeout(args.timeout)
        rest = conn.recv(1)
    result(pieces=count, seconds=took, late=late, eof=rest == b"")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forward_peers")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("web")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--root", required=True)
    p.set_defaults(func=web)
    p = sub.add_parser("echo")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.set_defaults(func=lambda a: asyncio.run(_echo(a)))
    p = sub.add_parser("fetch")
    p.add_argument("--url", required=True)
    p.add_argument("--try", dest="try_", action="store_true", help="report a failure as a result")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=fetch)
    p = sub.add_parser("parallel")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--size", type=int, default=1 << 18)
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=lambda a: asyncio.run(_parallel(a)))
    p = sub.add_parser("stream-recv")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=stream_recv)
    p = sub.add_parser("stream-send")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rate", type=int, default=1_000_000)
    p.add_argument("--piece", type=int, default=10_000)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=stream_send)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
