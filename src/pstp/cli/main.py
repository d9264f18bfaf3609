"""The ``pstp`` command: argparse subcommands, one error-to-exit-code mapping.

Commands import what they need lazily, so ``pstp --help`` loads no crypto.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from pstp import __version__

__all__ = ["EXIT_TABLE", "Console", "OutputClosed", "build_parser", "main"]

#: Exit statuses.  ``exec``, ``run`` and ``shell`` pass the remote status through,
#: so every failure of pstp itself is 255 there, as ssh does (:data:`PASSTHROUGH`).
#: The table a user reads is :data:`EXIT_TABLE` (``pstp --help``, docs/cli.md).
EXIT_OK = 0
EXIT_NO = 1  # a "no" answer: policy denied, audit chain bad, doctor failed, a file refused
EXIT_USAGE = 2
EXIT_PROTOCOL = 3
EXIT_CONNECTION = 4
EXIT_CONFIG = 78  # sysexits EX_CONFIG
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141  # 128 + SIGPIPE: standard output was closed (``| head``), as C tools end
EXIT_REMOTE = 255  # any failure of pstp itself in exec/run/shell, as ssh reports its own

#: The commands that exit with the remote command's status.
PASSTHROUGH = frozenset({"exec", "run", "shell"})

EXIT_TABLE = """\
exit status:
  exec, run, shell   the remote command's or action's status (0-254; 128+N if
                     signal N ended it, 124 action timed out, 126 cannot execute,
                     127 not found), and 255 for every failure of pstp itself
                     (usage, configuration, connection, handshake, refusal)
  other commands     0   success
                     1   the answer is no: policy check denied, audit verify
                         found a bad row, doctor did not reach the peer, a
                         file was refused or failed
                     2   usage error, unknown peer
                     3   handshake or protocol failure (wrong key or device id)
                     4   connection failed (not reached, bind failed)
                     78  configuration error
  any command        130 interrupted (Ctrl-C), 141 standard output closed"""


class Console:
    """Where commands write; tests swap the streams.

    Args:
        out: standard output.
        err: standard error.
    """

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    #: ``-q``: commands leave out notes and progress (errors are always written).
    quiet = False

    def print(self, *parts: object) -> None:
        """Write a line to standard output.

        Raises:
            OutputClosed: the reader went away (``pstp audit list | head -1``).
        """
        try:
            print(*parts, file=self.out, flush=True)
        except BrokenPipeError:
            raise OutputClosed from None

    def note(self, *parts: object) -> None:
        """Write a diagnostic line to standard error, unless ``-q``."""
        if not self.quiet:
            print(*parts, file=self.err, flush=True)

    def error(self, *parts: object) -> None:
        """Write a line to standard error."""
        print("pstp:", *parts, file=self.err, flush=True)


class OutputClosed(Exception):
    """Standard output's reader closed it: stop quietly, as ``cat | head`` does."""


class _Parser(argparse.ArgumentParser):
    """argparse with our usage status: 255 under exec/run/shell (ssh's), else 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        words = self.prog.split()
        status = EXIT_REMOTE if len(words) > 1 and words[1] in PASSTHROUGH else EXIT_USAGE
        self.exit(status, f"{self.prog}: error: {message}\n")


Command = Callable[[argparse.Namespace, Console], int]


def build_parser() -> argparse.ArgumentParser:
    """The whole ``pstp`` command line (completion scripts are generated from it)."""
    parser = _Parser(
        prog="pstp",
        description="Reach and control your own devices privately (PSTP/2).",
        epilog=EXIT_TABLE + "\n\nMore: docs/cli.md; `pstp COMMAND --help` shows examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pstp {__version__}")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    init = sub.add_parser("init", help="create this device's configuration")
    init.add_argument("--id", help="this device's id (default: the host name)")
    init.add_argument("--listen", default="0.0.0.0:9000", help="HOST:PORT to serve (%(default)s)")
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
        metavar="ADDRESS",
        help="HOST[:PORT], ws://... or wss://...: used alone (no remembered address, no discovery)",
    )
    ping.add_argument("-c", "--count", type=int, default=1, help="round trips")
    ping.add_argument("--json", action="store_true", help="print one JSON object")
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
    dlist.add_argument("--json", action="store_true", help="print a JSON list")
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
    audit_verify.add_argument("--json", action="store_true", help="print one JSON object")
    audit_verify.set_defaults(func=_lazy("pstp.cli.cmd_audit", "run_verify"))
    audit_head = audit_sub.add_parser("head", help="print SEQ:HASH of the last row (keep it)")
    audit_head.add_argument("--json", action="store_true", help="print one JSON object")
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
    policy_opts = _Parser(add_help=False)
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
        parser_.add_argument(
            "--json",
            action="store_true",
            default=False if parser_ is policy_check else argparse.SUPPRESS,
            help="print one JSON object",
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
        metavar="ADDRESS",
        help="HOST[:PORT], ws://... or wss://...: used alone (no remembered address, no discovery)",
    )
    exec_.add_argument(
        "-n", "--no-stdin", action="store_true", help="send no input (stdin from /dev/null)"
    )
    exec_.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")
    exec_.set_defaults(func=_lazy("pstp.cli.cmd_exec", "exec_command"))

    fwd = sub.add_parser(
        "forward",
        help="forward TCP ports through a peer (as ssh -L and -R)",
        description=(
            "Carry TCP connections through PEER until interrupted. "
            "[BIND_ADDR:]PORT:HOST:HOSTPORT (or -L): listen here, and for each connection "
            "have PEER connect to HOST:HOSTPORT (its policy's forward list decides). "
            "-R [BIND_ADDR:]PORT:HOST:HOSTPORT: PEER listens (its forward_listen list "
            "decides), and each connection it takes is carried to HOST:HOSTPORT here. "
            "BIND_ADDR defaults to 127.0.0.1; IPv6 addresses go in brackets."
        ),
    )
    fwd.add_argument("peer", help="the peer's device id")
    fwd.add_argument("specs", nargs="*", metavar="SPEC", help="local forwards, as -L")
    fwd.add_argument(
        "-L", dest="local", action="append", default=[], metavar="SPEC", help="a local forward"
    )
    fwd.add_argument(
        "-R", dest="remote", action="append", default=[], metavar="SPEC", help="a reverse forward"
    )
    fwd.add_argument("--reason", metavar="TEXT", help="why (for the peer's policy and audit)")
    fwd.add_argument(
        "--address",
        metavar="ADDRESS",
        help="HOST[:PORT], ws://, wss:// or mqtt://...: used alone (no other way, no discovery)",
    )
    fwd.set_defaults(func=_lazy("pstp.cli.cmd_forward", "forward"))

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
        metavar="ADDRESS",
        help="HOST[:PORT], ws://... or wss://...: used alone (no remembered address, no discovery)",
    )
    shell.set_defaults(func=_lazy("pstp.cli.cmd_exec", "shell_command"))

    run = sub.add_parser("run", help="run a peer's configured action; exits with its status")
    run.add_argument("peer", help="the peer's device id")
    run.add_argument(
        "action",
        nargs="?",
        help="the action's name; without it, list the actions the peer lets this device run",
    )
    run.add_argument("assignments", nargs="*", metavar="ARG=VALUE", help="action arguments")
    run.add_argument("--reason", metavar="TEXT", help="why (for the peer's policy and audit)")
    run.add_argument(
        "--address",
        metavar="ADDRESS",
        help="HOST[:PORT], ws://... or wss://...: used alone (no remembered address, no discovery)",
    )
    run.add_argument(
        "--json", action="store_true", help="with no action: print the listing as JSON"
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
            metavar="ADDRESS",
            help="HOST[:PORT], ws://... or wss://...: used alone (no remembered address, no "
            "discovery)",
        )
        xfer.set_defaults(func=_lazy("pstp.cli.cmd_files", f"{verb}_command"))

    token = sub.add_parser(
        "token",
        help="scoped, expiring keys: guest credentials, list, revoke",
        description=(
            "Tokens are narrower keys to this device: a scope (channel kinds, actions), an "
            "expiry (1 minute to 30 days), a use budget, revocable at any time. A session may "
            "ask for one (its secret is derived from the session); `issue` makes a guest "
            "credential to hand over as a pstp:// link or QR code. Tokens live in tokens.sqlite "
            "beside the configuration and survive a restart; every use is audited."
        ),
        epilog=(
            "examples:\n"
            "  pstp token issue --peer neighbour --allow gate.open --ttl 2h --uses 5\n"
            "  pstp token list\n"
            "  pstp token revoke tok_abcdefghijkl\n"
            "  pstp token import home < link.txt     # on the other device"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    tissue = token_sub.add_parser("issue", help="issue a guest credential (a pstp:// link)")
    tissue.add_argument("--peer", required=True, help="whom it acts as (a peer, or a guest name)")
    tissue.add_argument(
        "--allow", action="append", metavar="ACTION", help="an action or glob it may run"
    )
    tissue.add_argument(
        "--kind", action="append", metavar="KIND", help="a channel kind it may open"
    )
    tissue.add_argument("--ttl", default="1h", help="lifetime: 90s, 10m, 2h, 7d (default 1h)")
    tissue.add_argument("--uses", type=int, metavar="N", help="sessions it may open")
    tissue.add_argument(
        "--via", action="append", metavar="URL", help="an address to give (default: advertise)"
    )
    tissue.add_argument("--qr", action="store_true", default=None, help="draw a QR code")
    tissue.add_argument("--json", action="store_true", help="print one JSON object")
    tissue.set_defaults(func=_lazy("pstp.cli.cmd_token", "issue"))
    tlist = token_sub.add_parser("list", help="list tokens (never their secrets)")
    tlist.add_argument("--json", action="store_true", help="print a JSON list")
    tlist.set_defaults(func=_lazy("pstp.cli.cmd_token", "list_"))
    trevoke = token_sub.add_parser("revoke", help="revoke a token; its sessions end at once")
    trevoke.add_argument("id", help="the token's id (tok_...)")
    trevoke.set_defaults(func=_lazy("pstp.cli.cmd_token", "revoke"))
    timport = token_sub.add_parser(
        "import", help="store a token link (from stdin or --file) as peer NAME"
    )
    timport.add_argument("name", help="the name to reach it by (pstp ping NAME)")
    timport.add_argument("--file", metavar="PATH", help="read the link from this file")
    timport.add_argument("--replace", action="store_true", help="overwrite an existing peer")
    timport.set_defaults(func=_lazy("pstp.cli.cmd_token", "import_"))

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, fish)",
        description=(
            "Print a completion script for SHELL on standard output, generated from this "
            "command's own options, so it never goes stale."
        ),
        epilog=(
            "examples:\n"
            "  pstp completion bash > ~/.local/share/bash-completion/completions/pstp\n"
            "  pstp completion zsh > ~/.zfunc/_pstp       # with fpath+=~/.zfunc\n"
            "  pstp completion fish > ~/.config/fish/completions/pstp.fish"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", nargs="?", choices=["bash", "zsh", "fish"], help="the shell")
    completion.add_argument("--peers", action="store_true", help=argparse.SUPPRESS)
    completion.set_defaults(func=_lazy("pstp.cli.cmd_completion", "completion"))

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
    _finish(parser)
    return parser


def _add_common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """-v, -q and --config, accepted before the command and after it (``pstp ping -v home``).

    Below the top level they default to SUPPRESS, so leaving them out there
    keeps what was given before the command.
    """
    unset = None if top else argparse.SUPPRESS
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else argparse.SUPPRESS,
        help="more logging (-vv: debug)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="no notes or progress, only results and errors",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=unset,
        help="configuration file (default: $PSTP_CONFIG or pstp.toml in the config directory)",
    )


def _finish(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Give every subcommand the common options, and its description and examples."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, child in action.choices.items():
            words = (*path, name)
            if not any("--quiet" in a.option_strings for a in child._actions):
                _add_common(child)
            text = _HELP_TEXT.get(" ".join(words))
            if text is not None:
                description, examples = text
                child.description = child.description or description
                if examples and not child.epilog:
                    child.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
                    child.formatter_class = argparse.RawDescriptionHelpFormatter
            _finish(child, words)


#: Description and examples of the commands that do not set their own.
_HELP_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "init": (
        "Create this device's configuration file (mode 0600) with its id and the address "
        "it serves on. Nothing is paired yet: see `pstp pair`.",
        ("pstp init --id home", "pstp init --id pi --listen 192.168.1.20:9000"),
    ),
    "serve": (
        "Serve this device: answer discovery, authenticate paired peers and do what their "
        "policy allows, writing every use to the audit log. Runs until SIGTERM or Ctrl-C; "
        "SIGHUP re-reads the configuration (a broken file is refused and the running one kept).",
        ("pstp serve", "pstp serve -v          # log each session"),
    ),
    "pair": (
        "",
        (
            "pstp pair --allow           # on home: shows a code",
            "pstp pair 192.168.1.20      # on laptop: asks for it",
        ),
    ),
    "ping": (
        "Authenticate to PEER (the remembered address, then discovery; or --address alone) "
        "and time round trips on the session.",
        ("pstp ping home", "pstp ping -c 5 home", "pstp ping --address 192.168.1.20:9000 home"),
    ),
    "device": ("Add, list and remove the peers this device trusts.", ()),
    "device add": (
        "Add a peer with a fresh pair key and print it once, as a pstp:// link (and QR "
        "code), for the other device to import. Prefer `pstp pair`.",
        ("pstp device add phone --qr",),
    ),
    "device list": (
        "List the peers this device trusts, with their last known address and what their "
        "policy allows (never their keys).",
        ("pstp device list", "pstp device list --json"),
    ),
    "device remove": (
        "Forget a peer; a running `pstp serve` closes its live sessions at once.",
        ("pstp device remove phone",),
    ),
    "token issue": (
        "Issue a guest credential: a token for PEER (a configured peer, whose policy it "
        "narrows, or a guest name) limited to the actions --allow names, for --ttl, for "
        "--uses sessions. Prints it once as a pstp:// link (a QR code on a terminal).",
        (
            "pstp token issue --peer neighbour --allow gate.open --ttl 2h --uses 5",
            "pstp token issue --peer phone --kind ping --kind action --ttl 7d",
        ),
    ),
    "token list": (
        "List this device's tokens: id, peer, uses, expiry, state and scope (never secrets).",
        ("pstp token list", "pstp token list --json"),
    ),
    "token revoke": (
        "Revoke a token; a running `pstp serve` closes its sessions within a quarter second.",
        ("pstp token revoke tok_abcdefghijkl",),
    ),
    "token import": (
        "Store a token link (from `pstp token issue` on the device) as peer NAME. The link "
        "is read from standard input or --file, never from the command line.",
        ("pstp token import home < link.txt", "pstp token import home --file link.txt"),
    ),
    "audit list": (
        "Show audit entries, oldest first.",
        ("pstp audit list --since 1h", "pstp audit list --peer phone --kind exec --json"),
    ),
    "audit verify": (
        "Check the audit log's hash chain from the first row to the last; exit 1 naming "
        "the first bad row. With --expect, also check that a head kept elsewhere is still "
        "part of the chain.",
        ("pstp audit verify", "pstp audit verify --expect 1234:9f2c..."),
    ),
    "audit head": (
        "Print SEQ:HASH of the newest row. Keep it on another machine: a later "
        "`pstp audit verify --expect SEQ:HASH` detects a rewrite of the history before it.",
        ("pstp audit head >> ~/audit-heads.txt",),
    ),
    "exec": (
        "",
        (
            "pstp exec home -- uptime",
            "pstp exec home --reason backup -- tar -C /srv -c . > srv.tar",
        ),
    ),
    "forward": (
        "",
        (
            "pstp forward home 8080:camera.local:80",
            "pstp forward -R 2222:localhost:22 home",
        ),
    ),
    "shell": (
        "Open an interactive shell on PEER. A terminal (PTY) is used when standard input "
        "is one; exits with the shell's status.",
        ("pstp shell home", "echo 'uname -a' | pstp shell home"),
    ),
    "run": (
        "Run one of PEER's declared actions with typed arguments; exits with its status.",
        ('pstp run home lights.on level=40 --reason "movie night"',),
    ),
    "discover": ("", ("pstp discover", "pstp discover --timeout 3 --json")),
    "doctor": ("", ("pstp doctor", "pstp doctor home")),
    "put": (
        "",
        (
            "pstp put home notes.txt /srv/share/",
            "pstp put home photos/ /srv/share/photos --limit 5M",
        ),
    ),
    "get": (
        "",
        ("pstp get home /srv/share/notes.txt .", "pstp get home /srv/share/photos ./photos"),
    ),
    "demo": ("", ("pstp demo",)),
}


def _lazy(module: str, name: str) -> Command:
    def call(args: argparse.Namespace, console: Console) -> int:
        import importlib

        func: Command = getattr(importlib.import_module(module), name)
        return func(args, console)

    return call


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Run the CLI and return its exit status.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
        console: where to write (default: the process's stdout/stderr).

    Returns:
        The exit status of :data:`EXIT_TABLE`: for ``exec``, ``run`` and
        ``shell`` the remote one, or 255 for a failure of pstp itself.
    """
    console = console or Console()
    words = sys.argv[1:] if argv is None else list(argv)
    if words == ["--version"]:  # the one answer that needs no parser (start-up time)
        console.print(f"pstp {__version__}")
        return EXIT_OK
    parser = build_parser()
    args = parser.parse_args(words)
    if args.command is None:
        parser.print_help(console.out)
        return EXIT_USAGE
    console.quiet = bool(args.quiet)
    if args.verbose or args.quiet:
        import logging

        logging.basicConfig(
            level=(
                logging.ERROR
                if args.quiet and not args.verbose
                else logging.DEBUG
                if args.verbose > 1
                else logging.INFO
            ),
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
            stream=console.err,
        )
    try:
        return int(args.func(args, console))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OutputClosed:
        return _output_closed(console)
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_gone(console):
            return _output_closed(console)
        status = _report(exc, console, args)
        return EXIT_REMOTE if args.command in PASSTHROUGH and status != EXIT_OK else status


def _stdout_gone(console: Console) -> bool:
    """Whether standard output is a pipe whose reader has gone (poll says POLLERR)."""
    import select

    try:
        fd = console.out.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poll.poll(0))


def _output_closed(console: Console) -> int:
    """End quietly: point stdout at /dev/null so the exit-time flush fails no more."""
    import os

    try:
        fd = console.out.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass
    return EXIT_PIPE


def _report(exc: Exception, console: Console, args: argparse.Namespace) -> int:
    """Say what failed in a line on stderr; its status for commands without passthrough."""
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
        console.error(
            f"handshake failed: {exc} (check the pair key and the device id; a token "
            "may have expired, been used up or been revoked)"
        )
        return EXIT_PROTOCOL
    if isinstance(exc, ProtocolError):
        console.error(f"protocol error: {exc}")
        return EXIT_PROTOCOL
    if isinstance(exc, ChannelError):
        console.error(f"refused: {exc.reason}" if exc.reason else str(exc))
        return EXIT_NO
    if isinstance(exc, ConnectionClosed):
        console.error(str(exc))
        return EXIT_CONNECTION
    if isinstance(exc, OSError) and _listening(args):
        console.error(f"cannot serve: {_bind_reason(exc)}")
        return EXIT_CONNECTION
    if isinstance(exc, (OSError, TimeoutError)):
        from pstp.client.quick import os_reason

        console.error(f"connection failed: {os_reason(exc)}")
        return EXIT_CONNECTION
    if isinstance(exc, PstpError):
        console.error(str(exc))
        return EXIT_CONNECTION
    if isinstance(exc, ValueError):
        console.error(str(exc))
        return EXIT_USAGE
    raise exc


def _listening(args: argparse.Namespace) -> bool:
    """Whether the command binds a listening socket (an OSError is then a bind error)."""
    return bool(args.command == "serve" or (args.command == "pair" and args.allow))


def _bind_reason(exc: OSError) -> str:
    """A bind failure in words, with the likely fix."""
    import errno

    hints = {
        errno.EADDRINUSE: "another program (a running `pstp serve`?) uses this port",
        errno.EADDRNOTAVAIL: "the address is not one of this host's: fix [device] listen",
        errno.EACCES: "ports below 1024 need privileges: use a port above 1023",
    }
    hint = hints.get(exc.errno or 0)
    return f"{exc}" + (f" ({hint})" if hint else "")
