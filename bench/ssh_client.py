"""asyncssh workers against the private sshd: each prints one JSON line.

    python -m bench.ssh_client latency --port P --key PATH --reps N
    python -m bench.ssh_client rtt     --port P --key PATH --reps N --size B
    python -m bench.ssh_client bulk    --port P --key PATH --size B --reps N

``latency`` is connect + key exchange + public-key auth + ``run('true')`` +
close.  ``rtt`` writes ``size`` bytes to a remote ``cat`` on one open session
channel and reads them back (the nearest SSH analogue of a request on an open
session: sshd relays through a pipe to cat and back).  ``bulk`` streams to
``cat > /dev/null`` on one channel.  Key exchange curve25519-sha256, cipher
aes256-gcm@openssh.com, no compression.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from bench.common import HOST, emit, run_async
from bench.sshpeer import CIPHER, CLASSICAL_KEX


async def _connect(args: argparse.Namespace) -> Any:
    import asyncssh

    return await asyncssh.connect(
        HOST,
        args.port,
        username="root",
        client_keys=[args.key],
        known_hosts=None,
        encryption_algs=[CIPHER],
        kex_algs=[CLASSICAL_KEX],
        compression_algs=None,
        agent_path=None,
    )


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    """connect + auth + run('true') + close, ``reps`` times after warm-up."""
    times = []
    for i in range(args.reps + args.warmup):
        t0 = time.perf_counter()
        async with await _connect(args) as conn:
            result = await conn.run("true", check=True)
        dt = time.perf_counter() - t0
        assert result.exit_status == 0
        if i >= args.warmup:
            times.append(dt)
    return {"times": times}


async def rtt(args: argparse.Namespace) -> dict[str, Any]:
    """Round trips of ``size`` bytes through a remote ``cat`` on one open channel."""
    payload = os.urandom(args.size)
    times = []
    async with await _connect(args) as conn:
        proc = await conn.create_process("cat", encoding=None)
        for i in range(args.reps + args.warmup):
            t0 = time.perf_counter()
            proc.stdin.write(payload)
            got = await proc.stdout.readexactly(len(payload))
            dt = time.perf_counter() - t0
            assert got == payload
            if i >= args.warmup:
                times.append(dt)
        proc.stdin.write_eof()
        await proc.wait()
    return {"times": times}


async def bulk(args: argparse.Namespace) -> dict[str, Any]:
    """Stream ``size`` bytes to ``cat > /dev/null`` on one channel, ``reps`` times."""
    chunk = os.urandom(args.chunk)
    times = []
    async with await _connect(args) as conn:
        for _ in range(args.reps):
            t0 = time.perf_counter()
            proc = await conn.create_process("cat > /dev/null", encoding=None)
            for _ in range(args.size // args.chunk):
                proc.stdin.write(chunk)
                await proc.stdin.drain()
            proc.stdin.write_eof()
            await proc.wait()
            times.append(time.perf_counter() - t0)
    return {"times": times, "bytes": args.size // args.chunk * args.chunk}


def main() -> None:
    """Parse the subcommand, run it, print its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench.ssh_client")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("latency", "rtt", "bulk"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--key", required=True, help="path of the client's private key file")
        p.add_argument("--reps", type=int, default=10)
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--size", type=int, default=64)
        p.add_argument("--chunk", type=int, default=1 << 20)
        p.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    fn = {"latency": latency, "rtt": rtt, "bulk": bulk}[args.cmd]
    emit(run_async(lambda: fn(args), use_uvloop=args.uvloop))


if __name__ == "__main__":
    main()
