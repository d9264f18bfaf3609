"""pstp.daemon.policy.load: configuration errors name the key and the line."""

from __future__ import annotations

import re
import tomllib
from datetime import date, datetime
from pathlib import Path

import pytest

from pstp.daemon.policy import (
    ActionRequest,
    Policy,
    ShellRequest,
)
from pstp.settings import ConfigError, load
from tests.daemon.policy.support import (
    AT,
    FULL,
    KEY,
    config_text,
    line_of,
    make_policy,
    write_config,
)


@pytest.mark.parametrize(
    ("policy", "key", "needle", "message"),
    [
        ("shel = true", "peers.phone.policy.shel", "shel =", 'did you mean "shell"?'),
        ("shell = 1", "peers.phone.policy.shell", "shell =", "must be true or false"),
        (
            "require_reason = 'yes'",
            "peers.phone.policy.require_reason",
            "require_reason",
            "true or false",
        ),
        (
            'actions = ["lights.onn"]',
            "peers.phone.policy.actions[0]",
            "actions =",
            "names no declared action",
        ),
        ('actions = "kettle.*"', "peers.phone.policy.actions", "actions =", "must be a list"),
        ('exec = ["uptime"]', "peers.phone.policy.exec[0]", "exec =", "non-empty list of strings"),
        ("exec = [[]]", "peers.phone.policy.exec[0]", "exec =", "non-empty list of strings"),
        ('exec = [["up*"]]', "peers.phone.policy.exec[0]", "exec =", "must be a literal"),
        ('exec = [["ls", "**", "x"]]', "peers.phone.policy.exec[0]", "exec =", "only be the last"),
        ("when = []", "peers.phone.policy.when", "when =", "omit it for any time"),
        ('when = [{ from = "7:00" }]', "peers.phone.policy.when[0].from", "when =", '"HH:MM"'),
        ('when = [{ to = "24:00" }]', "peers.phone.policy.when[0].to", "when =", 'use "23:59"'),
        (
            'when = [{ from = "07:00", to = "07:00" }]',
            "peers.phone.policy.when[0].to",
            "when =",
            "equals from",
        ),
        ('when = [{ days = ["monday"] }]', "peers.phone.policy.when[0].days", "when =", "mon, tue"),
        (
            'when = [{ day = ["mon"] }]',
            "peers.phone.policy.when[0].day",
            "when =",
            'did you mean "days"',
        ),
        ("expires = 5", "peers.phone.policy.expires", "expires =", "TOML datetime"),
        ('expires = "soon"', "peers.phone.policy.expires", "expires =", "TOML datetime"),
        ('rate = "30/fortnight"', "peers.phone.policy.rate", "rate =", '"N/min"'),
        ('rate = "0/min"', "peers.phone.policy.rate", "rate =", "at least 1"),
        ("rate = 30", "peers.phone.policy.rate", "rate =", '"N/min"'),
        ("max_sessions = -1", "peers.phone.policy.max_sessions", "max_sessions", "0 or more"),
        ("max_sessions = true", "peers.phone.policy.max_sessions", "max_sessions", "0 or more"),
        ('files = [{ root = "srv" }]', "peers.phone.policy.files[0].root", "files =", "absolute"),
        (
            'files = [{ root = "/srv/../etc" }]',
            "peers.phone.policy.files[0].root",
            "files =",
            '".."',
        ),
        (
            'files = [{ root = "/a" }, { root = "/a/" }]',
            "peers.phone.policy.files[1].root",
            "files =",
            "twice",
        ),
        (
            'files = [{ root = "/a", write = "yes" }]',
            "peers.phone.policy.files[0].write",
            "files =",
            "true or false",
        ),
        (
            'files = [{ root = "/a", mode = "rw" }]',
            "peers.phone.policy.files[0].mode",
            "files =",
            "unknown key",
        ),
        ('forward = ["camera.local"]', "peers.phone.policy.forward[0]", "forward =", "HOST:PORT"),
        (
            'forward = ["a:1", "::1:22"]',
            "peers.phone.policy.forward[1]",
            "forward =",
            "[ADDR]:PORT",
        ),
        ('exec = "uptime"', "peers.phone.policy.exec", "exec =", "list of argv lists"),
        ('exec = [["echo", "a\\u0000"]]', "peers.phone.policy.exec[0]", "exec =", "NUL"),
        ('when = ["07:00-22:00"]', "peers.phone.policy.when[0]", "when =", "must be a table"),
        ('files = "/srv"', "peers.phone.policy.files", "files =", "must be a list"),
        ('files = ["/srv"]', "peers.phone.policy.files[0]", "files =", "must be a table"),
        ("forward = [80]", "peers.phone.policy.forward", "forward =", "host:port"),
    ],
)
def test_policy_errors_name_key_and_line(policy: str, key: str, needle: str, message: str) -> None:
    """Each invalid policy value raises ConfigError naming its key and line."""
    text = config_text(f"[peers.phone.policy]\n# a comment\n{policy}\n")
    with pytest.raises(ConfigError) as info:
        Policy.from_data(tomllib.loads(text), path="pstp.toml", text=text)
    assert info.value.key == key
    assert info.value.line == line_of(text, needle)
    assert message in str(info.value)
    assert str(info.value).startswith(f"pstp.toml:{info.value.line}: {key}: ")


@pytest.mark.parametrize(
    ("actions", "key", "needle", "message"),
    [
        ('[actions."kettle on"]\n', 'actions."kettle on"', "kettle on", "an action name is"),
        (
            "[actions.kettle.on]\nargs = {}\n",
            "actions.kettle.on",
            "[actions.kettle.on]",
            "quote dotted",
        ),
        ("[actions.x]\nargs = { n = { max = 3 } }\n", "actions.x.args.n.type", "args =", '"int"'),
        (
            '[actions.x]\nargs = { n = { type = "int", pattern = "a" } }\n',
            "actions.x.args.n.pattern",
            "args =",
            "unknown key",
        ),
        (
            '[actions.x]\nargs = { n = { type = "int", min = 5, max = 1 } }\n',
            "actions.x.args.n.max",
            "args =",
            "below min",
        ),
        (
            '[actions.x]\nargs = { n = { type = "int", min = 1.5 } }\n',
            "actions.x.args.n.min",
            "args =",
            "an integer",
        ),
        (
            '[actions.x]\nargs = { n = { type = "float", max = nan } }\n',
            "actions.x.args.n.max",
            "args =",
            "finite",
        ),
        (
            '[actions.x]\nargs = { n = { type = "int", max = 9, default = 10 } }\n',
            "actions.x.args.n.default",
            "args =",
            "above the maximum",
        ),
        (
            '[actions.x]\nargs = { n = { type = "int", default = "10" } }\n',
            "actions.x.args.n.default",
            "args =",
            "of type int",
        ),
        (
            '[actions.x]\nargs = { n = { type = "bool", default = 1 } }\n',
            "actions.x.args.n.default",
            "args =",
            "of type bool",
        ),
        (
            '[actions.x]\nargs = { s = { type = "str", pattern = "(" } }\n',
            "actions.x.args.s.pattern",
            "args =",
            "invalid regular expression",
        ),
        (
            '[actions.x]\nargs = { s = { type = "str", choices = [] } }\n',
            "actions.x.args.s.choices",
            "args =",
            "non-empty list",
        ),
        (
            '[actions.x]\nargs = { s = { type = "str", max_len = 0 } }\n',
            "actions.x.args.s.max_len",
            "args =",
            "positive",
        ),
        (
            '[actions.x]\nargs = { s = { type = "str", pattern = 1 } }\n',
            "actions.x.args.s.pattern",
            "args =",
            "regular expression string",
        ),
        (
            '[actions.x]\nargs = { "a b" = { type = "str" } }\n',
            'actions.x.args."a b"',
            "args =",
            "identifier",
        ),
        (
            '[actions.x]\nargv = ["run", "{count}"]\n',
            "actions.x.argv",
            "argv =",
            "{count} names no argument",
        ),
        ('[actions.x]\nargv = ["run", "{"]\n', "actions.x.argv", "argv =", "brace"),
        ("[actions.x]\nargv = []\n", "actions.x.argv", "argv =", "must not be empty"),
    ],
)
def test_action_errors_name_key_and_line(actions: str, key: str, needle: str, message: str) -> None:
    """Each invalid action declaration raises ConfigError naming its key and line."""
    text = config_text("", actions=actions)
    with pytest.raises(ConfigError) as info:
        Policy.from_data(tomllib.loads(text), path="pstp.toml", text=text)
    assert info.value.key == key
    assert info.value.line == line_of(text, needle)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"actions": "x"}, "actions"),
        ({"actions": {"x": 1}}, "actions.x"),
        ({"actions": {"x": {"args": []}}}, "actions.x.args"),
        ({"actions": {"x": {"args": {"n": 1}}}}, "actions.x.args.n"),
        ({"peers": []}, "peers"),
    ],
)
def test_non_tables_are_refused(data: dict[str, object], key: str) -> None:
    """Tables given as other values are refused, naming the key (no line without text)."""
    with pytest.raises(ConfigError, match="must be a table") as info:
        Policy.from_data(data)
    assert (info.value.key, info.value.line) == (key, None)


def test_action_tables_keep_the_runners_keys() -> None:
    """Keys of an action table other than args/argv belong to the action runner."""
    actions = '[actions.x]\nargv = ["x"]\ntimeout = 5\n'
    policy = make_policy('[peers.phone.policy]\nactions = ["x"]\n', actions=actions)
    assert policy.check("phone", ActionRequest("x"), at=AT).allowed


def test_from_settings_reads_the_loaded_file(tmp_path: Path) -> None:
    """from_settings validates the file settings.load read, with line numbers."""
    good = write_config(tmp_path, config_text(FULL))
    policy = Policy.from_settings(load(good))
    assert policy.check("phone", ShellRequest(), at=AT).allowed
    assert set(policy.actions) == {"kettle.on", "lights.on", "say"}
    text = config_text('[peers.phone.policy]\nshell = true\nforward = ["nope"]\n')
    bad = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(f"{bad}:{line_of(text, 'forward')}: ")):
        Policy.from_settings(load(bad))


def test_policy_table_must_be_a_table() -> None:
    """peers.NAME.policy = 1 is refused."""
    text = config_text().replace(f'key = "{KEY}"\n', f'key = "{KEY}"\npolicy = 1\n')
    with pytest.raises(ConfigError, match="must be a table") as info:
        Policy.from_data(tomllib.loads(text), text=text)
    assert info.value.line == line_of(text, "policy = 1")


def test_toml_date_expiry_is_local_midnight() -> None:
    """A TOML date as expiry is parsed as local midnight."""
    policy = make_policy(FULL + "expires = 2027-01-01\n")
    peer = policy.peer("phone")
    assert peer is not None and peer.expires == datetime.combine(
        date(2027, 1, 1), datetime.min.time()
    )
