"""PSTP client workers: each subcommand measures one thing and prints one JSON line.

    python -m bench.client latency    --port P --reps N [--inproc] [--url URL] [--connect-only]
    python -m bench.client rtt        --port P --reps N --size B [--url URL [--ca FILE]]
                                      [--inproc tcp|ws] [--steps request,channel,session]
    python -m bench.client bulk       --port P --size B --reps N [--max-record N] [--uvloop]
                                      [--url URL [--ca FILE]]
    python -m bench.client handshakes --port P --start T0 --end T1
    python -m bench.client idle       --port P --count N --concurrency C

Pair keys come from the environment (see :data:`bench.common.KEYS_ENV`).  Every
concurrent *slot* below has its own key (the server then trial-matches among
several peers, as a real device does) and runs its handshakes one after another.
``--url`` reaches the server at a channel address instead (``ws://``, ``wss://``
verified against the CA certificates in ``--ca``, or an ``mqtt://`` broker the
server serves through).  ``latency --connect-only`` times ``connect()`` alone
(transport, handshake); the close that follows is not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from typing import TYPE_CHECKING, Any

from bench.common import (
    HOST,
    SERVER_ID,
    emit,
    keys_from_env,
    raise_nofile,
    run_async,
)

if TYPE_CHECKING:
    from pstp.asyncio.connection import Session
    from pstp.protocol.config import Config


async def _connect(
    port: int,
    key: bytes,
    name: str,
    config: Config | None = None,
    *,
    url: str | None = None,
    ca: str | None = None,
    **kw: Any,
) -> Session:
    from pstp.asyncio.client import connect, tls_context

    if url is not None and url.startswith("wss:"):
        kw["ssl"] = tls_context(ca)
    return await connect(
        url or HOST,
        None if url else port,
        pair_key=key,
        device_id=SERVER_ID,
        own_id=name,
        config=config,
        **kw,
    )


# -- connect + handshake + one request ------------------------------------------


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    """Time connect + handshake + one 64-byte request + close, ``reps`` times."""
    name, key = next(iter(keys_from_env().items()))
    server = None
    port = args.port
    if args.inproc:
        from bench.server import _echo
        from pstp.asyncio.server import serve
        from pstp.protocol.handshake import KeyRing

        ring = KeyRing()
        ring.add(name, key)
        server = await serve(
            None, HOST, 0, keyring=ring, own_id=SERVER_ID, handlers={"echo": _echo}
        )
        port = server.port
    payload = b"x" * 64
    times: list[float] = []
    for i in range(args.reps + args.warmup):
        t0 = time.perf_counter()
        session = await _connect(port, key, name, url=args.url)
        if args.connect_only:
            dt = time.perf_counter() - t0
            await session.close()
        else:
            reply = await session.request("echo", payload)
            await session.close()
            dt = time.perf_counter() - t0
            assert reply == payload
        if i >= args.warmup:
            times.append(dt)
    if server is not None:
        await server.close()
    return {"times": times}


# -- round trips on an open session ---------------------------------------------


async def _inproc_server(name: str, key: bytes, websocket: bool) -> tuple[Any, str]:
    """A bench server in this event loop (TCP, or ws:// on /pstp) and its address."""
    from bench.server import _chat, _echo
    from pstp.asyncio.server import serve
    from pstp.protocol.handshake import KeyRing

    async def session_echo(session: Session) -> None:
        async for data in session:
            await session.send(data)

    ring = KeyRing()
    ring.add(name, key)
    handlers = {"echo": _echo, "chat": _chat}
    path = "/pstp" if websocket else None
    server = await serve(
        session_echo, HOST, 0, keyring=ring, own_id=SERVER_ID, handlers=handlers, websocket=path
    )
    where = f"ws://{HOST}:{server.port}{path}" if websocket else f"{HOST}:{server.port}"
    return server, where


async def rtt(args: argparse.Namespace) -> dict[str, Any]:
    """Round trips on one open session: request(), a chat channel, session send/recv."""
    name, key = next(iter(keys_from_env().items()))
    server, url = None, args.url
    if args.inproc:
        server, url = await _inproc_server(name, key, args.inproc == "ws")
    session = await _connect(args.port, key, name, url=url, ca=args.ca)
    payload = os.urandom(args.size)

    async def request() -> None:
        assert await session.request("echo", payload) == payload

    chat = await session.open_channel("chat")

    async def channel() -> None:
        await chat.write(payload)
        got = b""
        while len(got) < len(payload):
            got += await chat.read()

    async def record() -> None:
        await session.send(payload)
        got = b""
        while len(got) < len(payload):
            got += await session.recv()

    # Interleaved, so a burst of load elsewhere on the machine hits all three alike.
    # Beside the wall time, this process's CPU time per step ("cpu_" + step): with
    # --inproc, both sides' work, which waiting for a busy machine's CPU does not count.
    steps = {"request": request, "channel": channel, "session": record}
    if args.steps:
        steps = {name: steps[name] for name in args.steps.split(",")}
    out: dict[str, list[float]] = {name: [] for name in [*steps, *(f"cpu_{s}" for s in steps)]}
    for i in range(args.reps + args.warmup):
        for name, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            await step()
            if i >= args.warmup:
                out[name].append(time.perf_counter() - t0)
                out[f"cpu_{name}"].append(time.process_time() - c0)
    await chat.close()
    await session.close()
    if server is not None:
        await server.close()
    return out


# -- bulk -----------------------------------------------------------------------


async def bulk(args: argparse.Namespace) -> dict[str, Any]:
    """Send ``size`` bytes on one channel to the ``sink`` kind; time to its close."""
    from pstp.protocol.config import Config

    name, key = next(iter(keys_from_env().items()))
    config = Config(max_record_size=args.max_record, channel_window=args.window)
    session = await _connect(args.port, key, name, config=config, url=args.url, ca=args.ca)
    chunk = memoryview(os.urandom(args.chunk))
    n_chunks = args.size // args.chunk
    times = []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.reps):
        t0 = time.perf_counter()
        ch = await session.open_channel("sink", wait_accepted=False)
        for _ in range(n_chunks):
            await ch.write(chunk)
        await ch.write_eof()
        status = await ch.wait_closed()
        times.append(time.perf_counter() - t0)
        assert status == 0, status
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    await session.close()
    return {
        "times": times,
        "bytes": n_chunks * args.chunk,
        "cpu": ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime,
        "faults": ru1.ru_minflt - ru0.ru_minflt,
    }


# -- handshakes per second ------------------------------------------------------


async def handshakes(args: argparse.Namespace) -> dict[str, Any]:
    """Connect and close as fast as possible, one slot per key, until ``end``.

    Counts the handshakes that completed inside ``[start, end)`` (wall clock,
    shared with the other client processes).
    """
    from pstp.exceptions import PstpError

    keys = keys_from_env()
    done = 0
    errors = 0

    async def slot(name: str, key: bytes) -> None:
        nonlocal done, errors
        while time.time() < args.end:
            try:
                session = await _connect(args.port, key, name)
            except (PstpError, OSError, TimeoutError):
                errors += 1
                await asyncio.sleep(0.01)
                continue
            if args.start <= time.time() < args.end:
                done += 1
            await session.close()

    await asyncio.gather(*(slot(n, k) for n, k in keys.items()))
    return {"handshakes": done, "errors": errors}


# -- idle sessions --------------------------------------------------------------


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open ``count`` sessions, report, and hold them until stdin closes."""
    keys = list(keys_from_env().items())
    sessions: list[Session] = []
    todo = list(range(args.count))
    t0 = time.perf_counter()

    async def slot(name: str, key: bytes) -> None:
        while todo:
            todo.pop()
            sessions.append(await _connect(args.port, key, name))

    await asyncio.gather(*(slot(n, k) for n, k in keys[: args.concurrency]))
    emit({"opened": len(sessions), "seconds": time.perf_counter() - t0})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # until EOF
    for s in sessions:
        s.connection.close()
    await asyncio.sleep(0.2)
    return {"opened": len(sessions), "alive": sum(not s.is_closed for s in sessions)}


def main() -> None:
    """Parse the subcommand, run it, print its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench.client")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("latency", "rtt", "bulk", "handshakes", "idle"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, default=0)
        p.add_argument("--reps", type=int, default=20)
        p.add_argument("--warmup", type=int, default=3)
        p.add_argument("--uvloop", action="store_true")
        p.add_argument("--coalesce", action="store_true", help="bench.experiments.coalesce_writes")
        p.add_argument(
            "--ws-batch", action="store_true", help="bench.experiments.batch_websocket_writes"
        )
        p.add_argument(
            "--paho-buffered", action="store_true", help="bench.experiments.buffered_paho_reads"
        )
        p.add_argument(
            "--quickack", action="store_true", help="bench.experiments.quickack_after_reads"
        )
        p.add_argument(
            "--paho-coalesce", action="store_true", help="bench.experiments.coalesce_paho_writes"
        )
    sub.choices["latency"].add_argument("--inproc", action="store_true")
    sub.choices["latency"].add_argument("--url", help="a channel address instead of TCP")
    sub.choices["latency"].add_argument(
        "--connect-only", action="store_true", help="time connect() alone (no request)"
    )
    sub.choices["rtt"].add_argument("--size", type=int, default=64)
    sub.choices["rtt"].add_argument(
        "--steps", help="a subset of request,channel,session (default: all, interleaved)"
    )
    sub.choices["rtt"].add_argument(
        "--inproc", choices=["tcp", "ws"], help="serve in this event loop, over TCP or ws://"
    )
    for name in ("rtt", "bulk"):
        sub.choices[name].add_argument(
            "--url", help="a ws://, wss:// or mqtt:// address instead of TCP"
        )
        sub.choices[name].add_argument("--ca", help="CA certificates (PEM) for a wss:// --url")
    b = sub.choices["bulk"]
    b.add_argument("--size", type=int, default=1 << 30)
    b.add_argument("--chunk", type=int, default=1 << 20)
    b.add_argument("--max-record", type=int, default=65536)
    b.add_argument("--window", type=int, default=1 << 20)
    h = sub.choices["handshakes"]
    h.add_argument("--start", type=float, required=True)
    h.add_argument("--end", type=float, required=True)
    i = sub.choices["idle"]
    i.add_argument("--count", type=int, required=True)
    i.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    raise_nofile()
    if args.coalesce:
        from bench.experiments import coalesce_writes

        coalesce_writes()
    if args.ws_batch:
        from bench.experiments import batch_websocket_writes

        batch_websocket_writes()
    if args.paho_buffered:
        from bench.experiments import buffered_paho_reads

        buffered_paho_reads()
    if args.quickack:
        from bench.experiments import quickack_after_reads

        quickack_after_reads()
    if args.paho_coalesce:
        from bench.experiments import coalesce_paho_writes

        coalesce_paho_writes()
    fn = {"latency": latency, "rtt": rtt, "bulk": bulk, "handshakes": handshakes, "idle": idle}
    emit(run_async(lambda: fn[args.cmd](args), use_uvloop=args.uvloop))


if __name__ == "__main__":
    main()
