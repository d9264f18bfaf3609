"""Policy loading: the TOML ``[actions]`` and ``[peers.NAME.policy]`` tables, validated.

Every error names the key and, where it can be found, the line; the keys are
described in :mod:`pstp.daemon.policy`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from pathlib import Path, PurePath
from typing import Any

from pstp.daemon.policy.model import (
    DEFAULT_MAX_LEN,
    ActionSpec,
    ArgSpec,
    ExecRule,
    FileRoot,
    ForwardTarget,
    PeerPolicy,
    RateLimit,
    TimeWindow,
    has_glob,
    parse_pattern,
    show_value,
    toml_key,
)
from pstp.settings import ConfigError, line_of, reject_unknown_keys, schema_table

__all__ = [
    "read_policy",
]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ARG_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_HHMM_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_RATE_RE = re.compile(r"\s*([0-9]{1,9})\s*/\s*([a-z]+)\s*")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_POLICY_KEYS = schema_table("peers.NAME.policy").names()
_WHEN_KEYS = schema_table("peers.NAME.policy.when").names()
_FILES_KEYS = schema_table("peers.NAME.policy.files").names()
# Each type's keys; their union is schema_table('actions."NAME".args.ARG').names().
_ARG_KEYS: dict[str, tuple[str, ...]] = {
    "int": ("type", "default", "min", "max"),
    "float": ("type", "default", "min", "max"),
    "bool": ("type", "default"),
    "str": ("type", "default", "max_len", "pattern", "choices", "allow_dash"),
}


# --------------------------------------------------------------------------- loading


class _Loader:
    """Validates the configuration's policy parts, raising ConfigError with key and line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, message, key=key, line=self.line(key))

    def line(self, key: str) -> int | None:
        """The line of ``key`` or, failing that, of its nearest parent."""
        return line_of(self.text, key) if self.text else None

    def keys(self, key: str, table: Mapping[str, Any], allowed: Iterable[str]) -> None:
        reject_unknown_keys(self.path, self.text, key, table, tuple(allowed))

    def boolean(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def strings(self, key: str, value: object, what: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
            raise self.error(key, f"must be a list of {what}")
        return value

    def load(
        self, data: Mapping[str, Any]
    ) -> tuple[dict[str, ActionSpec], dict[str, PeerPolicy | None]]:
        actions = self.actions(data.get("actions", {}))
        peers_raw = data.get("peers", {})
        if not isinstance(peers_raw, Mapping):
            raise self.error("peers", "must be a table of [peers.NAME] tables")
        peers: dict[str, PeerPolicy | None] = {}
        for peer_id, table in peers_raw.items():
            raw = table.get("policy") if isinstance(table, Mapping) else None
            peers[peer_id] = None if raw is None else self.peer(peer_id, raw, actions)
        return actions, peers

    # ---- [actions]

    def actions(self, raw: object) -> dict[str, ActionSpec]:
        if not isinstance(raw, Mapping):
            raise self.error("actions", 'must be a table of [actions."NAME"] tables')
        actions = {}
        for name, table in raw.items():
            key = f"actions.{toml_key(name)}"
            if not _NAME_RE.fullmatch(name):
                raise self.error(
                    key,
                    "an action name is 1-64 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit",
                )
            if not isinstance(table, Mapping):
                raise self.error(key, "must be a table")
            if (
                table
                and "argv" not in table
                and "args" not in table
                and all(isinstance(v, Mapping) for v in table.values())
            ):
                first = f"{name}.{next(iter(table))}"
                raise self.error(
                    f"{key}.{toml_key(next(iter(table)))}",
                    f'holds only tables: quote dotted action names, e.g. [actions."{first}"]',
                )
            args = self.arg_specs(key, table.get("args", {}))
            leading: tuple[tuple[str, ...], ...] = ()
            if "argv" in table:
                leading = self.action_argv(f"{key}.argv", table["argv"], args)
            actions[name] = ActionSpec(name, args, leading)
        return actions

    def action_argv(
        self, key: str, value: object, args: Mapping[str, ArgSpec]
    ) -> tuple[tuple[str, ...], ...]:
        """Check the placeholders of ``argv``; return those that may begin an element."""
        argv = self.strings(key, value, "non-empty strings")
        if not argv:
            raise self.error(key, "must not be empty")
        leading = []
        for index, element in enumerate(argv):
            try:
                pieces = list(string.Formatter().parse(element))
            except ValueError as exc:
                raise self.error(
                    key, f"{show_value(element)}: {exc} (write {{{{ for a brace)"
                ) from None
            run: list[str] = []
            for literal, name, _, _ in pieces:
                if literal or name is None:
                    break
                run.append(name)
            if run and index > 0:  # argv[0] is the program, not read for options
                leading.append(tuple(run))
            for name in (f for _, f, _, _ in pieces if f is not None):
                if name not in args:
                    raise self.error(
                        key, f"the placeholder {{{name}}} names no argument declared in args"
                    )
        return tuple(leading)

    def arg_specs(self, key: str, raw: object) -> dict[str, ArgSpec]:
        key = f"{key}.args"
        if not isinstance(raw, Mapping):
            raise self.error(key, "must be a table of argument schemas")
        specs = {}
        for name, schema in raw.items():
            arg_key = f"{key}.{toml_key(name)}"
            if not _ARG_NAME_RE.fullmatch(name):
                raise self.error(arg_key, "an argument name is a Python-style identifier")
            if not isinstance(schema, Mapping):
                raise self.error(arg_key, 'must be a table such as { type = "int", max = 9 }')
            specs[name] = self.arg_spec(arg_key, name, schema)
        return specs

    def arg_spec(self, key: str, name: str, schema: Mapping[str, Any]) -> ArgSpec:
        kind = schema.get("type")
        if kind not in _ARG_KEYS:
            raise self.error(f"{key}.type", 'must be "int", "float", "bool" or "str"')
        self.keys(key, schema, _ARG_KEYS[kind])
        spec = ArgSpec(name, kind)
        if kind in ("int", "float"):
            bounds: dict[str, int | float] = {}
            for bound in ("min", "max"):
                value = schema.get(bound)
                if value is None:
                    continue
                bounds[bound] = self.number(f"{key}.{bound}", kind, value)
            low, high = bounds.get("min"), bounds.get("max")
            if low is not None and high is not None and low > high:
                raise self.error(f"{key}.max", f"is below min ({low})")
            spec = dataclasses.replace(spec, min=low, max=high)
        elif kind == "str":
            spec = self.str_spec(key, spec, schema)
        if "default" in schema:
            default = schema["default"]
            native = {"int": int, "float": int | float, "bool": bool, "str": str}[kind]
            if not isinstance(default, native) or (kind != "bool" and isinstance(default, bool)):
                raise self.error(f"{key}.default", f"must be of type {kind}")
            try:
                default = spec.coerce(default)
            except ValueError as exc:
                raise self.error(f"{key}.default", str(exc)) from None
            spec = dataclasses.replace(spec, default=default, required=False)
        return spec

    def number(self, key: str, kind: str, value: object) -> int | float:
        """``value`` as an ``int`` bound, or a finite ``float`` one."""
        if isinstance(value, int) and not isinstance(value, bool):
            if kind == "int":
                return value
            value = float(value) if abs(value) < 2**1023 else math.inf
        if kind == "float" and isinstance(value, float) and math.isfinite(value):
            return value
        raise self.error(key, f"must be {'an integer' if kind == 'int' else 'a finite number'}")

    def str_spec(self, key: str, spec: ArgSpec, schema: Mapping[str, Any]) -> ArgSpec:
        max_len = schema.get("max_len", DEFAULT_MAX_LEN)
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise self.error(f"{key}.max_len", "must be a positive integer")
        pattern = None
        if "pattern" in schema:
            if not isinstance(schema["pattern"], str):
                raise self.error(f"{key}.pattern", "must be a regular expression string")
            try:
                pattern = re.compile(schema["pattern"])
            except re.error as exc:
                raise self.error(f"{key}.pattern", f"invalid regular expression: {exc}") from None
        choices = None
        if "choices" in schema:
            raw = schema["choices"]
            if not isinstance(raw, list) or not raw or not all(isinstance(c, str) for c in raw):
                raise self.error(f"{key}.choices", "must be a non-empty list of strings")
            choices = tuple(raw)
        allow_dash = self.boolean(f"{key}.allow_dash", schema.get("allow_dash", False))
        return dataclasses.replace(
            spec, max_len=max_len, pattern=pattern, choices=choices, allow_dash=allow_dash
        )

    # ---- [peers.NAME.policy]

    def peer(self, peer_id: str, raw: object, actions: Mapping[str, ActionSpec]) -> PeerPolicy:
        key = f"peers.{toml_key(peer_id)}.policy"
        if not isinstance(raw, Mapping):
            raise self.error(key, f"must be a table: [{key}]")
        self.keys(key, raw, _POLICY_KEYS)
        policy = PeerPolicy(peer_id)
        changes: dict[str, Any] = {}
        if "actions" in raw:
            changes["actions"] = self.action_globs(f"{key}.actions", raw["actions"], actions)
        if "exec" in raw:
            changes["exec"] = self.exec_rules(f"{key}.exec", raw["exec"])
        for flag in ("shell", "require_reason"):
            if flag in raw:
                changes[flag] = self.boolean(f"{key}.{flag}", raw[flag])
        if "when" in raw:
            changes["when"] = self.windows(f"{key}.when", raw["when"])
        if "expires" in raw:
            changes["expires"] = self.expires(f"{key}.expires", raw["expires"])
        if "rate" in raw:
            changes["rate"] = self.rate(f"{key}.rate", raw["rate"])
        if "max_sessions" in raw:
            value = raw["max_sessions"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.error(f"{key}.max_sessions", "must be an integer, 0 or more")
            changes["max_sessions"] = value
        if "files" in raw:
            changes["files"] = self.files(f"{key}.files", raw["files"])
        if "forward" in raw:
            changes["forward"] = self.forward(f"{key}.forward", raw["forward"])
        if "forward_listen" in raw:
            changes["forward_listen"] = self.forward(
                f"{key}.forward_listen", raw["forward_listen"], listen=True
            )
        return dataclasses.replace(policy, **changes)

    def action_globs(
        self, key: str, value: object, actions: Mapping[str, ActionSpec]
    ) -> tuple[str, ...]:
        globs = self.strings(key, value, "action names or globs")
        for i, glob in enumerate(globs):
            if not has_glob(glob) and glob not in actions:
                declared = ", ".join(actions) or "none"
                raise self.error(
                    f"{key}[{i}]",
                    f"{show_value(glob)} names no declared action (declared: {declared})",
                )
        return tuple(globs)

    def exec_rules(self, key: str, value: object) -> tuple[ExecRule, ...]:
        if not isinstance(value, list):
            raise self.error(key, 'must be a list of argv lists, e.g. [["uptime"]]')
        rules = []
        for i, entry in enumerate(value):
            if (
                not isinstance(entry, list)
                or not entry
                or not all(isinstance(a, str) for a in entry)
            ):
                raise self.error(f"{key}[{i}]", "must be a non-empty list of strings")
            if any("\x00" in a for a in entry):
                raise self.error(f"{key}[{i}]", "contains a NUL character")
            try:
                rules.append(ExecRule(tuple(entry), f"{key}[{i}]"))
            except ValueError as exc:
                raise self.error(f"{key}[{i}]", str(exc)) from None
        return tuple(rules)

    def windows(self, key: str, value: object) -> tuple[TimeWindow, ...]:
        if not isinstance(value, list) or not value:
            raise self.error(
                key, "must be a non-empty list of { days, from, to } tables (omit it for any time)"
            )
        windows = []
        for i, item in enumerate(value):
            item_key = f"{key}[{i}]"
            if not isinstance(item, Mapping):
                raise self.error(item_key, 'must be a table like { from = "07:00", to = "22:00" }')
            self.keys(item_key, item, _WHEN_KEYS)
            days = frozenset(range(7))
            if "days" in item:
                names = item["days"]
                if (
                    not isinstance(names, list)
                    or not names
                    or not all(isinstance(d, str) and d.lower() in _DAYS for d in names)
                ):
                    raise self.error(
                        f"{item_key}.days", f"must be a non-empty list of {', '.join(_DAYS)}"
                    )
                days = frozenset(_DAYS.index(d.lower()) for d in names)
            start = self.minute(f"{item_key}.from", item.get("from", "00:00"))
            end = self.minute(f"{item_key}.to", item.get("to", "23:59"))
            if start == end:
                raise self.error(
                    f"{item_key}.to", "equals from; omit from and to for the whole day"
                )
            windows.append(TimeWindow(days, start, end))
        return tuple(windows)

    def minute(self, key: str, value: object) -> int:
        if isinstance(value, time) and not (value.second or value.microsecond or value.tzinfo):
            return value.hour * 60 + value.minute
        if isinstance(value, str) and (m := _HHMM_RE.fullmatch(value.strip())):
            return int(m[1]) * 60 + int(m[2])
        hint = ' (use "23:59" for the end of the day)' if value == "24:00" else ""
        raise self.error(key, f'must be a time "HH:MM" from "00:00" to "23:59"{hint}')

    def expires(self, key: str, value: object) -> datetime:
        if isinstance(value, datetime):
            return value
        if isinstance(value, date):
            return datetime.combine(value, time())
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.strip())
            except ValueError:
                pass
        raise self.error(key, "must be a TOML datetime such as 2027-01-01T00:00:00Z")

    def rate(self, key: str, value: object) -> RateLimit:
        m = _RATE_RE.fullmatch(value.lower()) if isinstance(value, str) else None
        if m is None or m[2] not in _PERIODS or int(m[1]) < 1:
            raise self.error(key, 'must be "N/sec", "N/min" or "N/hour" with N at least 1')
        assert isinstance(value, str)
        return RateLimit(int(m[1]), _PERIODS[m[2]], value.strip())

    def files(self, key: str, value: object) -> tuple[FileRoot, ...]:
        if not isinstance(value, list):
            raise self.error(key, 'must be a list of { root = "/path", write = false } tables')
        roots: list[FileRoot] = []
        for i, item in enumerate(value):
            item_key = f"{key}[{i}]"
            if not isinstance(item, Mapping):
                raise self.error(item_key, 'must be a table like { root = "/srv/share" }')
            self.keys(item_key, item, _FILES_KEYS)
            root = item.get("root")
            if not isinstance(root, str) or "\x00" in root or not PurePath(root).is_absolute():
                raise self.error(f"{item_key}.root", "must be an absolute path")
            if ".." in PurePath(root).parts:
                raise self.error(f"{item_key}.root", 'must not have ".." components')
            path = PurePath(root)
            if any(r.root == path for r in roots):
                raise self.error(f"{item_key}.root", f"{show_value(root)} is listed twice")
            write = self.boolean(f"{item_key}.write", item.get("write", False))
            roots.append(FileRoot(path, write))
        return tuple(roots)

    def forward(
        self, key: str, value: object, *, listen: bool = False
    ) -> tuple[ForwardTarget, ...]:
        targets = []
        what = '"[addr:]port" strings' if listen else '"host:port" strings'
        for i, text in enumerate(self.strings(key, value, what)):
            try:
                targets.append(parse_pattern(text, listen=listen))
            except ValueError as exc:
                raise self.error(f"{key}[{i}]", str(exc)) from None
        return tuple(targets)


def read_policy(
    data: Mapping[str, Any], *, path: Path, text: str = ""
) -> tuple[dict[str, ActionSpec], dict[str, PeerPolicy | None]]:
    """Validate ``[actions]`` and every peer's ``[peers.NAME.policy]`` table.

    Args:
        data: the parsed TOML document.
        path: the file, for error messages.
        text: the file's text, for line numbers.

    Returns:
        The declared actions by name, and each trusted peer's policy by id
        (None: the peer has no policy table).

    Raises:
        ConfigError: a policy or action table is invalid; the message names the
            key and, where found, the line.
    """
    return _Loader(path, text).load(data)
