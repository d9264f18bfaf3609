"""``pstp ping PEER``: open an authenticated session to a peer and time a round trip."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from pstp.cli.common import load_settings, run
from pstp.cli.main import Console
from pstp.exceptions import PstpError

if TYPE_CHECKING:
    from pstp.asyncio.connection import Session

__all__ = ["ping"]


_WAYS = {
    "given": "the address given",
    "direct": "its direct address",
    "lan": "discovery on the LAN",
    "websocket": "WebSocket",
    "mqtt": "the MQTT broker (the broker sees only ciphertext)",
}


def _story(console: Console, session: Session, token: str | None) -> None:
    """``-v``: what the handshake did, in the product's words (never a secret)."""
    if session.reached is not None:
        step, where = session.reached
        console.note(f"  reached through {_WAYS.get(step, step)}: {where}")
    conn = session.connection
    try:
        challenge, response = conn.challenge_response
    except PstpError:  # a PSTP-PAKE session has no single challenge
        console.note("  passphrase proven by SPAKE2+ (it never left this machine)")
    else:
        console.note(f"  challenge received: {challenge.hex()[:24]}... (a one-time public key)")
        console.note(f"  response sent: {response.hex()[:24]}... (proof of the shared key)")
    suite = "AES-256-GCM" if conn.suite == 1 else "ChaCha20-Poly1305"
    how = f"token {token}" if token else "pair key"
    console.note(
        f"  authenticated with its {how}: session {session.session_id.hex()[:16]}, {suite}"
    )


def ping(args: argparse.Namespace, console: Console) -> int:
    """Connect to PEER (remembered address, then discovery) and ping it."""
    from pstp.client.api import connect_peer

    settings = load_settings(args)
    if args.peer not in settings.peers:
        console.error(f"no peer {args.peer!r} in {settings.path} (pair first: pstp pair HOST)")
        return 2

    async def main() -> int:
        t0 = time.perf_counter()
        async with await connect_peer(settings, args.peer, address=args.address) as session:
            t1 = time.perf_counter()
            connect_ms = (t1 - t0) * 1000
            if not args.json:
                console.print(f"connected to {session.peer_id!r} in {connect_ms:.1f} ms")
            if args.verbose and not args.json:
                _story(console, session, settings.peers[args.peer].token)
            rtts: list[float] = []
            for i in range(args.count):
                t = time.perf_counter()
                reply = await session.request("ping", str(i).encode())
                ms = (time.perf_counter() - t) * 1000
                rtts.append(ms)
                if not args.json:
                    console.print(f"{reply.decode(errors='replace')} from {args.peer}: {ms:.2f} ms")
        if args.json:
            console.print(
                json.dumps(
                    {
                        "peer": session.peer_id,
                        "reached": (
                            {"step": session.reached[0], "address": session.reached[1]}
                            if session.reached
                            else None
                        ),
                        "connect_ms": round(connect_ms, 3),
                        "rtt_ms": [round(ms, 3) for ms in rtts],
                    }
                )
            )
        return 0

    return run(main())
