"""``pstp demo``: a serving device and a peer, two processes, one loopback session."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys

from pstp.asyncio.runner import run as run_loop
from pstp.cli.main import Console

__all__ = ["run"]

_SERVER_ID = "home"
_CLIENT_ID = "phone"


def run(args: argparse.Namespace, console: Console) -> int:
    """Run the demo (or, with ``--role server``, its serving half)."""
    if args.role == "server":
        key = bytes.fromhex(sys.stdin.readline().strip())
        return run_loop(_serve(key, args.port, console))
    return run_loop(_both(args.port, console))


async def _serve(key: bytes, port: int, console: Console) -> int:
    from pstp.asyncio.connection import Session
    from pstp.asyncio.server import serve
    from pstp.protocol.handshake import KeyRing

    ring = KeyRing()
    ring.add(_CLIENT_ID, key)

    async def answer(session: Session) -> None:
        async for data in session:
            await session.send(b"ok: " + data)

    server = await serve(answer, "127.0.0.1", port, keyring=ring, own_id=_SERVER_ID)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    console.print(f"listening 127.0.0.1 {server.port}")
    await stop.wait()
    await server.close()
    return 0


async def _both(port: int, console: Console) -> int:
    from pstp.asyncio.client import connect
    from pstp.crypto.kdf import random_bytes

    key = random_bytes(32)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pstp",
        "demo",
        "--role",
        "server",
        "--port",
        str(port),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        # The pair key travels over a pipe, never on a command line: other users
        # can read a process's arguments.
        child.stdin.write(key.hex().encode() + b"\n")
        await child.stdin.drain()
        child.stdin.close()
        line = (await asyncio.wait_for(child.stdout.readline(), 20)).decode().split()
        if len(line) != 3 or line[0] != "listening":
            console.error("the demo device did not start")
            return 1
        host, port = line[1], int(line[2])
        console.print(f'device "{_SERVER_ID}" serving on {host}:{port} (process {child.pid})')
        console.print(f'peer "{_CLIENT_ID}" connecting with a fresh 32-byte pair key')
        async with await connect(host, port, pair_key=key, device_id=_SERVER_ID) as session:
            challenge, response = session.connection.challenge_response
            console.print(f"-> challenge received (e_R):   {challenge[:12].hex()}...")
            console.print(f"-> response sent (confirm_I):  {response[:12].hex()}...")
            suite = "AES-256-GCM" if session.connection.suite == 1 else "ChaCha20-Poly1305"
            console.print(
                f"-> authenticated {session.peer_id!r}: session "
                f"{session.session_id[:8].hex()}..., {suite}"
            )
            for word in (b"kettle.on", b"lights.off"):
                await session.send(word)
                reply = await session.recv()
                console.print(f"-> sent {word.decode()!r}, device answered {reply.decode()!r}")
        console.print("-> session closed cleanly")
        return 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
        await child.wait()
