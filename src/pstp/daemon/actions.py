"""Named actions declared in the configuration, served on ``action`` channels.

Configuration::

    [actions."gate.open"]
    argv = ["/usr/local/bin/gate", "open", "--for={seconds}s"]
    timeout = 10              # seconds (default 30); then killed, exit status 124
    max_output = 65536        # bytes of stdout + stderr (default 1 MiB); the rest is cut
    args = { seconds = { type = "int", min = 1, max = 600 } }   # for the policy engine

    [actions."lamp.set"]
    call = "home_automation.lamp:set_level"   # a Python callable, sync or async

An action has either ``argv`` or ``call``.  In ``argv``, ``{name}``
placeholders are replaced by argument values, as whole elements or as parts
of one (``"--for={seconds}s"``), by string substitution only: the result
goes to ``execve``, never to a shell, so a value stays one argument whatever
characters it holds.  ``{{`` and ``}}`` stand for literal braces.  Only
plain ``{name}`` is allowed (no attribute access, index, conversion or
format spec).  Values are written as ``str(value)``, booleans as ``true`` /
``false``.

A ``call`` action names ``module:function`` (``module:Class.method`` works
too).  It is called with the arguments as keyword arguments; a plain
function runs in a worker thread (a timeout then stops waiting for it but
cannot stop the thread), a coroutine function on the event loop.  It returns
an exit status, or ``(status, output_bytes)``; ``None`` counts as 0.

``args`` describes the arguments for the policy engine, which checks and
coerces them; this module only carries it.  If ``args`` is given, every
placeholder must be one of its keys.

The ``action`` channel: OPEN params ``{"name": str, "reason": str | nil,
"arg.<name>": value, ...}``.  Output travels as STDOUT/STDERR stream frames
and the channel closes with the exit status (see :mod:`pstp.daemon.exec`
for the frames and error reasons).  Standard input is /dev/null; SIGNAL
frames reach an argv action's process group.

The ``actions`` channel (docs/protocol.md §17.12) lists the actions the peer's
policy lets it run now, with their arguments' schemas: one MessagePack array
(:func:`pstp.protocol.kinds.encode_listing`), then CLOSE with status 0.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pstp.asyncio.connection import Channel, ChannelHandler
from pstp.daemon.exec import (
    ACTION_FAILED,
    BAD_PARAMS,
    NO_SUCH_ACTION,
    STDOUT,
    TIMEOUT_STATUS,
    FrameWriter,
    fail_channel,
    run_process,
)
from pstp.daemon.files import Recorder
from pstp.daemon.policy import ActionRequest, Policy
from pstp.daemon.policy.model import ArgSpec
from pstp.exceptions import PstpError
from pstp.protocol.connection import Connection
from pstp.protocol.kinds import (
    LISTING_MAX,
    ActionInfo,
    ActionOpen,
    ActionsOpen,
    ArgInfo,
    BadParams,
    action_args,
    encode_listing,
)
from pstp.settings import ConfigError, Settings
from pstp.wire.messages import ChannelCode

__all__ = [
    "ACTIONS_CHANNEL",
    "ACTION_CHANNEL",
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_TIMEOUT",
    "TIMEOUT_STATUS",
    "ActionSpec",
    "GetArgs",
    "action_handler",
    "actions_list_handler",
    "allowed_actions",
    "load_actions",
    "raw_args",
    "resolve_callable",
]

_log = logging.getLogger("pstp.daemon.actions")

#: The channel kind that runs actions.
ACTION_CHANNEL = "action"
#: The channel kind that lists the actions a peer may run (§17.12).
ACTIONS_CHANNEL = "actions"
#: What a listing is refused with when its audit row cannot be written.
_LISTING_AUDIT_DOWN = "the device cannot write its audit log, so it lists nothing now"
#: Seconds an action may run.
DEFAULT_TIMEOUT = 30.0
#: Bytes of output an action may send.
DEFAULT_MAX_OUTPUT = 1 << 20

_KEYS = frozenset({"argv", "call", "timeout", "max_output", "args", "description"})
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CALL_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
)

#: Gives an action channel's arguments, checked and coerced (the daemon's policy).
GetArgs = Callable[[Channel], Mapping[str, object]]


def _parse_template(item: str) -> list[tuple[str, str | None]]:
    """Split one argv element into (literal, placeholder-or-None) pieces.

    Raises:
        ValueError: anything but plain ``{name}`` placeholders.
    """
    pieces: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in string.Formatter().parse(item):
        if name is None:
            pieces.append((literal, None))
            continue
        if spec or conversion or not _IDENT_RE.match(name):
            raise ValueError(f"placeholder {{{name}}} in {item!r} must be a plain {{name}}")
        pieces.append((literal, name))
    return pieces


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ValueError(f"argument of type {type(value).__name__} cannot be substituted")


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One configured action.

    Attributes:
        name: its name (the ``[actions."name"]`` key).
        argv: the command template, or ``None`` for a callable.
        call: ``"module:function"``, or ``None`` for a command.
        timeout: seconds it may run (then it is killed: status 124).
        max_output: bytes of output sent at most; the rest is cut and noted.
        args: the argument declarations, for the policy engine.
        description: free text for people.

    Raises:
        ValueError: neither or both of argv and call, a bad template or call
            name, a non-positive timeout or output cap.
    """

    name: str
    argv: tuple[str, ...] | None = None
    call: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_output: int = DEFAULT_MAX_OUTPUT
    args: dict[str, object] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if (self.argv is None) == (self.call is None):
            raise ValueError("an action needs exactly one of argv and call")
        if self.argv is not None:
            if not self.argv or not self.argv[0]:
                raise ValueError("argv must be a non-empty list of strings")
            names = self.placeholders  # also checks the syntax
            if "{" in self.argv[0] or "}" in self.argv[0]:
                raise ValueError("the program (argv[0]) cannot be a placeholder")
            unknown = names - set(self.args) if self.args else set()
            if unknown:
                raise ValueError(f"placeholders not declared in args: {', '.join(sorted(unknown))}")
        if self.call is not None and not _CALL_RE.match(self.call):
            raise ValueError('call must look like "package.module:function"')
        if not self.timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        if self.max_output < 0:
            raise ValueError("max_output must be a number of bytes >= 0")

    @property
    def placeholders(self) -> frozenset[str]:
        """The argument names the argv template uses."""
        names: set[str] = set()
        for item in self.argv or ():
            names.update(n for _, n in _parse_template(item) if n is not None)
        return frozenset(names)

    def render_argv(self, values: Mapping[str, object]) -> list[str]:
        """The argv with every placeholder replaced (string substitution only).

        Raises:
            ValueError: a placeholder has no value, or a value is not a string,
                number or boolean; or this action has no argv.
        """
        if self.argv is None:
            raise ValueError(f"action {self.name!r} has no argv")
        out = []
        for item in self.argv:
            parts = []
            for literal, name in _parse_template(item):
                parts.append(literal)
                if name is not None:
                    if name not in values:
                        raise ValueError(f"missing argument {name!r}")
                    parts.append(_format_value(values[name]))
            out.append("".join(parts))
        return out


def load_actions(settings: Settings) -> dict[str, ActionSpec]:
    """The ``[actions."name"]`` tables of the configuration.

    Raises:
        ConfigError: a table is invalid (the message names the key).
    """
    tables = settings.data.get("actions", {})
    path = settings.path

    if not isinstance(tables, dict):
        raise ConfigError(path, 'must be a table of [actions."name"] tables', key="actions")
    actions: dict[str, ActionSpec] = {}
    for name, table in tables.items():
        key = f"actions.{name}"

        def err(message: str, sub: str | None = None, key: str = key) -> ConfigError:
            return ConfigError(path, message, key=f"{key}.{sub}" if sub else key)

        if not isinstance(table, dict):
            raise err("must be a table")
        extra = set(table) - _KEYS
        if extra:
            raise err(
                f"unknown key(s) {', '.join(sorted(extra))} (known: {', '.join(sorted(_KEYS))})"
            )
        argv = table.get("argv")
        if argv is not None and (
            not isinstance(argv, list) or not all(isinstance(a, str) for a in argv)
        ):
            raise err("must be a list of strings", "argv")
        call = table.get("call")
        if call is not None and not isinstance(call, str):
            raise err('must be a "module:function" string', "call")
        timeout = table.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise err("must be a number of seconds", "timeout")
        max_output = table.get("max_output", DEFAULT_MAX_OUTPUT)
        if isinstance(max_output, bool) or not isinstance(max_output, int):
            raise err("must be a number of bytes", "max_output")
        args = table.get("args", {})
        if not isinstance(args, dict):
            raise err("must be a table of argument declarations", "args")
        description = table.get("description", "")
        if not isinstance(description, str):
            raise err("must be a string", "description")
        try:
            actions[name] = ActionSpec(
                name,
                tuple(argv) if argv is not None else None,
                call,
                float(timeout),
                max_output,
                dict(args),
                description,
            )
        except ValueError as exc:
            raise err(str(exc)) from exc
    return actions


def resolve_callable(spec: ActionSpec) -> Callable[..., object]:
    """Import the function a ``call`` action names.

    Raises:
        ImportError: the module cannot be imported.
        AttributeError: it has no such attribute.
        TypeError: the attribute is not callable, or the action has no ``call``.
    """
    if spec.call is None:
        raise TypeError(f"action {spec.name!r} is not a callable action")
    module_name, _, attr = spec.call.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec.call} is not callable")
    return obj


def raw_args(channel: Channel) -> dict[str, object]:
    """The ``arg.<name>`` OPEN params as ``{name: value}``, unchecked (the default)."""
    return action_args(channel.params)


def _status(value: int) -> int:
    # An exit status is a byte, as for a process: anything else would not fit the
    # CLOSE message (§14.4) and must not end the peer's session.
    if not 0 <= value <= 255:
        raise TypeError(f"an action returned status {value}, not 0..255")
    return value


def _result(value: object) -> tuple[int, bytes]:
    if value is None:
        return 0, b""
    if isinstance(value, int) and not isinstance(value, bool):
        return _status(value), b""
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], (bytes, bytearray))
    ):
        return _status(value[0]), bytes(value[1])
    raise TypeError(f"an action returned {type(value).__name__}, not int or (int, bytes)")


async def _run_callable(
    channel: Channel, spec: ActionSpec, values: dict[str, object]
) -> int | None:
    try:
        func = resolve_callable(spec)
    except (ImportError, AttributeError, TypeError):
        _log.exception("action %r: cannot load %s", spec.name, spec.call)
        await fail_channel(channel, ACTION_FAILED)
        return None
    writer = FrameWriter(channel, spec.max_output)

    async def call() -> object:
        if inspect.iscoroutinefunction(func):
            result: object = await func(**values)
        else:
            result = await asyncio.to_thread(func, **values)
        if inspect.isawaitable(result):
            result = await result
        return result

    try:
        async with asyncio.timeout(spec.timeout) as deadline:
            status, output = _result(await call())
    except TimeoutError:
        if not deadline.expired():
            _log.exception("action %r failed", spec.name)
            await fail_channel(channel, ACTION_FAILED)
            return None
        await writer.note(f"pstp: timed out after {spec.timeout:g} s\n")
        return TIMEOUT_STATUS
    except Exception:
        # The exception's text stays here: it may say things the peer must not see.
        _log.exception("action %r failed", spec.name)
        await fail_channel(channel, ACTION_FAILED)
        return None
    if output:
        await writer.send(STDOUT, output)
    return status


def action_handler(
    actions: Mapping[str, ActionSpec], get_args: GetArgs | None = None
) -> ChannelHandler:
    """A handler for ``action`` channels running the configured ``actions``.

    Args:
        actions: the actions by name (from :func:`load_actions`).
        get_args: gives a channel's arguments as the action will get them; the
            daemon passes its policy's checked and coerced values.  Default:
            :func:`raw_args`.  It may raise ``ValueError``, ``TypeError``,
            ``KeyError`` or a ``PstpError`` to refuse them.

    Returns:
        The handler; it returns the action's exit status (124 on timeout).
    """
    args_of: GetArgs = get_args or raw_args

    async def handle(channel: Channel) -> int | None:
        name = channel.params.get("name")
        spec = actions.get(name) if isinstance(name, str) else None
        if spec is None:
            await fail_channel(channel, f"{NO_SUCH_ACTION}: {name}", 127, ChannelCode.NOT_FOUND)
            return None
        try:
            ActionOpen.from_params(channel.params)
        except BadParams as exc:
            await fail_channel(channel, exc.reason, code=exc.code)
            return None
        try:
            values = dict(args_of(channel))
            argv = spec.render_argv(values) if spec.argv is not None else None
        except (ValueError, TypeError, KeyError, PstpError) as exc:
            _log.info("action %r: arguments refused: %s", spec.name, exc)
            await fail_channel(
                channel, f"{BAD_PARAMS}: invalid or missing arguments", code=ChannelCode.BAD_PARAMS
            )
            return None
        if argv is None:
            return await _run_callable(channel, spec, values)
        return await run_process(
            channel, argv, stdin=False, timeout=spec.timeout, max_output=spec.max_output
        )

    return handle


# -- the listing ------------------------------------------------------------------


def _arg_info(spec: ArgSpec) -> ArgInfo:
    return ArgInfo(
        name=spec.name,
        type=spec.type,
        required=spec.required,
        default=spec.default,
        min=spec.min,
        max=spec.max,
        max_len=spec.max_len if spec.type == "str" else None,
        choices=list(spec.choices) if spec.choices is not None else None,
        pattern=spec.pattern.pattern if spec.pattern is not None else None,
    )


def allowed_actions(
    policy: Policy,
    peer: str,
    actions: Mapping[str, ActionSpec],
    *,
    at: datetime,
    reason: str = "",
) -> list[ActionInfo]:
    """The declared actions ``policy`` lets ``peer`` run at ``at``, by name (§17.12).

    Each action is judged as a request to run it without arguments, with
    ``reason`` (or, when there is none, a stand-in: listing runs nothing, so
    ``require_reason`` does not hide what could be run with one).  Arguments
    are judged last (§17.10), so a refusal that names the action's ``args``
    means the action itself is allowed: it is listed.  Nothing is spent.

    Args:
        policy: the current policy.
        peer: the authenticated peer.
        actions: the actions this device can run (their descriptions are listed).
        at: the moment to judge (expiry, time windows).
        reason: the listing's reason ("" for none).

    Returns:
        One :class:`ActionInfo` per allowed action, in name order, its
        arguments in name order.
    """
    listed: list[ActionInfo] = []
    for name in sorted(set(policy.actions) & set(actions)):
        schema = policy.actions[name]
        request = ActionRequest(name, {}, reason or "listing the actions it may run")
        decision = policy.check(peer, request, at=at)
        if not decision.allowed and not decision.rule.startswith(f"{schema.key}.args"):
            continue
        args = [_arg_info(schema.args[arg]) for arg in sorted(schema.args)]
        listed.append(ActionInfo(name=name, description=actions[name].description, args=args))
    return listed


def actions_list_handler(
    policy: Callable[[], Policy],
    actions: Mapping[str, ActionSpec],
    record: Recorder | None = None,
    narrow: Callable[[Connection, str], bool] | None = None,
) -> ChannelHandler:
    """A handler for ``actions`` channels: the listing of :func:`allowed_actions`.

    Args:
        policy: returns the current policy (it may be reloaded meanwhile).
        actions: the configured actions (the daemon's, updated on reload).
        record: writes the audit row (``Daemon._record``: false if it could not,
            and then nothing is listed).
        narrow: whether this session may also run the action named (a token's
            scope, docs/protocol.md §20.1); None: the policy alone decides.

    Returns:
        The handler; it returns 0 once the listing is sent.
    """

    async def handle(channel: Channel) -> int | None:
        try:
            opened = ActionsOpen.from_params(channel.params)
        except BadParams as exc:
            await fail_channel(channel, exc.reason, code=exc.code)
            return None
        peer = channel.connection.peer_id or "?"
        listing = allowed_actions(
            policy(), peer, actions, at=datetime.now().astimezone(), reason=opened.reason or ""
        )
        if narrow is not None:
            listing = [info for info in listing if narrow(channel.connection, info.name)]
        data = encode_listing(listing)
        names = [info.name for info in listing]
        if len(data) > LISTING_MAX:
            await fail_channel(
                channel,
                f"the listing is longer than {LISTING_MAX} bytes",
                code=ChannelCode.RESOURCE_LIMIT,
            )
            return None
        if record is not None:
            written = record(
                ACTIONS_CHANNEL,
                peer,
                "ok",
                reason=opened.reason,
                args={"kind": ACTIONS_CHANNEL},
                result={"exit_status": 0, "listed": names},
            )
            if written is False:  # what cannot be audited is not answered
                await fail_channel(channel, _LISTING_AUDIT_DOWN, code=ChannelCode.REFUSED)
                return None
        await channel.write(data)
        return 0

    return handle
