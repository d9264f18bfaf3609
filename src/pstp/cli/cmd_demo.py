"""``pstp demo``: a serving device and a peer, two processes, one loopback session."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import time

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
        say = console.print
        say("pstp demo: two devices on this machine, one encrypted session between them.")
        say()
        say(f'1. Device "{_SERVER_ID}" runs in its own process (pid {child.pid}) on {host}:{port}.')
        say(f'   It and peer "{_CLIENT_ID}" hold the same fresh 32-byte pair key, as paired')
        say("   devices do; the key reached it over a pipe and never crosses the network.")
        started = time.perf_counter()
        async with await connect(host, port, pair_key=key, device_id=_SERVER_ID) as session:
            took = (time.perf_counter() - started) * 1000
            challenge, response = session.connection.challenge_response
            suite = "AES-256-GCM" if session.connection.suite == 1 else "ChaCha20-Poly1305"
            say(f'2. "{_CLIENT_ID}" connected to "{session.peer_id}"; both sides were')
            say(f"   authenticated in one round trip ({took:.1f} ms):")
            say(f"   - challenge received from {_SERVER_ID}: a one-time public key")
            say(f"     ({challenge[:8].hex()}...) and its proof that it holds the pair key;")
            say(f"   - {_CLIENT_ID} checked it and sent its own proof ({response[:8].hex()}...).")
            say("   Each side proved it holds the pair key without sending it. The session")
            say("   keys come from a fresh key exchange (P-256): new for this session, so")
            say("   even the pair key, if stolen later, cannot decrypt it.")
            say(f"3. Encrypted session {session.session_id[:8].hex()}... is open ({suite}):")
            say("   every record below is encrypted and authenticated.")
            say("4. Round trips over it:")
            for word in (b"kettle.on", b"lights.off"):
                started = time.perf_counter()
                await session.send(word)
                reply = await session.recv()
                took = (time.perf_counter() - started) * 1000
                say(
                    f"   sent {word.decode()!r}, device answered {reply.decode()!r} ({took:.2f} ms)"
                )
        say("5. The session closed cleanly.")
        say()
        say("Next, with your own devices:")
        say("  pstp init --id NAME     once on each device (NAME: how the others call it)")
        say("  pstp pair --allow       on the device to reach: it shows a short code")
        say("  pstp pair HOST          on the other one, then type that code")
        say("  pstp ping NAME          check that the two reach each other")
        say('Walkthrough: "Your first two devices" in README.md.')
        return 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
        await child.wait()
