"""Configured actions: loading, argv templates, callables, timeouts and output caps."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import sys
import textwrap
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import msgspec
import pytest

from pstp.asyncio.connection import Channel, Session
from pstp.client.remote import list_actions, run_action
from pstp.daemon.actions import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_TIMEOUT,
    ActionSpec,
    GetArgs,
    action_handler,
    allowed_actions,
    load_actions,
    raw_args,
    resolve_callable,
)
from pstp.daemon.audit import AuditLog
from pstp.daemon.policy import Policy
from pstp.exceptions import ChannelError
from pstp.settings import ConfigError, create, load
from pstp.wire.messages import ChannelCode
from tests.daemon.test_exec import peer_session, pstp_serve, serving
from tests.helpers import TIMEOUT

PY = sys.executable
_names = itertools.count()


def config_with(tmp_path: Path, actions_toml: str) -> Path:
    """A configuration file holding the given [actions] tables."""
    path = create(tmp_path / f"c{next(_names)}.toml", "home")
    with path.open("a") as f:
        f.write(textwrap.dedent(actions_toml))
    return path


# -- configuration -------------------------------------------------------------------------


def test_load_actions_reads_argv_and_call_tables(tmp_path: Path) -> None:
    """[actions."name"] tables become ActionSpecs with defaults, args carried through."""
    path = config_with(
        tmp_path,
        """
        [actions."gate.open"]
        argv = ["/usr/bin/gate", "open", "--for={seconds}s"]
        timeout = 10
        max_output = 4096
        args = { seconds = { type = "int", min = 1, max = 600 } }

        [actions.lamp]
        call = "home.lamp:set_level"
        description = "the lamp"
        """,
    )
    actions = load_actions(load(path))
    gate, lamp = actions["gate.open"], actions["lamp"]
    assert gate.argv == ("/usr/bin/gate", "open", "--for={seconds}s")
    assert (gate.timeout, gate.max_output, gate.call) == (10.0, 4096, None)
    assert gate.args == {"seconds": {"type": "int", "min": 1, "max": 600}}
    assert gate.placeholders == {"seconds"}
    assert (lamp.call, lamp.argv, lamp.description) == ("home.lamp:set_level", None, "the lamp")
    assert (lamp.timeout, lamp.max_output) == (DEFAULT_TIMEOUT, DEFAULT_MAX_OUTPUT)
    assert load_actions(load(config_with(tmp_path, ""))) == {}


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('argv = ["a"]\ncall = "m:f"', "actions.x"),
        ("timeout = 3", "actions.x"),
        ('argv = "ls -l"', "actions.x.argv"),
        ("argv = []", "actions.x"),
        ('argv = ["{prog}"]', "actions.x"),
        ('argv = ["echo", "{x.y}"]', "actions.x"),
        ('argv = ["echo", "{x!r}"]', "actions.x"),
        ('argv = ["echo", "{x:>5}"]', "actions.x"),
        ('argv = ["echo", "{"]', "actions.x"),
        ('argv = ["echo", "{n}"]\nargs = { m = {} }', "actions.x"),
        ('call = "not a call"', "actions.x"),
        ("call = 3", "actions.x.call"),
        ('argv = ["a"]\ntimeout = 0', "actions.x"),
        ('argv = ["a"]\ntimeout = true', "actions.x.timeout"),
        ('argv = ["a"]\nmax_output = 1.5', "actions.x.max_output"),
        ('argv = ["a"]\nmax_output = -1', "actions.x"),
        ('argv = ["a"]\nargs = 3', "actions.x.args"),
        ('argv = ["a"]\ndescription = 3', "actions.x.description"),
        ('argv = ["a"]\nshell = true', "actions.x.shell"),
    ],
)
def test_invalid_action_tables_are_refused_naming_the_key(
    tmp_path: Path, table: str, key: str
) -> None:
    """A bad action table raises ConfigError naming the file and the key."""
    path = config_with(tmp_path, f"[actions.x]\n{table}\n")
    with pytest.raises(ConfigError) as info:
        load_actions(load(path))
    assert info.value.key == key
    assert str(path) in str(info.value)


def test_actions_must_be_tables(tmp_path: Path) -> None:
    """`actions` and each entry must be tables."""
    top = tmp_path / "top.toml"
    top.write_text('actions = 3\n[device]\nid = "home"\n')
    with pytest.raises(ConfigError) as info:
        load_actions(load(top))
    assert info.value.key == "actions"
    with pytest.raises(ConfigError) as info:
        load_actions(load(config_with(tmp_path, "[actions]\nx = 3\n")))
    assert info.value.key == "actions.x"


def test_render_argv_substitutes_whole_elements_and_parts() -> None:
    """Placeholders are replaced by plain substitution; {{ }} are literal braces."""
    spec = ActionSpec("a", argv=("prog", "{n}", "--on={flag}", "{{x}}-{text}", "{f}"))
    values = {"n": 5, "flag": True, "text": "a b;$(id)", "f": 1.5}
    assert spec.render_argv(values) == ["prog", "5", "--on=true", "{x}-a b;$(id)", "1.5"]
    with pytest.raises(ValueError):
        spec.render_argv({"n": 1})
    with pytest.raises(ValueError):
        spec.render_argv({**values, "n": ["list"]})
    with pytest.raises(ValueError):
        ActionSpec("c", call="m:f").render_argv({})


def test_resolve_callable_errors() -> None:
    """resolve_callable imports module:attr and refuses what is not callable."""
    assert resolve_callable(ActionSpec("j", call="json:dumps")).__name__ == "dumps"
    assert resolve_callable(ActionSpec("p", call="os.path:join")).__name__ == "join"
    with pytest.raises(TypeError):
        resolve_callable(ActionSpec("s", call="os:sep"))
    with pytest.raises(TypeError):
        resolve_callable(ActionSpec("a", argv=("x",)))
    with pytest.raises(ImportError):
        resolve_callable(ActionSpec("m", call="no_such_module_pstp:f"))


# -- running actions over a session ----------------------------------------------------------------


def session(
    actions: Mapping[str, ActionSpec], get_args: GetArgs | None = None
) -> contextlib.AbstractAsyncContextManager[Session]:
    """A session to a loopback server serving ``action`` channels."""
    return serving({"action": action_handler(actions, get_args)})


async def act(
    s: Session, name: str, args: dict[str, str | int | float | bool] | None = None
) -> tuple[int, bytes, bytes]:
    """Run an action; return (status, stdout, stderr)."""
    out, err = bytearray(), bytearray()
    status = await asyncio.wait_for(
        run_action(s, name, args or {}, reason="test", stdout=out.extend, stderr=err.extend),
        TIMEOUT * 2,
    )
    return status, bytes(out), bytes(err)


SHOW_ARGV = "import sys; print(sys.argv[1:]); sys.exit(int(sys.argv[1]))"


async def test_argv_action_gets_typed_args_substituted() -> None:
    """Coerced args are substituted into argv; output and exit status come back."""

    def coerced(ch: Channel) -> dict[str, object]:
        raw = raw_args(ch)
        return {"n": int(str(raw["n"])), "on": raw["on"] == "yes", "text": raw["text"]}

    spec = ActionSpec("show", argv=(PY, "-c", SHOW_ARGV, "{n}", "--on={on}", "{text}"))
    async with session({"show": spec}, coerced) as s:
        status, out, err = await act(s, "show", {"n": "3", "on": "yes", "text": "a b;$(id)|`x`"})
    assert (status, err) == (3, b"")
    assert out == b"['3', '--on=true', 'a b;$(id)|`x`']\n"


async def test_raw_args_are_the_default() -> None:
    """Without get_args the action gets the arg.* params as sent."""
    spec = ActionSpec("show", argv=(PY, "-c", SHOW_ARGV, "{n}", "{b}", "{f}"))
    async with session({"show": spec}) as s:
        assert await act(s, "show", {"n": 0, "b": False, "f": 2.5}) == (
            0,
            b"['0', 'false', '2.5']\n",
            b"",
        )


def callable_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throwaway module of action functions on sys.path; returns its name."""
    name = f"pstp_test_actions_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            import time

            def greet(name, times=1):
                return 0, ("hello " + name + "\\n").encode() * times

            async def add(a, b):
                await asyncio.sleep(0)
                return a + b

            def nothing():
                return None

            def big():
                return 0, b"x" * 5000

            async def slow():
                await asyncio.sleep(30)

            def boom():
                raise RuntimeError("secret detail")

            def bad_result():
                return "not a status"

            def inner_timeout():
                raise TimeoutError("from inside")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


async def test_callable_actions_sync_and_async(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A callable gets keyword args; int, (int, bytes) and None results become the status."""
    mod = callable_module(tmp_path, monkeypatch)
    actions = {
        "greet": ActionSpec("greet", call=f"{mod}:greet"),
        "add": ActionSpec("add", call=f"{mod}:add"),
        "nothing": ActionSpec("nothing", call=f"{mod}:nothing"),
    }
    async with session(actions) as s:
        assert await act(s, "greet", {"name": "World", "times": 2}) == (
            0,
            b"hello World\nhello World\n",
            b"",
        )
        assert await act(s, "add", {"a": 2, "b": 5}) == (7, b"", b"")
        assert await act(s, "nothing") == (0, b"", b"")


async def test_failing_callables_report_no_detail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A callable that raises or returns junk fails the channel without its exception text."""
    mod = callable_module(tmp_path, monkeypatch)
    actions = {
        n: ActionSpec(n, call=f"{mod}:{n}")
        for n in ("boom", "bad_result", "inner_timeout", "missing")
    }
    async with session(actions) as s:
        for name in actions:
            status, out, err = await act(s, name)
            assert (status, out, err) == (255, b"", b"pstp: action failed\n")
        ch = await s.open_channel("action", {"name": "boom"})
        with pytest.raises(ChannelError) as info:
            await asyncio.wait_for(ch.wait_closed(), TIMEOUT)
        assert info.value.code == ChannelCode.APPLICATION_ERROR
        assert "secret" not in info.value.reason


async def test_timeout_kills_and_gives_124(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An action past its timeout is stopped: status 124, earlier output kept, a note."""
    mod = callable_module(tmp_path, monkeypatch)
    code = "import time; print('started', flush=True); time.sleep(30)"
    actions = {
        "argv": ActionSpec("argv", argv=(PY, "-c", code), timeout=0.5),
        "call": ActionSpec("call", call=f"{mod}:slow", timeout=0.2),
    }
    async with session(actions) as s:
        assert await act(s, "argv") == (124, b"started\n", b"pstp: timed out after 0.5 s\n")
        assert await act(s, "call") == (124, b"", b"pstp: timed out after 0.2 s\n")


async def test_output_is_capped_and_the_cut_noted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output beyond max_output is dropped and noted; the exit status is unchanged."""
    mod = callable_module(tmp_path, monkeypatch)
    code = "import sys; sys.stdout.write('y' * 300000); sys.exit(2)"
    actions = {
        "argv": ActionSpec("argv", argv=(PY, "-c", code), max_output=1000),
        "call": ActionSpec("call", call=f"{mod}:big", max_output=100),
    }
    async with session(actions) as s:
        assert await act(s, "argv") == (
            2,
            b"y" * 1000,
            b"\n[pstp: output cut at 1000 bytes]\n",
        )
        assert await act(s, "call") == (0, b"x" * 100, b"\n[pstp: output cut at 100 bytes]\n")


async def test_unknown_action_missing_args_and_bad_params() -> None:
    """No such action: 127; a missing placeholder or refused args: 'bad params' (255)."""
    spec = ActionSpec("show", argv=(PY, "-c", SHOW_ARGV, "{n}"))

    def refuse(ch: Channel) -> dict[str, object]:
        raise ValueError("policy says no")

    async with session({"show": spec}) as s:
        assert await act(s, "nope") == (127, b"", b"pstp: no such action: nope\n")
        status, _, err = await act(s, "show")
        assert status == 255
        assert err.startswith(b"pstp: bad params: ")
        ch = await s.open_channel("action", {"name": "show", "reason": 5, "arg.n": 1})
        with pytest.raises(ChannelError) as info:
            await asyncio.wait_for(ch.wait_closed(), TIMEOUT)
        assert info.value.reason.startswith("bad params: ")
    async with session({"show": spec}, refuse) as s:
        assert (await act(s, "show", {"n": 1}))[0] == 255


async def test_missing_program_is_127() -> None:
    """An argv action whose program does not exist ends with 127 and a clear note."""
    spec = ActionSpec("gone", argv=("/nonexistent/pstp-prog", "x"))
    async with session({"gone": spec}) as s:
        assert await act(s, "gone") == (
            127,
            b"",
            b"pstp: command not found: /nonexistent/pstp-prog\n",
        )


# -- option injection through a real `pstp serve` (issue 11, item 11) ----------------------

SORT_TABLES = """\
[actions.sort]
argv = ["{sort}", "{{file}}"]
args = {{ file = {{ type = "str" }} }}

[peers.phone.policy]
actions = ["sort"]
"""

FLAGS_TABLES = """\
[actions."sort.flags"]
argv = ["{sort}", "{{flags}}", "{{file}}"]
args = {{ flags = {{ type = "str", allow_dash = true }}, file = {{ type = "str" }} }}

[peers.phone.policy]
actions = ["sort.flags"]
"""


async def test_a_dash_value_is_refused_as_an_option_by_pstp_serve(tmp_path: Path) -> None:
    """`-o<path>` filling a whole argv element made `sort` create that file: now it is
    refused before anything runs, with a reason saying why; plain values still run."""
    sort = shutil.which("sort")
    assert sort is not None
    data = tmp_path / "data.txt"
    data.write_text("b\na\n")
    planted = tmp_path / "planted"
    with pstp_serve(tmp_path, SORT_TABLES.format(sort=sort)) as port:
        async with peer_session(port) as s:
            with pytest.raises(ChannelError) as info:
                await run_action(s, "sort", {"file": f"-o{planted}"})
            out: list[bytes] = []
            status = await run_action(s, "sort", {"file": str(data)}, stdout=out.append)
    assert not planted.exists()
    assert info.value.code == ChannelCode.REFUSED
    assert info.value.reason.startswith('argument "file" starts with "-"')
    assert "would be read as an option" in info.value.reason
    assert (status, b"".join(out)) == (0, b"a\nb\n")


async def test_allow_dash_lets_an_option_through_pstp_serve(tmp_path: Path) -> None:
    """With allow_dash = true in its schema a value may be an option; the other is judged."""
    sort = shutil.which("sort")
    assert sort is not None
    data = tmp_path / "data.txt"
    data.write_text("b\na\n")
    with pstp_serve(tmp_path, FLAGS_TABLES.format(sort=sort)) as port:
        async with peer_session(port) as s:
            out: list[bytes] = []
            status = await run_action(
                s, "sort.flags", {"flags": "-r", "file": str(data)}, stdout=out.append
            )
            with pytest.raises(ChannelError) as info:
                await run_action(s, "sort.flags", {"flags": "-r", "file": "-o/tmp/x"})
    assert (status, b"".join(out)) == (0, b"b\na\n")
    assert info.value.code == ChannelCode.REFUSED


# -- the listing (the actions channel, docs/protocol.md §17.12) ----------------------------

LISTED_TABLES = """\
[actions."kettle.on"]
argv = ["/bin/true", "{temp}"]
description = "boil water"
args = { temp = { type = "int", min = 40, max = 100, default = 100 } }

[actions."lights.on"]
argv = ["/bin/true", "{room}"]
args = { room = { type = "str", choices = ["hall", "kitchen"] } }

[actions.say]
argv = ["/bin/echo", "{text}"]
args.text = { type = "str", max_len = 20, pattern = "[a-z ]+" }
args.loud = { type = "bool", default = false }

[peers.phone.policy]
actions = ["kettle.*", "say"]
"""


def listing_policy(tmp_path: Path, extra: str = "") -> tuple[Policy, dict[str, ActionSpec]]:
    """The policy and actions of LISTED_TABLES (peer phone), ``extra`` added to its policy."""
    path = config_with(tmp_path, LISTED_TABLES + extra)
    with path.open("a") as f:
        f.write(f'\n[peers.phone]\nkey = "{"ab" * 32}"\n')
    settings = load(path)
    return Policy.from_settings(settings), load_actions(settings)


def test_allowed_actions_lists_only_what_the_policy_allows_with_schemas(tmp_path: Path) -> None:
    """kettle.on and say are allowed (say's required text is not needed to list it);
    lights.on is declared but not allowed, so it is not listed."""
    policy, actions = listing_policy(tmp_path)
    listed = allowed_actions(policy, "phone", actions, at=datetime.now().astimezone())
    assert msgspec.to_builtins(listed) == [
        {
            "name": "kettle.on",
            "description": "boil water",
            "args": [
                {
                    "name": "temp",
                    "type": "int",
                    "required": False,
                    "default": 100,
                    "min": 40,
                    "max": 100,
                    "max_len": None,
                    "choices": None,
                    "pattern": None,
                }
            ],
        },
        {
            "name": "say",
            "description": "",
            "args": [
                {
                    "name": "loud",
                    "type": "bool",
                    "required": False,
                    "default": False,
                    "min": None,
                    "max": None,
                    "max_len": None,
                    "choices": None,
                    "pattern": None,
                },
                {
                    "name": "text",
                    "type": "str",
                    "required": True,
                    "default": None,
                    "min": None,
                    "max": None,
                    "max_len": 20,
                    "choices": None,
                    "pattern": "[a-z ]+",
                },
            ],
        },
    ]
    assert allowed_actions(policy, "nobody", actions, at=datetime.now().astimezone()) == []


def test_allowed_actions_follow_expiry_and_not_require_reason(tmp_path: Path) -> None:
    """An expired policy lists nothing; require_reason does not hide what may run."""
    now = datetime.now().astimezone()
    policy, actions = listing_policy(tmp_path, "require_reason = true\n")
    assert [a.name for a in allowed_actions(policy, "phone", actions, at=now)] == [
        "kettle.on",
        "say",
    ]
    policy, actions = listing_policy(tmp_path, "expires = 2000-01-01T00:00:00Z\n")
    assert allowed_actions(policy, "phone", actions, at=now) == []


async def test_pstp_serve_lists_the_allowed_actions_and_audits_it(tmp_path: Path) -> None:
    """Over a real session: the listing names what phone may run; an audit row says so."""
    with pstp_serve(tmp_path, LISTED_TABLES) as port:
        async with peer_session(port) as s:
            listed = await asyncio.wait_for(list_actions(s, reason="which?"), TIMEOUT)
            ch = await s.open_channel("actions", {"reason": 3})
            with pytest.raises(ChannelError) as info:
                await asyncio.wait_for(ch.read_all(), TIMEOUT)
    assert [a.name for a in listed] == ["kettle.on", "say"]
    assert listed[0].description == "boil water"
    assert info.value.code == ChannelCode.BAD_PARAMS
    rows = AuditLog(tmp_path / "audit.sqlite").list(kind="actions")
    assert [(r.peer, r.decision, r.reason) for r in rows] == [("phone", "ok", "which?")]
    assert rows[0].result == {"exit_status": 0, "listed": ["kettle.on", "say"]}
