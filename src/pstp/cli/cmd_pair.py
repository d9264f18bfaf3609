"""``pstp pair``: open a pairing window, or pair with a device showing a code."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING

from pstp.cli.common import load_settings, run
from pstp.cli.main import EXIT_PROTOCOL, Console
from pstp.settings import format_address

if TYPE_CHECKING:
    from pstp.netif import Reachable

__all__ = ["run_pair"]

_CODE_ENV = "PSTP_PAIR_CODE"


def run_pair(args: argparse.Namespace, console: Console) -> int:
    """Dispatch to the serving side (--allow) or the connecting side (HOST)."""
    if args.code_on_argv:
        console.error(
            "codes are never taken from the command line (they would land in shell history "
            f"and `ps`): type it at the prompt, pipe it on stdin, or set {_CODE_ENV}"
        )
        return 2
    if args.allow:
        return _allow(args, console)
    if not args.host:
        console.error("give HOST[:PORT] of the device showing a code, or --allow on that device")
        return 2
    return _join(args, console)


def _allow(args: argparse.Namespace, console: Console) -> int:
    """Open a pairing window: in the running `pstp serve` if there is one, else here."""
    from pstp.client.control import NoDaemon, pair_through_daemon
    from pstp.daemon.pairing import generate_code

    settings = load_settings(args)
    code = generate_code()
    host = settings.listen[0][0]
    events = pair_through_daemon(settings, code, args.timeout)
    try:
        first = next(events)
    except NoDaemon:
        return _allow_here(args, console, code)
    last = first
    try:
        _show_window(args, console, settings.device_id, host, int(first["port"]), code)
        for last in events:
            if last.get("event") == "failed":
                _wrong_code(console, str(last.get("from", "?")), int(last.get("left", 0)))
    finally:
        events.close()  # closes the window if we stop early (^C)
    if last.get("event") == "paired":
        console.print(f"paired with {last['peer']!r}; its key is stored in {settings.path}")
        return 0
    console.error(
        f"pairing window closed without pairing ({last.get('why')}, "
        f"{last.get('failures', 0)} failed)"
    )
    return 1


def _wrong_code(console: Console, peer: str, left: int) -> None:
    """One line per wrong code, on the device showing the code."""
    if left:
        console.print(f"wrong code from {peer}: {left} tries left in this window")
    else:
        console.print(f"wrong code from {peer}: no tries left, the window closes")


def _show_window(
    args: argparse.Namespace, console: Console, device_id: str, host: str, port: int, code: str
) -> None:
    from pstp.daemon.pairing import code_uri

    where = reachable_addresses(host)
    console.print(f"pairing window open for {args.timeout:g} s; this device answers on:")
    for line in describe_addresses(where, port):
        console.print(f"  {line}")
    console.print(f"code: {code[:4]}-{code[4:]}")
    others = " (or another address above)" if len(where) > 1 else ""
    console.print(f"on the other device: pstp pair {format_address(where[0].host, port)}{others}")
    if args.qr or console.out.isatty():
        _print_qr(code_uri([r.host for r in where], port, device_id, code), console)


def reachable_addresses(host: str) -> list[Reachable]:
    """Where a peer reaches a service listening on ``host`` (see :func:`pstp.netif.reachable`)."""
    from pstp.netif import reachable

    try:
        return reachable(host)
    except OSError:  # no getifaddrs: the configured address, or loopback, is all we know
        wild = host in ("0.0.0.0", "::")  # noqa: S104 - comparing, not binding
        return reachable("127.0.0.1" if wild else host)


def describe_addresses(where: list[Reachable], port: int) -> list[str]:
    """One line per address: ``HOST:PORT (interface)``, loopback said to be local only."""
    lines = []
    for r in where:
        text = format_address(r.host, port)
        if r.local_only:
            why = "this device has no other network address" if r.interface else "configured"
            text += f" (reachable only from this machine: {why})"
        elif r.interface:
            text += f" ({r.interface})"
        lines.append(text)
    return lines


def _allow_here(args: argparse.Namespace, console: Console, code: str) -> int:
    """No daemon runs: serve the pairing window from this process until it closes."""
    from pstp.daemon.app import Daemon
    from pstp.daemon.pairing import PairingWindow

    settings = load_settings(args)
    host, port = settings.listen[0]

    async def main() -> int:
        window = PairingWindow.open(
            code.encode(),
            settings.device_id,
            str(settings.path),
            port,
            timeout=args.timeout,
            now=time.monotonic(),
        )
        window.on_failed = lambda peer, left: _wrong_code(console, peer, left)
        daemon = Daemon(settings, pairing=window, control=False)
        await daemon.start()
        _show_window(args, console, settings.device_id, host, port, code)
        try:
            peer = await daemon.run_pairing()
        finally:
            await daemon.close()
        if peer is None:
            v = window.verifier
            if v.successes:
                why = "the code was right but the pairing exchange did not complete"
            else:
                limit = v.max_failures
                why = f"{v.failures} wrong codes" if limit and v.failures >= limit else "timeout"
            console.error(f"pairing window closed without pairing ({why}, {v.failures} failed)")
            return 1
        console.print(f"paired with {peer!r}; its key is stored in {settings.path}")
        return 0

    return run(main())


def _join(args: argparse.Namespace, console: Console) -> int:
    from pstp.client.api import pair_with
    from pstp.daemon.pairing import MAX_FAILURES, normalize_code
    from pstp.exceptions import HandshakeFailed
    from pstp.settings import parse_address

    settings = load_settings(args)
    host, port = parse_address(args.host)
    code = normalize_code(_read_code(console))
    try:
        peer = run(pair_with(settings, host, port, code))
    except HandshakeFailed as exc:
        text = str(exc)
        if text.startswith(_WRONG_CODE):
            # The prover learns the code was wrong from confirmV before the device
            # does, and the device never says how many tries it has left (§16.3).
            console.error(
                f"wrong code: {host}:{port} did not accept it. Check the code it shows and "
                f"run `pstp pair {args.host}` again; a device allows {MAX_FAILURES} wrong "
                "codes per pairing window (it shows how many are left), then a new window "
                "and code are needed"
            )
            return EXIT_PROTOCOL
        if text.startswith(_HUNG_UP):
            console.error(
                f"{host}:{port} refused to pair: no pairing window is open there (it closes "
                f"after a pairing, {MAX_FAILURES} wrong codes or its timeout), or another "
                "device is trying a code right now. Run `pstp pair --allow` on it and try "
                "again"
            )
            return EXIT_PROTOCOL
        raise
    console.print(f"paired with {peer!r}; its key is stored in {settings.path}")
    return 0


#: How PSTP-PAKE says the code was wrong (pstp.crypto.spake2plus, the prover's
#: check of confirmV) and how a silent refusal reads (pstp.protocol.connection).
_WRONG_CODE = "SPAKE2+ verifier confirmation failed"
_HUNG_UP = "the peer hung up during the handshake"


def _read_code(console: Console) -> str:
    env = os.environ.get(_CODE_ENV)
    if env:
        return env
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("pairing code shown on the other device: ")
    line = sys.stdin.readline()
    if not line.strip():
        raise ValueError(f"no code: type it, pipe it on stdin, or set {_CODE_ENV}")
    return line


def _print_qr(uri: str, console: Console) -> None:
    try:
        import segno
    except ImportError:  # a dependency, but the QR code is a convenience: degrade
        console.print(uri)
        return
    segno.make(uri, error="m").terminal(out=console.out, compact=True)
