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
EXIT_REMOTE = 255  # a refusal or failure on the remote side, as ssh reports its own errors
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
    ping.add_argument(
        "--address",
        metavar="HOST[:PORT]",
        help="use this address alone (no remembered address, no discovery)",
    )
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

    audit = sub.add_parser(
        "audit",
        help="show and verify the audit log",
        description=(
            "Every authentication, pairing, action, exec, shell, file transfer and forward is "
            "recorded in a hash-chained SQLite log (audit.sqlite beside the configuration, or "
            "[audit] path). The chain detects edits, deletions and insertions; a rewrite of the "
            "whole file is detected only against a head kept elsewhere (`pstp audit head`, "
            "then `pstp audit verify --expect SEQ:HASH`)."
        ),
    )
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    audit_list = audit_sub.add_parser("list", help="show entries, oldest first")
    audit_list.add_argument("--peer", help="only this peer's entries")
    audit_list.add_argument(
        "--since", metavar="WHEN", help="an age (30m, 1h, 2d, 1w) or an ISO time (local if no zone)"
    )
    audit_list.add_argument("--kind", help="only this kind (auth, pairing, action, exec, ...)")
    audit_list.add_argument("--limit", type=int, metavar="N", help="only the last N entries")
    audit_list.add_argument("--json", action="store_true", help="one JSON object per line")
    audit_list.set_defaults(func=_lazy("pstp.cli.cmd_audit", "run_list"))
    audit_verify = audit_sub.add_parser(
        "verify", help="check the hash chain (exit 1 naming the first bad row)"
    )
    audit_verify.add_argument(
        "--expect", metavar="SEQ:HASH", help="also check a head exported by `pstp audit head`"
    )
    audit_verify.set_defaults(func=_lazy("pstp.cli.cmd_audit", "run_verify"))
    audit_head = audit_sub.add_parser("head", help="print SEQ:HASH of the last row (keep it)")
    audit_head.set_defaults(func=_lazy("pstp.cli.cmd_audit", "run_head"))

    policy_p = sub.add_parser(
        "policy",
        help="ask what the policy lets a peer do",
        description="Query the [peers.NAME.policy] tables of the configuration.",
    )
    policy_sub = policy_p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    policy_check = policy_sub.add_parser(
        "check",
        help="could PEER do WHAT (at a given time)?",
        description=(
            "Print allow or deny, the rule that decided and why; exit 0 if allowed,\n"
            "1 if denied. --at and --reason may come before or after WHAT (for exec,\n"
            "after the command too)."
        ),
        epilog=(
            "examples:\n"
            '  pstp policy check phone action kettle.on temp=80 --reason "coming home"\n'
            "  pstp policy check phone exec -- systemctl status nginx --at 2026-11-22T03:00\n"
            "  pstp policy check phone file /srv/share/notes.txt --write\n"
            "  pstp policy check phone forward camera.local:80"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    policy_opts = argparse.ArgumentParser(add_help=False)
    for parser_ in (policy_check, policy_opts):
        # SUPPRESS after WHAT, so a value given before WHAT is not reset to the default
        default = None if parser_ is policy_check else argparse.SUPPRESS
        parser_.add_argument(
            "--at",
            metavar="ISO-DATETIME",
            default=default,
            help="the moment to judge, e.g. 2026-11-22T03:00 (local if no zone; default: now)",
        )
        parser_.add_argument(
            "--reason", metavar="TEXT", default=default, help='the request\'s "why"'
        )
    policy_check.add_argument("peer", metavar="PEER", help="the peer's device id")
    policy_what = policy_check.add_subparsers(dest="what", metavar="WHAT", required=True)
    policy_action = policy_what.add_parser(
        "action", parents=[policy_opts], help="run a declared action: NAME [ARG=VALUE ...]"
    )
    policy_action.add_argument("name", metavar="NAME", help="the action's name")
    policy_action.add_argument(
        "assignments", nargs="*", metavar="ARG=VALUE", help="arguments, as the peer would send"
    )
    policy_exec = policy_what.add_parser(
        "exec", parents=[policy_opts], help="run a command without a shell: -- CMD [ARGS...]"
    )
    policy_exec.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD", help="the argv")
    policy_what.add_parser("shell", parents=[policy_opts], help="open an interactive shell")
    policy_what.add_parser("session", parents=[policy_opts], help="open a session")
    policy_file = policy_what.add_parser(
        "file", parents=[policy_opts], help="read (or --write) a file"
    )
    policy_file.add_argument("path", metavar="PATH", help="an absolute path on this device")
    policy_file.add_argument("--write", action="store_true", help="write instead of read")
    policy_forward = policy_what.add_parser(
        "forward", parents=[policy_opts], help="forward to HOST:PORT"
    )
    policy_forward.add_argument("target", metavar="HOST:PORT", help="[ADDR]:PORT for IPv6")
    policy_check.set_defaults(func=_lazy("pstp.cli.cmd_policy", "check"))

    exec_ = sub.add_parser(
        "exec",
        help="run a command on a peer (no shell); exits with its status",
        description=(
            "Run CMD with ARGS on PEER exactly as given (no shell interprets them), "
            "streaming this process's stdin, stdout and stderr. Exits with the remote "
            "status, as ssh does (127: not found, 255: the peer failed)."
        ),
    )
    exec_.add_argument("peer", help="the peer's device id")
    exec_.add_argument("--reason", metavar="TEXT", help="why (for the peer's policy and audit)")
    exec_.add_argument(
        "--address",
        metavar="HOST[:PORT]",
        help="use this address alone (no remembered address, no discovery)",
    )
    exec_.add_argument(
        "-n", "--no-stdin", action="store_true", help="send no input (stdin from /dev/null)"
    )
    exec_.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")
    exec_.set_defaults(func=_lazy("pstp.cli.cmd_exec", "exec_command"))

    shell = sub.add_parser("shell", help="an interactive shell on a peer")
    shell.add_argument("peer", help="the peer's device id")
    shell.add_argument("--reason", metavar="TEXT", help="why (for the peer's policy and audit)")
    terminal = shell.add_mutually_exclusive_group()
    terminal.add_argument(
        "-t",
        dest="pty",
        action="store_const",
        const=True,
        default=None,
        help="a remote terminal even if standard input is not one (default: only if it is)",
    )
    terminal.add_argument(
        "-T",
        dest="pty",
        action="store_const",
        const=False,
        help="no remote terminal: the shell reads standard input to its end, output and "
        "errors apart",
    )
    shell.add_argument(
        "--address",
        metavar="HOST[:PORT]",
        help="use this address alone (no remembered address, no discovery)",
    )
    shell.set_defaults(func=_lazy("pstp.cli.cmd_exec", "shell_command"))

    run = sub.add_parser("run", help="run a peer's configured action; exits with its status")
    run.add_argument("peer", help="the peer's device id")
    run.add_argument("action", help="the action's name")
    run.add_argument("assignments", nargs="*", metavar="ARG=VALUE", help="action arguments")
    run.add_argument("--reason", metavar="TEXT", help="why (for the peer's policy and audit)")
    run.add_argument(
        "--address",
        metavar="HOST[:PORT]",
        help="use this address alone (no remembered address, no discovery)",
    )
    run.set_defaults(func=_lazy("pstp.cli.cmd_exec", "run_command"))

    discover = sub.add_parser(
        "discover",
        help="list PSTP devices on the local network (broadcast and mDNS)",
        description=(
            "Broadcast a discovery PING on every interface and browse mDNS (_pstp._tcp) for "
            "the same time; list each device once with its address, id, capabilities, how it "
            "was found and whether this configuration holds a key for it. PINGs carry the key "
            "ids of configured peers, so paired devices in stealth mode answer too."
        ),
    )
    discover.add_argument(
        "--timeout", type=float, default=1.0, metavar="S", help="seconds to wait (default 1)"
    )
    discover.add_argument("--port", type=int, default=9000, help="service port (default 9000)")
    discover.add_argument("--json", action="store_true", help="print a JSON list")
    discover.add_argument("--no-mdns", action="store_true", help="broadcast PING/PONG only")
    discover.set_defaults(func=_lazy("pstp.cli.cmd_discover", "discover"))

    doctor = sub.add_parser(
        "doctor",
        help="explain why a peer (or any device) is not found",
        description=(
            "Check the interfaces and broadcast routes, send a discovery PING and browse mDNS, "
            "then for PEER: TCP-connect to its remembered and discovered addresses and try a "
            "handshake, and say what each failure most likely means. Exit 0 when PEER was "
            "reached and authenticated (always 0 without PEER), 1 otherwise."
        ),
    )
    doctor.add_argument("peer", nargs="?", help="the peer's device id")
    doctor.add_argument(
        "--timeout", type=float, default=1.0, metavar="S", help="seconds per check (default 1)"
    )
    doctor.add_argument("--port", type=int, help="service port (default: the peer's, or 9000)")
    doctor.set_defaults(func=_lazy("pstp.cli.cmd_doctor", "doctor"))

    for verb, paths, help_, desc in (
        (
            "put",
            "LOCAL... REMOTE",
            "send files and directories to a peer",
            "Send LOCAL files and directories (recursively, with modes and mtimes) to REMOTE, "
            "an absolute path under one of PEER's file roots. Interrupted transfers resume "
            "when run again; files PEER already has with the same SHA-256 are skipped.",
        ),
        (
            "get",
            "REMOTE... LOCAL",
            "fetch files and directories from a peer",
            "Fetch REMOTE files and directories (absolute paths under PEER's file roots) to "
            "LOCAL. Interrupted transfers resume when run again; files already here with the "
            "same SHA-256 are skipped.",
        ),
    ):
        xfer = sub.add_parser(verb, help=help_, description=desc)
        xfer.add_argument("peer", help="the peer's device id")
        xfer.add_argument("paths", nargs="+", metavar=paths)
        xfer.add_argument("--force", action="store_true", help="replace existing files")
        xfer.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
        xfer.add_argument("--no-progress", action="store_true", help="draw no progress bar")
        xfer.add_argument("--limit", metavar="RATE", help="at most RATE bytes/s (500K, 20M, 1G)")
        xfer.add_argument("--reason", metavar="TEXT", help="why (for the peer's policy and audit)")
        xfer.add_argument(
            "--address",
            metavar="HOST[:PORT]",
            help="use this address alone (no remembered address, no discovery)",
        )
        xfer.set_defaults(func=_lazy("pstp.cli.cmd_files", f"{verb}_command"))

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
    from pstp.exceptions import (
        ChannelError,
        ConnectionClosed,
        HandshakeFailed,
        ProtocolError,
        PstpError,
    )
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
    if isinstance(exc, ChannelError):
        # Like ssh's own failures: 255, never a number a remote command could return.
        console.error(f"refused: {exc.reason}" if exc.reason else str(exc))
        return EXIT_REMOTE
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
