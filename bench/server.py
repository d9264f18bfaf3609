"""The PSTP server process the benchmarks measure against.

    python -m bench.server [--max-record N] [--window N] [--keepalive S] [--uvloop]
                           [--websocket PATH | --mqtt URL]

``--profile FILE`` writes cProfile statistics of the whole run to FILE.

The first line of standard input holds the pair keys (``id=hex,...``); the
server then prints ``READY <port>``.  With ``--websocket PATH`` it serves PSTP over
WebSocket on that HTTP path (``ws://127.0.0.1:<port>/PATH``) instead of plain TCP;
with ``--mqtt mqtt://127.0.0.1:PORT`` it listens nowhere and serves through that
broker instead (``READY`` then comes once it is connected and subscribed, and
names the broker's port).
Further lines are commands, each answered with one line: ``stats`` (a JSON
object: RSS, sessions open and established so far) and ``tracemalloc`` (the
biggest Python allocation sites, if started with ``PYTHONTRACEMALLOC=1``).  End
of input stops the server.

Channel kinds served:

* ``echo``: read the request to EOF, write it back, close (request/response).
* ``sink``: read and discard until EOF (reading acknowledges, so the window reopens).
* ``chat``: write back every chunk as it arrives (a persistent echo channel).

With ``--session-echo`` the session-level stream (``Session.send/recv``) is
echoed too; otherwise a session just serves channels until the peer leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from typing import TYPE_CHECKING

from bench.common import HOST, SERVER_ID, decode_keys, proc_status_kib, raise_nofile, run_async

if TYPE_CHECKING:
    from pstp.asyncio.connection import Channel


async def _echo(ch: Channel) -> int:
    data = await ch.read_all()
    if data:
        await ch.write(data)
    return 0


async def _sink(ch: Channel) -> int:
    async for _chunk in ch:
        pass
    return 0


async def _chat(ch: Channel) -> int:
    async for chunk in ch:
        await ch.write(chunk)
    return 0


_last_snapshot: list[object] = []


def _tracemalloc_top(n: int = 25) -> dict[str, object]:
    """The biggest Python allocation sites by line, relative to the previous call if any.

    Needs the server to run with PYTHONTRACEMALLOC=1.
    """
    import tracemalloc

    if not tracemalloc.is_tracing():
        return {"error": "start the server with PYTHONTRACEMALLOC=1"}
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    if _last_snapshot:
        prev = _last_snapshot[0]
        assert isinstance(prev, tracemalloc.Snapshot)
        diff = snap.compare_to(prev, "lineno")
        top = [[str(d.traceback[0]), d.size_diff, d.count_diff] for d in diff[:n]]
    else:
        stats = snap.statistics("lineno")
        top = [[str(d.traceback[0]), d.size, d.count] for d in stats[:n]]
    _last_snapshot[:] = [snap]
    return {"traced_kib": tracemalloc.get_traced_memory()[0] // 1024, "top": top}


async def serve_main(args: argparse.Namespace, keys: dict[str, bytes]) -> None:
    """Serve until standard input ends."""
    from pstp.asyncio.connection import Session
    from pstp.asyncio.server import serve
    from pstp.protocol.config import Config
    from pstp.protocol.handshake import KeyRing

    ring = KeyRing()
    for name, key in keys.items():
        ring.add(name, key)
    config = Config(
        max_record_size=args.max_record,
        channel_window=args.window,
        keepalive_interval=args.keepalive or None,
    )
    counts = {"open": 0, "established": 0}

    async def on_session(session: Session) -> None:
        counts["established"] += 1
        counts["open"] += 1
        try:
            if args.session_echo:
                async for data in session:
                    await session.send(data)
            else:
                await session.wait_closed()
        finally:
            counts["open"] -= 1

    broker = None
    if args.mqtt:
        from pstp.address import parse

        broker = parse(args.mqtt)
    server = await serve(
        on_session,
        HOST,
        args.port,
        keyring=ring,
        own_id=SERVER_ID,
        config=config,
        handlers={"echo": _echo, "sink": _sink, "chat": _chat},
        websocket=args.websocket,
        mqtt=broker,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    if broker is not None:
        assert server.mqtt is not None
        await asyncio.wait_for(server.mqtt.ready.wait(), 30.0)  # connected and subscribed
        port = broker.port
    else:
        port = server.port
    print(f"READY {port}", flush=True)
    while line := (await reader.readline()).decode().strip():
        if line == "stats":
            if args.gc:
                gc.collect()
            answer = {"rss_kib": proc_status_kib(os.getpid()), **counts}
            print(json.dumps(answer), flush=True)
        elif line == "tracemalloc":
            print(json.dumps(_tracemalloc_top()), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {line!r}"}), flush=True)
    await server.close()


def main() -> None:
    """Parse options, read the keys, serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-record", type=int, default=65536)
    parser.add_argument("--window", type=int, default=1 << 20)
    parser.add_argument("--keepalive", type=float, default=15.0, help="0 disables heartbeats")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--session-echo", action="store_true")
    parser.add_argument("--websocket", metavar="PATH", help="serve ws:// on this path, not TCP")
    parser.add_argument("--mqtt", metavar="URL", help="serve through this mqtt:// broker, not TCP")
    parser.add_argument("--gc", action="store_true", help="gc.collect() before each stats")
    parser.add_argument("--profile", help="write cProfile stats of the whole run to this file")
    parser.add_argument(
        "--coalesce", action="store_true", help="experiment: bench.experiments.coalesce_writes"
    )
    parser.add_argument(
        "--ws-batch",
        action="store_true",
        help="experiment: bench.experiments.batch_websocket_writes",
    )
    parser.add_argument(
        "--paho-buffered",
        action="store_true",
        help="experiment: bench.experiments.buffered_paho_reads",
    )
    parser.add_argument(
        "--quickack",
        action="store_true",
        help="experiment: bench.experiments.quickack_after_reads",
    )
    parser.add_argument(
        "--paho-coalesce",
        action="store_true",
        help="experiment: bench.experiments.coalesce_paho_writes",
    )
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
    keys = decode_keys(sys.stdin.readline())
    if not args.profile:
        run_async(lambda: serve_main(args, keys), use_uvloop=args.uvloop)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        run_async(lambda: serve_main(args, keys), use_uvloop=args.uvloop)
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
