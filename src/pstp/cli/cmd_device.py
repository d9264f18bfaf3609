"""``pstp device add|list|remove``: manage the peers this device trusts."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Mapping
from typing import Any

from pstp.cli.common import load_settings, print_table
from pstp.cli.main import Console

__all__ = ["add", "list_", "remove"]


def _signal_daemon(args: argparse.Namespace, console: Console) -> None:
    """Ask a running `pstp serve` to reload (it closes sessions of removed peers).

    The daemon holds an exclusive flock on ``pstp.pid`` for as long as it
    runs; a pid file whose lock can be taken is stale (its pid may belong to
    any process by now) and nothing is signalled.
    """
    import fcntl

    settings = load_settings(args)
    pidfile = settings.path.with_name("pstp.pid")
    try:
        fd = os.open(pidfile, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # no daemon has run here (or it stopped cleanly)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # locked: the daemon that wrote it is running
        else:
            console.print(f"no daemon is running for {settings.path} (stale {pidfile})")
            return
        pid = int(os.read(fd, 32).decode("ascii", "replace").strip())
        if pid <= 0:
            raise ValueError(pid)
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        return
    finally:
        os.close(fd)
    console.print(f"told the running daemon (pid {pid}) to reload")


def add(args: argparse.Namespace, console: Console) -> int:
    """Create a peer with a fresh pair key and show what the other device needs."""
    from pstp.cli.cmd_pair import describe_addresses, reachable_addresses
    from pstp.crypto.kdf import random_bytes
    from pstp.daemon.pairing import link_uri
    from pstp.settings import add_peer, parse_address

    settings = load_settings(args)
    if args.name in settings.peers and not args.replace:
        console.error(f"{args.name!r} already exists (use --replace to give it a new key)")
        return 2
    key = random_bytes(32)
    add_peer(settings.path, args.name, key, default_policy=True)
    host, port = settings.listen[0]
    console.print(f"added {args.name!r} to {settings.path}")
    console.print("")
    console.print(f"On {args.name!r}, add this to its pstp.toml (keep it private, mode 0600):")
    console.print("")
    console.print(f"[peers.{settings.device_id}]")
    console.print(f'key = "{key.hex()}"')
    if args.address:
        console.print(f'address = "{args.address}"')
    console.print("")
    if args.address:
        shown_host, port = parse_address(args.address)
        hosts = [shown_host]
    else:  # a wildcard is no address: every address a peer can reach (§16.2)
        where = reachable_addresses(host)
        hosts = [r.host for r in where]
        console.print(f"{settings.device_id!r} answers on:")
        for line in describe_addresses(where, port):
            console.print(f"  {line}")
        console.print("")
    key_hex = key.hex()
    uri = link_uri("peer", hosts, port, id=settings.device_id, key=key_hex)
    console.print(f"or as a URI: {uri}")
    if args.qr:
        try:
            import segno
        except ImportError:
            console.print("(install segno for a QR code)")
        else:
            segno.make(uri, error="m").terminal(out=console.out, compact=True)
    console.print("Prefer `pstp pair` when both devices are at hand: no key leaves this machine.")
    _signal_daemon(args, console)
    return 0


def list_(args: argparse.Namespace, console: Console) -> int:
    """List trusted peers (never their keys); ``--json`` for a JSON list."""
    settings = load_settings(args)
    rows = [
        (peer.id, peer.address, _policy_summary(peer.table)) for peer in settings.peers.values()
    ]
    if args.json:
        import json

        listed = [{"id": i, "address": a, "policy": p} for i, a, p in rows]
        console.print(json.dumps(listed))
        return 0
    if not rows:
        console.print("no peers yet: pair one with `pstp pair --allow`")
        return 0
    shown = [(peer_id, address or "-", policy) for peer_id, address, policy in rows]
    print_table(console, ("PEER", "ADDRESS", "ALLOWED"), shown)
    return 0


def _policy_summary(table: Mapping[str, Any]) -> str:
    """What a peer's policy table allows, in a few words."""
    policy = table.get("policy")
    if policy is None:
        return "nothing (no policy table)"
    if not policy:
        return "sessions and ping only"
    return ", ".join(sorted(policy))


def remove(args: argparse.Namespace, console: Console) -> int:
    """Forget a peer; a running daemon closes its sessions at once."""
    from pstp.settings import remove_peer

    settings = load_settings(args)
    if not remove_peer(settings.path, args.name):
        console.error(f"no peer {args.name!r} in {settings.path}")
        return 2
    console.print(f"removed {args.name!r}")
    _signal_daemon(args, console)
    return 0
