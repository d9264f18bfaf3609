"""The ``pstp`` command: argparse subcommands, one error-to-exit-code mapping.

Commands import what they need lazily, so ``pstp --help`` loads no crypto.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from pstp import __version__

__all__ = ["Console", "main"]

#: Exit codes (sysexits-style where one fits).
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PROTOCOL = 3
EXIT_CONNECTION = 4
EXIT_CONFIG = 78  # sysexits EX_CONFIG
EXIT_INTERRUPTED = 130


class Console:
    """Where commands write; tests swap the streams.

    Args:
        out: standard output.
        err: standard error.
    """

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def print(self, *parts: object) -> None:
        """Write a line to standard output."""
        print(*parts, file=self.out, flush=True)

    def error(self, *parts: object) -> None:
        """Write a line to standard error."""
        print("pstp:", *parts, file=self.err, flush=True)


Command = Callable[[argparse.Namespace, Console], int]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pstp",
        description="Reach and control your own devices privately (PSTP/2).",
    )
    parser.add_argument("--version", action="version", version=f"pstp {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    parser.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: $PSTP_CONFIG or pstp.toml in the config directory)",
    )

    init = sub.add_parser("init", help="create this device's configuration")
    init.add_argument("--id", help="this device's id (default: the host name)")
    init.add_argument("--listen", default="0.0.0.0:9000", help="HOST:PORT to serve on")
    init.set_defaults(func=_lazy("pstp.cli.cmd_init", "run"))

    serve = sub.add_parser("serve", help="run this device (sessions, discovery)")
    serve.set_defaults(func=_lazy("pstp.cli.cmd_serve", "serve"))

    pair = sub.add_parser(
        "pair",
        help="pair two devices with a short code",
        description=(
            "On the device to be reached: `pstp pair --allow` shows a code. On the other: "
            "`pstp pair HOST[:PORT]` and type the code (or pipe it on stdin, or set "
            "PSTP_PAIR_CODE). Both then hold the other's id and a fresh pair key."
        ),
    )
    pair.add_argument("host", nargs="?", metavar="HOST[:PORT]", help="the device showing a code")
    pair.add_argument("code_on_argv", nargs="?", help=argparse.SUPPRESS)
    pair.add_argument("--allow", action="store_true", help="open a pairing window here")
    pair.add_argument("--timeout", type=float, default=600.0, help="window length in seconds")
    pair.add_argument("--qr", action="store_true", help="print the QR code even if not a terminal")
    pair.set_defaults(func=_lazy("pstp.cli.cmd_pair", "run_pair"))

    ping = sub.add_parser("ping", help="authenticate to a peer and time a round trip")
    ping.add_argument("peer", help="the peer's device id")
    ping.add_argument("--address", metavar="HOST[:PORT]", help="use this address")
    ping.add_argument("-c", "--count", type=int, default=1, help="round trips")
    ping.set_defaults(func=_lazy("pstp.cli.cmd_ping", "ping"))

    device = sub.add_parser("device", help="manage the peers this device trusts")
    dsub = device.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    dadd = dsub.add_parser("add", help="add a peer with a fresh pair key")
    dadd.add_argument("name", help="the peer's device id")
    dadd.add_argument("--address", metavar="HOST:PORT", help="how the peer reaches this device")
    dadd.add_argument("--replace", action="store_true", help="give an existing peer a new key")
    dadd.add_argument("--qr", action="store_true", help="also print a QR code")
    dadd.set_defaults(func=_lazy("pstp.cli.cmd_device", "add"))
    dlist = dsub.add_parser("list", help="list trusted peers")
    dlist.set_defaults(func=_lazy("pstp.cli.cmd_device", "list_"))
    drm = dsub.add_parser("remove", help="forget a peer (its live sessions are closed)")
    drm.add_argument("name", help="the peer's device id")
    drm.set_defaults(func=_lazy("pstp.cli.cmd_device", "remove"))

    demo = sub.add_parser(
        "demo",
        help="run a device and a peer on this machine and show a session end to end",
        description=(
            "Start a serving device in a child process on 127.0.0.1, connect to it with a "
            "fresh pair key, show the handshake, exchange a few records, and close."
        ),
    )
    demo.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    demo.add_argument(
        "--role",
        choices=["both", "server"],
        default="both",
        help=argparse.SUPPRESS,  # "server": the child half; reads the pair key from stdin
    )
    demo.set_defaults(func=_lazy("pstp.cli.cmd_demo", "run"))
    return parser


def _lazy(module: str, name: str) -> Command:
    def call(args: argparse.Namespace, console: Console) -> int:
        import importlib

        func: Command = getattr(importlib.import_module(module), name)
        return func(args, console)

    return call


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Run the CLI and return its exit code.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
        console: where to write (default: the process's stdout/stderr).

    Returns:
        The exit code: 0 on success, 2 on usage errors, 3 when the peer broke the
        protocol or the handshake failed, 4 when the connection failed.
    """
    console = console or Console()
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(console.out)
        return EXIT_USAGE
    if args.verbose:
        import logging

        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
            stream=console.err,
        )
    try:
        return int(args.func(args, console))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        return _report(exc, console)


def _report(exc: Exception, console: Console) -> int:
    from pstp.exceptions import ConnectionClosed, HandshakeFailed, ProtocolError, PstpError
    from pstp.settings import ConfigError

    if isinstance(exc, ConfigError):
        console.error(str(exc))
        return EXIT_CONFIG
    if isinstance(exc, HandshakeFailed):
        console.error(f"handshake failed: {exc} (check the pair key and the device id)")
        return EXIT_PROTOCOL
    if isinstance(exc, ProtocolError):
        console.error(f"protocol error: {exc}")
        return EXIT_PROTOCOL
    if isinstance(exc, ConnectionClosed):
        console.error(str(exc))
        return EXIT_CONNECTION
    if isinstance(exc, (OSError, TimeoutError)):
        console.error(f"connection failed: {exc}")
        return EXIT_CONNECTION
    if isinstance(exc, PstpError):
        console.error(str(exc))
        return EXIT_CONNECTION
    if isinstance(exc, ValueError):
        console.error(str(exc))
        return EXIT_USAGE
    raise exc
