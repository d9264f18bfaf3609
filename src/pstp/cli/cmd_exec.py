"""``pstp exec``, ``pstp run`` and ``pstp shell``: remote commands, actions and shells.

Each exits with the remote status, as ssh does: the command's exit code,
128 + n if signal n killed it, 124 if an action timed out, 127/126 if the
command could not be found or run, 255 if the peer failed otherwise.
"""

from __future__ import annotations

import argparse
import codecs
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from pstp.cli.common import load_settings, run
from pstp.cli.main import EXIT_REMOTE, Console
from pstp.settings import Settings

if TYPE_CHECKING:
    from pstp.protocol.kinds import ActionInfo, ArgInfo

__all__ = [
    "actions_table",
    "exec_command",
    "parse_assignments",
    "run_command",
    "shell_command",
    "split_command",
]


def _known(settings: Settings, peer: str, console: Console) -> bool:
    if peer in settings.peers:
        return True
    console.error(f"no peer {peer!r} in {settings.path} (pair first: pstp pair HOST)")
    return False


def _binary(stream: TextIO) -> Callable[[bytes], None]:
    """Write bytes to a text stream: to its binary buffer if it has one, else decoded."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:

        def write_bytes(data: bytes) -> None:
            stream.flush()
            buffer.write(data)
            buffer.flush()

        return write_bytes
    decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write_text(data: bytes) -> None:
        stream.write(decoder.decode(data))
        stream.flush()

    return write_text


_EXEC_OPTIONS = {"--reason": "reason", "--address": "address"}
_EXEC_FLAGS = {"-n": "no_stdin", "--no-stdin": "no_stdin"}


def split_command(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """Take the options written after PEER out of ``rest``; return the command.

    argparse hands over everything after PEER (so that the command's own
    options are never taken for ours).  Our options may still come first:
    ``pstp exec PEER --reason TEXT -- CMD ARGS``; without ``--`` the command
    starts at the first word that is not one of our options.

    Raises:
        ValueError: an option lacks its value, or no command is given.
    """
    i = 0
    while i < len(rest):
        word = rest[i]
        name, eq, value = word.partition("=")
        if word == "--":
            i += 1
            break
        if name in _EXEC_OPTIONS:
            if not eq:
                if i + 1 >= len(rest):
                    raise ValueError(f"{word} needs a value")
                i += 1
                value = rest[i]
            setattr(args, _EXEC_OPTIONS[name], value)
        elif word in _EXEC_FLAGS:
            setattr(args, _EXEC_FLAGS[word], True)
        else:
            break
        i += 1
    command = rest[i:]
    if not command:
        raise ValueError("no command given (pstp exec PEER [--reason TEXT] -- CMD ARGS...)")
    return command


def exec_command(args: argparse.Namespace, console: Console) -> int:
    """Run ``CMD ARGS...`` on PEER, streaming this process's stdin, stdout and stderr."""
    from pstp.client.api import connect_peer
    from pstp.client.remote import iter_fd, run_exec

    try:
        argv = split_command(args, list(args.argv))
    except ValueError as exc:
        console.error(str(exc))
        return EXIT_REMOTE  # a failure of pstp itself, never a remote status
    settings = load_settings(args)
    if not _known(settings, args.peer, console):
        return EXIT_REMOTE  # a failure of pstp itself, never a remote status

    async def main() -> int:
        async with await connect_peer(settings, args.peer, address=args.address) as session:
            return await run_exec(
                session,
                argv,
                stdin=None if args.no_stdin else iter_fd(0),
                stdout=_binary(console.out),
                stderr=_binary(console.err),
                reason=args.reason,
            )

    return run(main())


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` → ``{"a": "1", "b": "x=y"}``.

    Raises:
        ValueError: an item has no ``=`` or an empty name.
    """
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ValueError(f"argument {item!r} is not NAME=VALUE")
        out[name] = value
    return out


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds(arg: ArgInfo) -> str:
    parts = []
    if arg.min is not None and arg.max is not None:
        parts.append(f"{_number(arg.min)}..{_number(arg.max)}")
    elif arg.min is not None:
        parts.append(f">= {_number(arg.min)}")
    elif arg.max is not None:
        parts.append(f"<= {_number(arg.max)}")
    if arg.choices is not None:
        parts.append("one of " + ", ".join(json.dumps(c) for c in arg.choices))
    if arg.pattern is not None:
        parts.append(f"matching {json.dumps(arg.pattern)}")
    if arg.max_len is not None:
        parts.append(f"at most {arg.max_len} characters")
    return "; ".join(parts) or "-"


def _default(arg: ArgInfo) -> str:
    if arg.required:
        return "(required)"
    if arg.default is None:
        return "(optional)"
    if isinstance(arg.default, (bool, str)):
        return json.dumps(arg.default)
    return _number(arg.default)


def actions_table(actions: Sequence[ActionInfo]) -> list[str]:
    """The lines ``pstp run PEER`` prints: one row per argument, in aligned columns."""
    rows = [("ACTION", "ARGUMENT", "TYPE", "BOUNDS", "DEFAULT", "DESCRIPTION")]
    for action in actions:
        described = action.description.replace("\n", " ")
        if not action.args:
            rows.append((action.name, "-", "-", "-", "-", described))
        for i, arg in enumerate(action.args):
            rows.append(
                (
                    action.name if i == 0 else "",
                    arg.name,
                    arg.type,
                    _bounds(arg),
                    _default(arg),
                    described if i == 0 else "",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return [
        "  ".join([*(row[i].ljust(widths[i]) for i in range(5)), row[5]]).rstrip() for row in rows
    ]


def _list_actions(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    """``pstp run PEER`` without an action: what PEER lets us run, as a table or JSON."""
    import msgspec

    from pstp.client.api import connect_peer
    from pstp.client.remote import list_actions
    from pstp.exceptions import ChannelError
    from pstp.wire.messages import ChannelCode

    async def main() -> list[ActionInfo] | None:
        async with await connect_peer(settings, args.peer, address=args.address) as session:
            try:
                return await list_actions(session, reason=args.reason)
            except ChannelError as exc:
                if exc.code != ChannelCode.UNKNOWN_KIND:
                    raise
                console.error(
                    f"{args.peer} does not list its actions (its pstp is older); "
                    f"name one: pstp run {args.peer} ACTION [ARG=VALUE ...]"
                )
                return None

    listing = run(main())
    if listing is None:
        return 255  # a failure of pstp itself, never a remote status
    if getattr(args, "json", False):
        console.print(json.dumps(msgspec.to_builtins(listing), ensure_ascii=False))
    elif not listing:
        console.print(f"{args.peer} lets this device run no action")
    else:
        for line in actions_table(listing):
            console.print(line)
    return 0


def run_command(args: argparse.Namespace, console: Console) -> int:
    """Run the configured action ACTION on PEER with NAME=VALUE arguments.

    Without ACTION, list the actions PEER lets this device run, with their
    arguments (``--json``: as JSON).

    :func:`pstp.client.quick.run_peer_action` chooses the driver: the blocking
    one when there is an address to try, which makes a one-shot ``pstp run``
    start faster; asyncio for discovery, when needed.
    """
    from pstp.client import quick

    settings = load_settings(args)
    if not _known(settings, args.peer, console):
        return EXIT_REMOTE  # a failure of pstp itself, never a remote status
    if args.action is None:
        return _list_actions(args, settings, console)
    if "=" in args.action:
        console.error(f"{args.action!r} is not an action name (pstp run PEER ACTION ARG=VALUE...)")
        return 255  # a failure of pstp itself, never a remote status
    try:
        values = parse_assignments(args.assignments)
    except ValueError as exc:
        console.error(str(exc))
        return EXIT_REMOTE  # a failure of pstp itself, never a remote status
    return quick.run_peer_action(
        settings,
        args.peer,
        args.action,
        values,
        reason=args.reason,
        address=args.address,
        stdout=_binary(console.out),
        stderr=_binary(console.err),
    )


def shell_command(args: argparse.Namespace, console: Console) -> int:
    """A shell on PEER: on this terminal, or reading standard input to its end.

    As ssh: a remote terminal only if standard input is a terminal, unless
    ``-t`` (always) or ``-T`` (never) says otherwise.
    """
    from pstp.client.api import connect_peer
    from pstp.client.remote import run_shell

    settings = load_settings(args)
    if not _known(settings, args.peer, console):
        return EXIT_REMOTE  # a failure of pstp itself, never a remote status

    async def main() -> int:
        async with await connect_peer(settings, args.peer, address=args.address) as session:
            return await run_shell(session, reason=args.reason, pty=getattr(args, "pty", None))

    return run(main())
