"""``pstp pair``: open a pairing window, or pair with a device showing a code."""

from __future__ import annotations

import argparse
import os
import sys
import time

from pstp.cli.common import load_settings, run
from pstp.cli.main import Console

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
    try:
        _show_window(args, console, settings.device_id, host, int(first["port"]), code)
        last = next(events)
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


def _show_window(
    args: argparse.Namespace, console: Console, device_id: str, host: str, port: int, code: str
) -> None:
    from pstp.daemon.pairing import code_uri

    wildcard = host in ("0.0.0.0", "::")  # noqa: S104 - comparing, not binding
    shown_host = _lan_address() if wildcard else host
    console.print(f"pairing window open for {args.timeout:g} s on {shown_host}:{port}")
    console.print(f"code: {code[:4]}-{code[4:]}")
    console.print(f"on the other device: pstp pair {shown_host}:{port}")
    if args.qr or console.out.isatty():
        _print_qr(code_uri(shown_host, port, device_id, code), console)


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
    from pstp.daemon.pairing import normalize_code
    from pstp.settings import parse_address

    settings = load_settings(args)
    host, port = parse_address(args.host)
    code = normalize_code(_read_code(console))
    peer = run(pair_with(settings, host, port, code))
    console.print(f"paired with {peer!r}; its key is stored in {settings.path}")
    return 0


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


def _lan_address() -> str:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"
