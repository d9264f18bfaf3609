"""``pstp policy check PEER WHAT``: could this happen, and if not, why not?

Examples::

    pstp policy check phone action kettle.on temp=80 --reason "coming home"
    pstp policy check phone exec -- systemctl status nginx --at 2026-11-22T03:00
    pstp policy check phone file /srv/share/notes.txt --write
    pstp policy check phone forward camera.local:80
    pstp policy check phone shell
    pstp policy check phone session

Prints ``allow`` or ``deny``, the rule that decided and why; exits 0 when
allowed, 1 when denied and 2 on usage errors.  The check is the pure
:meth:`pstp.daemon.policy.Policy.check`: no rate-limit tokens are spent, and
``session`` counts no open sessions.

For ``exec``, an argument matched by a path pattern of the allow-list (an
absolute-path glob such as ``"/srv/share/*"``) is resolved on the file system
of the machine running the check, symbolic links followed, as the daemon does
(:meth:`pstp.daemon.policy.ExecRule.confine`): one that leaves the pattern is
denied, and when resolving changed an argument a ``runs:`` line shows the argv
that would run.

For ``exec``, pstp's own ``--at`` and ``--reason`` may follow the command:
they are taken from the end of the command line unless already given before
it (``pstp policy check phone --at T exec -- cmd --at x`` checks ``cmd --at x``).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import TYPE_CHECKING

from pstp.cli.common import load_settings

if TYPE_CHECKING:
    from pstp.cli.main import Console
    from pstp.daemon.policy import Decision, Request

__all__ = ["check"]

#: Exit codes of ``pstp policy check``.
EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_USAGE = 2

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def check(args: argparse.Namespace, console: Console) -> int:
    """Answer whether PEER may do WHAT at ``--at`` (default: now).

    Args:
        args: the parsed command line.
        console: where to print.

    Returns:
        0 if allowed, 1 if denied, 2 on a usage error.

    Raises:
        ConfigError: the configuration or its policy is invalid.
    """
    from pstp.daemon.policy import ExecRequest, Policy

    try:
        request, at = _request(args)
    except ValueError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    policy = Policy.from_settings(load_settings(args))
    decision = policy.check(args.peer, request, at=at)
    if args.json:
        console.print(
            json.dumps(
                {
                    "allowed": decision.allowed,
                    "rule": decision.rule,
                    "reason": decision.reason,
                    "args": decision.args,
                    "argv": None if decision.argv is None else list(decision.argv),
                    "at": at.isoformat(),
                }
            )
        )
        return EXIT_ALLOWED if decision.allowed else EXIT_DENIED
    _show(console, decision, at)
    if (
        isinstance(request, ExecRequest)
        and decision.argv is not None
        and list(decision.argv) != request.argv
    ):
        console.print(f"  runs:   {json.dumps(list(decision.argv))} (paths resolved)")
    return EXIT_ALLOWED if decision.allowed else EXIT_DENIED


def _request(args: argparse.Namespace) -> tuple[Request, datetime]:
    """The request and the moment described by the command line.

    Raises:
        ValueError: a malformed argument (the message says which).
    """
    from pstp.daemon import policy as p

    request: Request
    match args.what:
        case "action":
            request = p.ActionRequest(args.name, _assignments(args.assignments), _reason(args))
        case "exec":
            argv = _exec_argv(args)  # first: it may take --reason from the end
            request = p.ExecRequest(argv, _reason(args))
        case "shell":
            request = p.ShellRequest(_reason(args))
        case "session":
            if args.reason is not None:
                raise ValueError("--reason: sessions carry no reason")
            request = p.SessionRequest()
        case "file":
            request = p.FileRequest(args.path, args.write, _reason(args))
        case "forward":
            try:
                host, port = p.parse_target(args.target)
            except ValueError as exc:
                raise ValueError(f"forward: {exc}") from None
            request = p.ForwardRequest(host, port, _reason(args))
        case _:  # pragma: no cover - argparse allows only the choices above
            raise ValueError(f"unknown request kind {args.what!r}")
    return request, _moment(args.at)


def _reason(args: argparse.Namespace) -> str:
    return str(args.reason or "")


def _exec_argv(args: argparse.Namespace) -> list[str]:
    """The command after ``exec``, with trailing ``--at``/``--reason`` taken as pstp's own."""
    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    while True:
        for dest in ("at", "reason"):
            flag = f"--{dest}"
            if getattr(args, dest) is not None:
                continue
            if len(argv) >= 3 and argv[-2] == flag:
                setattr(args, dest, argv[-1])
                argv = argv[:-2]
                break
            if len(argv) >= 2 and argv[-1].startswith(flag + "="):
                setattr(args, dest, argv[-1].partition("=")[2])
                argv = argv[:-1]
                break
        else:
            break
    if not argv:
        raise ValueError("exec: give the command after --, e.g. exec -- uptime")
    return argv


def _assignments(items: list[str]) -> dict[str, object]:
    """``ARG=VALUE`` words as a dict of strings (the policy coerces them)."""
    values: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"action arguments are ARG=VALUE, not {item!r}")
        if name in values:
            raise ValueError(f"argument {name!r} given twice")
        values[name] = value
    return values


def _moment(text: str | None) -> datetime:
    """``--at`` as a datetime (naive: local time), or now."""
    if text is None:
        return datetime.now().astimezone()
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--at: {text!r} is not an ISO date and time such as 2026-11-22T03:00"
        ) from None


def _show(console: Console, decision: Decision, at: datetime) -> None:
    local = at if at.tzinfo is None else at.astimezone()
    console.print("allow" if decision.allowed else "deny")
    console.print(f"  rule:   {decision.rule}")
    console.print(f"  reason: {decision.reason}")
    if decision.args:
        shown = " ".join(f"{k}={json.dumps(v)}" for k, v in decision.args.items())
        console.print(f"  args:   {shown}")
    console.print(f"  at:     {_DAY_NAMES[local.weekday()]} {local:%Y-%m-%d %H:%M} (local time)")
