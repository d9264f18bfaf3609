"""pstp.daemon.policy.check: deny by default, every decision explained; `pstp policy check`."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pstp.cli.main import main
from pstp.daemon.policy import (
    DEFAULT_MAX_LEN,
    MAX_REASON,
    ActionRequest,
    Decision,
    ExecRequest,
    FileRequest,
    ForwardRequest,
    Request,
    SessionRequest,
    ShellRequest,
)
from tests.daemon.policy.support import (
    AT,
    FULL,
    MON,
    config_text,
    line_of,
    make_policy,
    write_config,
)

# --------------------------------------------------------------------------- deny by default

ALL_KINDS: list[Request] = [
    ActionRequest("kettle.on", {}, "r"),
    ExecRequest(["uptime"], "r"),
    ShellRequest("r"),
    SessionRequest(),
    FileRequest("/srv/share/a", False, "r"),
    ForwardRequest("127.0.0.1", 554, "r"),
]


@pytest.mark.parametrize("request_", ALL_KINDS, ids=lambda r: type(r).__name__)
def test_unknown_peer_is_denied(request_: Request) -> None:
    """A peer not in the configuration is denied everything by default."""
    decision = make_policy().check("laptop", request_, at=AT)
    assert decision == Decision(False, "default deny", 'unknown peer "laptop"')


@pytest.mark.parametrize("request_", ALL_KINDS, ids=lambda r: type(r).__name__)
def test_peer_without_policy_table_is_denied(request_: Request) -> None:
    """A paired peer without a [peers.NAME.policy] table may do nothing at all."""
    policy = make_policy(FULL, peers="phone tablet")
    decision = policy.check("tablet", request_, at=AT)
    assert not decision.allowed
    assert decision.rule == "default deny"
    assert decision.reason == "peers.tablet has no [peers.tablet.policy] table"
    assert policy.peer("tablet") is None
    assert policy.session_opened("tablet").allowed is False


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (ActionRequest("kettle.on"), "peers.phone.policy.actions allows no actions"),
        (ExecRequest(["uptime"]), "peers.phone.policy.exec allows no commands"),
        (ShellRequest(), "peers.phone.policy does not set shell = true"),
        (FileRequest("/srv/a"), "peers.phone.policy.files gives no file roots"),
        (ForwardRequest("127.0.0.1", 554), "peers.phone.policy.forward allows no targets"),
    ],
)
def test_empty_policy_denies_every_capability(request_: Request, reason: str) -> None:
    """An empty policy table grants nothing; each denial names what is missing."""
    decision = make_policy("[peers.phone.policy]\n").check("phone", request_, at=AT)
    assert decision == Decision(False, "default deny", reason)


def test_empty_policy_allows_a_session() -> None:
    """Sessions need a policy table but no key in it (max_sessions defaults to no limit)."""
    decision = make_policy("[peers.phone.policy]\n").check("phone", SessionRequest(), at=AT)
    assert decision == Decision(True, "peers.phone.policy", "no max_sessions limit (0 open)")


# --------------------------------------------------------------------------- actions


def test_action_allowed_by_glob_with_coerced_args() -> None:
    """An allowed action names the glob that allowed it and carries coerced args."""
    decision = make_policy().check("phone", ActionRequest("kettle.on", {"temp": "80"}), at=AT)
    assert decision.allowed
    assert decision.rule == 'peers.phone.policy.actions[0] "kettle.*"'
    assert decision.reason == 'action "kettle.on" matches "kettle.*"'
    assert decision.args == {"temp": 80}
    assert isinstance(decision.args["temp"], int)


def test_action_defaults_are_filled_in() -> None:
    """Omitted optional arguments take their defaults."""
    policy = make_policy()
    assert policy.check("phone", ActionRequest("kettle.on"), at=AT).args == {"temp": 100}
    decision = policy.check("phone", ActionRequest("say", {"text": "hi there"}), at=AT)
    assert decision.rule == 'peers.phone.policy.actions[1] "say"'
    assert decision.args == {"text": "hi there", "loud": False, "volume": 0.5}


def test_action_matching_no_glob_is_denied() -> None:
    """A declared action outside every glob is denied, listing the globs."""
    decision = make_policy().check("phone", ActionRequest("lights.on", {"room": "hall"}), at=AT)
    assert decision == Decision(
        False,
        "default deny",
        'action "lights.on" matches none of peers.phone.policy.actions: "kettle.*", "say"',
    )


def test_action_matching_a_glob_but_undeclared_is_denied() -> None:
    """A glob can only allow actions declared in [actions]."""
    decision = make_policy().check("phone", ActionRequest("kettle.boil"), at=AT)
    assert decision == Decision(
        False, "default deny", 'no action "kettle.boil" is declared in [actions]'
    )


def test_action_globs_are_case_sensitive() -> None:
    """fnmatch is applied case-sensitively on every platform."""
    decision = make_policy().check("phone", ActionRequest("KETTLE.on"), at=AT)
    assert not decision.allowed


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("kettle.on", {"temp": "40"}, {"temp": 40}),
        ("kettle.on", {"temp": " +100 "}, {"temp": 100}),
        ("kettle.on", {"temp": 75}, {"temp": 75}),
        ("say", {"text": "a b", "loud": "yes", "volume": "1.5"}, {"volume": 1.5, "loud": True}),
        ("say", {"text": "a", "loud": "OFF", "volume": 1}, {"volume": 1.0, "loud": False}),
        ("say", {"text": "a", "loud": True, "volume": "0"}, {"volume": 0.0, "loud": True}),
        ("say", {"text": "x" * 20}, {"text": "x" * 20}),
        ("lights.on", {"room": "kitchen"}, {"room": "kitchen"}),
    ],
)
def test_typed_args_accept_and_coerce(
    name: str, args: dict[str, object], expected: dict[str, object]
) -> None:
    """Strings (as the CLI passes them) and native values are coerced to the schema type."""
    policy = make_policy(FULL.replace('"say"]', '"say", "lights.on"]'))
    decision = policy.check("phone", ActionRequest(name, args), at=AT)
    assert decision.allowed, decision.reason
    for key, value in expected.items():
        assert decision.args[key] == value
        assert type(decision.args[key]) is type(value)


@pytest.mark.parametrize(
    ("name", "args", "rule", "reason"),
    [
        ("kettle.on", {"temp": "39"}, "temp", "temp: 39 is below the minimum 40"),
        ("kettle.on", {"temp": 101}, "temp", "temp: 101 is above the maximum 100"),
        ("kettle.on", {"temp": "hot"}, "temp", 'temp: expected an integer, got "hot"'),
        ("kettle.on", {"temp": "80.0"}, "temp", 'temp: expected an integer, got "80.0"'),
        ("kettle.on", {"temp": 80.0}, "temp", "temp: expected an integer, got 80.0"),
        ("kettle.on", {"temp": True}, "temp", "temp: expected an integer, got true"),
        ("kettle.on", {"temp": "1" * 101}, "temp", "temp: expected an integer"),
        ("say", {"text": "a", "volume": "nan"}, "volume", "volume: expected a finite number"),
        ("say", {"text": "a", "volume": "2"}, "volume", "volume: 2.0 is above the maximum 1.5"),
        ("say", {"text": "a", "volume": [1]}, "volume", "volume: expected a number, got [1]"),
        ("say", {"text": "a", "loud": "maybe"}, "loud", "loud: expected true or false"),
        ("say", {"text": "a", "loud": 1}, "loud", "loud: expected true or false, got 1"),
        ("say", {"text": "Hello"}, "text", 'text: "Hello" does not match the pattern "[a-z ]+"'),
        ("say", {"text": "x" * 21}, "text", "text: is 21 characters long; at most 20"),
        ("say", {"text": 5}, "text", "text: expected a string, got 5"),
        ("say", {"text": "a\x00b"}, "text", "text: contains a NUL character"),
        ("say", {}, "text", 'missing required argument "text"'),
        ("lights.on", {"room": "attic"}, "room", 'room: "attic" is not one of "hall", "kitchen"'),
    ],
)
def test_typed_args_refuse_bad_values(
    name: str, args: dict[str, object], rule: str, reason: str
) -> None:
    """Out-of-bounds, mistyped, malformed and missing arguments are denied by their schema."""
    policy = make_policy(FULL.replace('"say"]', '"say", "lights.on"]'))
    decision = policy.check("phone", ActionRequest(name, args), at=AT)
    assert not decision.allowed
    quoted = f'"{name}"' if "." in name else name
    assert decision.rule == f"actions.{quoted}.args.{rule}"
    assert decision.reason.startswith(reason)
    assert decision.args == {}


_any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=30),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["kettle.on", "say", "lights.on", "kettle.boil"]),
    args=st.dictionaries(
        st.sampled_from(["temp", "text", "loud", "volume", "room", "x"]), _any_value
    ),
)
def test_arbitrary_action_args_never_crash(name: str, args: dict[str, object]) -> None:
    """Any argument values give a decision; allowed ones are exactly the schema's types."""
    policy = make_policy(FULL.replace('"say"]', '"say", "lights.on"]'))
    decision = policy.check("phone", ActionRequest(name, args), at=AT)
    if decision.allowed:
        spec = policy.actions[name]
        assert set(decision.args) == set(spec.args)
        for key, value in decision.args.items():
            kind = {"int": int, "float": float, "bool": bool, "str": str}[spec.args[key].type]
            assert type(value) is kind
    else:
        assert decision.args == {}


def test_unknown_args_are_refused() -> None:
    """Arguments not declared in the schema are refused, naming what the action takes."""
    decision = make_policy().check(
        "phone", ActionRequest("kettle.on", {"temp": "80", "boost": "1"}), at=AT
    )
    assert decision == Decision(
        False,
        'actions."kettle.on".args',
        'unknown argument "boost" (kettle.on takes: temp)',
    )


def test_str_args_are_bounded_by_default() -> None:
    """A str argument without max_len is still capped at DEFAULT_MAX_LEN."""
    actions = '[actions.note]\nargs = { text = { type = "str" } }\n'
    policy = make_policy('[peers.phone.policy]\nactions = ["note"]\n', actions=actions)
    ok = policy.check("phone", ActionRequest("note", {"text": "x" * DEFAULT_MAX_LEN}), at=AT)
    too_long = ActionRequest("note", {"text": "x" * (DEFAULT_MAX_LEN + 1)})
    assert ok.allowed
    assert not policy.check("phone", too_long, at=AT).allowed


def test_action_args_metacharacters_are_plain_data() -> None:
    """Shell metacharacters in str args are only data, checked against the schema."""
    actions = '[actions.note]\nargs = { text = { type = "str", max_len = 40 } }\n'
    policy = make_policy('[peers.phone.policy]\nactions = ["note"]\n', actions=actions)
    text = "$(rm -rf /); `reboot` | tee /etc/passwd"
    decision = policy.check("phone", ActionRequest("note", {"text": text}), at=AT)
    assert decision.allowed
    assert decision.args == {"text": text}


# --------------------------------------------------------------------------- exec


@pytest.mark.parametrize(
    ("argv", "rule"),
    [
        (["uptime"], 'peers.phone.policy.exec[0] ["uptime"]'),
        (
            ["systemctl", "status", "nginx"],
            'peers.phone.policy.exec[1] ["systemctl", "status", "*"]',
        ),
        (["ls", "-l", "/srv/a/b/c"], 'peers.phone.policy.exec[2] ["ls", "-l", "/srv/**"]'),
        (["echo"], 'peers.phone.policy.exec[3] ["echo", "**"]'),
        (["echo", "a", "b", "c d"], 'peers.phone.policy.exec[3] ["echo", "**"]'),
    ],
)
def test_exec_allowed_by_an_entry(argv: list[str], rule: str) -> None:
    """An argv matching an allow-list entry is allowed, naming the entry."""
    decision = make_policy().check("phone", ExecRequest(argv), at=AT)
    assert decision.allowed, decision.reason
    assert decision.rule == rule
    assert decision.reason.startswith("argv matches [")


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["reboot"], 'the command "reboot" is not in peers.phone.policy.exec'),
        (["/usr/bin/uptime"], 'the command "/usr/bin/uptime" is not in peers.phone.policy.exec'),
        (["uptime", "-p"], "exec[0]: 1 arguments where 0 are allowed"),
        (["systemctl", "status"], "exec[1]: 1 arguments where 2 are allowed"),
        (["systemctl", "status", "a", "b"], "exec[1]: 3 arguments where 2 are allowed"),
        (["systemctl", "stop", "nginx"], 'exec[1]: argument 1 "stop" is not "status"'),
        (["ls", "-l", "/etc/passwd"], 'exec[2]: argument 2 "/etc/passwd" does not match "/srv/**"'),
        (["ls", "-la", "/srv/a"], 'exec[2]: argument 1 "-la" is not "-l"'),
    ],
)
def test_exec_denied_with_explanation(argv: list[str], reason: str) -> None:
    """An argv outside the allow-list is denied, saying which entry came closest and why."""
    decision = make_policy().check("phone", ExecRequest(argv), at=AT)
    assert not decision.allowed
    assert decision.rule == "default deny"
    assert reason in decision.reason


def test_exec_command_is_literal() -> None:
    """argv[0] is compared literally: no globs, no PATH resolution, no case folding."""
    policy = make_policy()
    for command in ("upti*", "UPTIME", "uptime ", "./uptime"):
        assert not policy.check("phone", ExecRequest([command]), at=AT).allowed


def test_exec_wildcards_match_no_options() -> None:
    """An argument matched only by a wildcard may not look like an option."""
    policy = make_policy(
        '[peers.phone.policy]\nexec = [["find", "/srv", "*"], ["git", "-*"], ["cat", "**"]]\n'
    )
    denied = policy.check("phone", ExecRequest(["find", "/srv", "-delete"]), at=AT)
    assert not denied.allowed
    assert 'argument 2 "-delete" looks like an option' in denied.reason
    assert not policy.check("phone", ExecRequest(["cat", "a", "--", "-x"]), at=AT).allowed
    assert policy.check("phone", ExecRequest(["git", "--version"]), at=AT).allowed
    assert policy.check("phone", ExecRequest(["find", "/srv", "name"]), at=AT).allowed


def test_exec_wildcards_never_match_dotdot() -> None:
    """ "/srv/*" never reaches outside /srv through a ".." component."""
    policy = make_policy()
    decision = policy.check("phone", ExecRequest(["ls", "-l", "/srv/../etc/shadow"]), at=AT)
    assert not decision.allowed
    assert 'has a ".." component' in decision.reason
    assert policy.check("phone", ExecRequest(["ls", "-l", "/srv/a..b"]), at=AT).allowed
    assert not policy.check("phone", ExecRequest(["echo", "a/../b"]), at=AT).allowed


def test_exec_metacharacters_are_matched_literally() -> None:
    """Shell syntax in argv is data: matched literally against the allow-list, never expanded."""
    policy = make_policy(
        "[peers.phone.policy]\n"
        'exec = [["echo", "$(rm -rf /)", "; ls"], ["printf", "$HOME"], ["cat", "[*]"]]\n'
    )
    exact = ExecRequest(["echo", "$(rm -rf /)", "; ls"])
    assert policy.check("phone", exact, at=AT).allowed
    for argv in (
        ["echo", "$(rm -rf /tmp)", "; ls"],
        ["echo", "$(rm -rf /)", ";ls"],
        ["echo", "$(rm -rf /); ls"],
        ["printf", os.environ.get("HOME", "/root")],
        ["cat", "x"],
    ):
        assert not policy.check("phone", ExecRequest(argv), at=AT).allowed, argv
    assert policy.check("phone", ExecRequest(["printf", "$HOME"]), at=AT).allowed
    assert policy.check("phone", ExecRequest(["cat", "*"]), at=AT).allowed


def test_exec_metacharacters_pass_through_globs_unexpanded() -> None:
    """A glob that permits anything permits shell syntax only as the literal strings given."""
    policy = make_policy('[peers.phone.policy]\nexec = [["echo", "*", "*"]]\n')
    argv = ["echo", "$(rm -rf /)", "; ls"]
    decision = policy.check("phone", ExecRequest(argv), at=AT)
    assert decision.allowed
    assert argv == ["echo", "$(rm -rf /)", "; ls"]  # untouched


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        ([], "the argv is empty"),
        (["echo", "a\x00b"], "the argv contains a NUL character"),
        (["echo", 5], "argv elements must be strings"),
    ],
)
def test_exec_malformed_argv_is_denied(argv: list[str], reason: str) -> None:
    """Empty argvs, NULs and non-strings are denied before matching."""
    decision = make_policy().check("phone", ExecRequest(argv), at=AT)
    assert decision == Decision(False, "default deny", reason)


# --------------------------------------------------------------------------- shell


def test_shell_allowed_and_denied() -> None:
    """shell = true allows a shell; false denies it, naming the key."""
    assert make_policy().check("phone", ShellRequest(), at=AT) == Decision(
        True, "peers.phone.policy.shell", "shell = true"
    )
    policy = make_policy("[peers.phone.policy]\nshell = false\n")
    assert policy.check("phone", ShellRequest(), at=AT) == Decision(
        False, "peers.phone.policy.shell", "shell = false"
    )


# --------------------------------------------------------------------------- time windows

WINDOWS = """\
[peers.phone.policy]
shell = true
when = [ { days = ["mon", "tue", "wed", "thu", "fri"], from = "07:00", to = "22:30" },
         { days = ["sat", "sun"], from = "09:00", to = "23:59" } ]
"""


@pytest.mark.parametrize(
    ("moment", "allowed"),
    [
        (datetime(2026, 11, 23, 6, 59, 59), False),  # Mon before 07:00
        (datetime(2026, 11, 23, 7, 0), True),  # Mon 07:00 sharp
        (datetime(2026, 11, 27, 22, 30, 59), True),  # Fri 22:30 is inclusive to the minute
        (datetime(2026, 11, 27, 22, 31), False),  # Fri 22:31
        (datetime(2026, 11, 28, 8, 59), False),  # Sat before 09:00
        (datetime(2026, 11, 28, 9, 0), True),  # Sat 09:00
        (datetime(2026, 11, 29, 23, 59, 59), True),  # Sun last second
        (datetime(2026, 11, 30, 0, 0), False),  # Mon midnight
    ],
)
def test_time_windows_weekday_edges(moment: datetime, allowed: bool) -> None:
    """Windows hold on their days between from and to, both ends inclusive to the minute."""
    decision = make_policy(WINDOWS).check("phone", ShellRequest(), at=moment)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.rule == "peers.phone.policy.when"
        day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[moment.weekday()]
        assert decision.reason == (
            f"outside the time windows in peers.phone.policy.when ({day} {moment:%H:%M})"
        )


@pytest.mark.parametrize(
    ("moment", "allowed"),
    [
        (datetime(2026, 11, 27, 21, 59), False),  # Fri before
        (datetime(2026, 11, 27, 22, 0), True),  # Fri 22:00
        (datetime(2026, 11, 28, 0, 0), True),  # Sat midnight, carried over from Fri
        (datetime(2026, 11, 28, 6, 0, 59), True),  # Sat 06:00
        (datetime(2026, 11, 28, 6, 1), False),  # Sat 06:01
        (datetime(2026, 11, 28, 22, 30), False),  # Sat evening: Sat is not listed
        (datetime(2026, 11, 27, 3, 0), False),  # Fri early: Thu is not listed
    ],
)
def test_overnight_window_belongs_to_the_day_it_starts(moment: datetime, allowed: bool) -> None:
    """to < from spans midnight; days name the day the window starts on."""
    policy = make_policy(
        "[peers.phone.policy]\nshell = true\n"
        'when = [{ days = ["fri"], from = "22:00", to = "06:00" }]\n'
    )
    assert policy.check("phone", ShellRequest(), at=moment).allowed is allowed


def test_windows_default_to_the_whole_day_and_every_day() -> None:
    """A window without days or times covers the whole week."""
    policy = make_policy('[peers.phone.policy]\nshell = true\nwhen = [{ from = "00:00" }]\n')
    for hours in range(0, 24 * 7, 5):
        assert policy.check("phone", ShellRequest(), at=MON + timedelta(hours=hours)).allowed


def test_windows_accept_toml_local_times() -> None:
    """from/to may be TOML local times as well as "HH:MM" strings."""
    policy = make_policy(
        "[peers.phone.policy]\nshell = true\nwhen = [{ from = 09:00:00, to = 10:00:00 }]\n"
    )
    assert policy.check("phone", ShellRequest(), at=MON).allowed
    assert not policy.check("phone", ShellRequest(), at=MON + timedelta(hours=1, minutes=1)).allowed


def test_aware_times_are_judged_in_local_time(set_tz: Callable[[str], None]) -> None:
    """An aware `at` is converted to the device's zone (TZ); a naive one is already local."""
    policy = make_policy(WINDOWS)
    utc_0630 = datetime(2026, 11, 23, 6, 30, tzinfo=UTC)  # Monday 06:30 UTC
    set_tz("UTC0")
    assert not policy.check("phone", ShellRequest(), at=utc_0630).allowed
    set_tz("XXX-2")  # UTC+2: it is 08:30 here
    assert policy.check("phone", ShellRequest(), at=utc_0630).allowed
    assert not policy.check("phone", ShellRequest(), at=utc_0630.replace(tzinfo=None)).allowed
    late = datetime(2026, 11, 29, 22, 30, tzinfo=UTC)  # Sun 22:30 UTC = Mon 00:30 here
    decision = policy.check("phone", ShellRequest(), at=late)
    assert decision.reason.endswith("(Mon 00:30)")


# --------------------------------------------------------------------------- expiry


def test_expiry_with_an_aware_datetime(set_tz: Callable[[str], None]) -> None:
    """Everything is denied from the expiry instant on, however `at` is expressed."""
    set_tz("XXX-2")
    policy = make_policy(FULL + "expires = 2027-01-01T00:00:00Z\n")
    before = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert policy.check("phone", ShellRequest(), at=before).allowed
    decision = policy.check("phone", ShellRequest(), at=before + timedelta(seconds=1))
    assert decision == Decision(
        False,
        "peers.phone.policy.expires",
        "the policy expired at 2027-01-01T00:00:00+00:00",
    )
    assert policy.check("phone", ShellRequest(), at=datetime(2027, 1, 1, 1, 59)).allowed
    assert not policy.check("phone", ShellRequest(), at=datetime(2027, 1, 1, 2, 0)).allowed


@pytest.mark.parametrize("value", ["2027-01-01T00:00:00", "2027-01-01", '"2027-01-01 00:00"'])
def test_expiry_naive_is_local_time(value: str, set_tz: Callable[[str], None]) -> None:
    """A local datetime, a date or an ISO string expire at that local moment."""
    set_tz("XXX-2")
    policy = make_policy(FULL + f"expires = {value}\n")
    assert policy.check("phone", ShellRequest(), at=datetime(2026, 12, 31, 23, 59)).allowed
    assert not policy.check("phone", ShellRequest(), at=datetime(2027, 1, 1)).allowed
    aware = datetime(2026, 12, 31, 22, 0, tzinfo=UTC)  # local midnight
    assert not policy.check("phone", ShellRequest(), at=aware).allowed
    assert policy.peer("phone") is not None


def test_expiry_comes_before_time_windows() -> None:
    """An expired policy says so even outside its windows."""
    policy = make_policy(WINDOWS + "expires = 2020-01-01T00:00:00\n")
    decision = policy.check("phone", ShellRequest(), at=datetime(2026, 11, 23, 3, 0))
    assert decision.rule == "peers.phone.policy.expires"


# --------------------------------------------------------------------------- reasons


@pytest.mark.parametrize("reason", ["", "   ", "\t"])
def test_require_reason_denies_without_one(reason: str) -> None:
    """require_reason denies a request with an empty or blank reason."""
    policy = make_policy(FULL + "require_reason = true\n")
    decision = policy.check("phone", ShellRequest(reason), at=AT)
    assert decision == Decision(
        False, "peers.phone.policy.require_reason", 'a reason ("why") is required'
    )


def test_require_reason_allows_with_one() -> None:
    """With a reason the request goes on to its own rules."""
    policy = make_policy(FULL + "require_reason = true\n")
    assert policy.check("phone", ShellRequest("restart the router"), at=AT).allowed
    assert policy.check("phone", ExecRequest(["uptime"], "checking"), at=AT).allowed
    assert not policy.check("phone", ExecRequest(["reboot"], "because"), at=AT).allowed


def test_require_reason_does_not_apply_to_sessions() -> None:
    """Opening a session carries no reason; reasons belong to requests."""
    policy = make_policy(FULL + "require_reason = true\n")
    assert policy.check("phone", SessionRequest(), at=AT).allowed


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("x" * (MAX_REASON + 1), f"the reason is too long (201 characters; at most {MAX_REASON})"),
        ("line one\nline two", "the reason must be one line without control characters"),
        ("bell\x07", "the reason must be one line without control characters"),
    ],
)
def test_malformed_reasons_are_denied(reason: str, message: str) -> None:
    """Reasons go to the audit log: at most 200 characters on one line, required or not."""
    decision = make_policy().check("phone", ShellRequest(reason), at=AT)
    assert decision == Decision(False, "reason", message)
    assert make_policy().check("phone", ShellRequest("x" * MAX_REASON), at=AT).allowed


# --------------------------------------------------------------------------- rate limit


def test_rate_limit_is_a_token_bucket() -> None:
    """N requests pass at once, the next is denied, and tokens refill at N per period."""
    policy = make_policy(FULL + 'rate = "3/min"\n')
    shell = ShellRequest()
    assert all(policy.admit("phone", shell, at=AT, now=100.0).allowed for _ in range(3))
    denied = policy.admit("phone", shell, at=AT, now=100.0)
    assert denied == Decision(False, 'peers.phone.policy.rate "3/min"', "rate limit 3/min exceeded")
    assert not policy.admit("phone", shell, at=AT, now=119.0).allowed  # 0.95 of a token
    assert policy.admit("phone", shell, at=AT, now=120.0).allowed  # 20 s = 1 token
    assert not policy.admit("phone", shell, at=AT, now=120.0).allowed
    assert sum(policy.admit("phone", shell, at=AT, now=1000.0).allowed for _ in range(9)) == 3


def test_rate_limit_is_per_peer_and_spent_by_every_admitted_request() -> None:
    """Refused requests spend a token as allowed ones do; check() spends nothing; each
    peer has its own bucket."""
    policy = make_policy(
        FULL + 'rate = "2/hour"\n[peers.tablet.policy]\nshell = true\nrate = "1/sec"\n',
        peers="phone tablet",
    )
    for _ in range(5):
        assert policy.check("phone", ShellRequest(), at=AT).allowed
    refused = policy.admit("phone", ExecRequest(["reboot"]), at=AT, now=0.0)
    assert not refused.allowed and "reboot" in refused.reason  # the policy's own reason
    assert policy.admit("phone", ShellRequest(), at=AT, now=0.0).allowed
    assert policy.admit("tablet", ShellRequest(), at=AT, now=0.0).allowed
    denied = policy.admit("phone", ShellRequest(), at=AT, now=900.0)  # half a token
    assert denied.reason == "rate limit 2/hour exceeded"
    assert policy.admit("tablet", ShellRequest(), at=AT, now=1.0).allowed


def test_rate_limit_survives_a_clock_stepping_back() -> None:
    """A monotonic reading that goes backwards refills nothing."""
    policy = make_policy(FULL + 'rate = "1/sec"\n')
    assert policy.admit("phone", ShellRequest(), at=AT, now=50.0).allowed
    assert not policy.admit("phone", ShellRequest(), at=AT, now=10.0).allowed
    assert not policy.admit("phone", ShellRequest(), at=AT, now=50.5).allowed
    assert policy.admit("phone", ShellRequest(), at=AT, now=51.0).allowed


def test_admit_without_rate_is_check() -> None:
    """Without a rate key admit() decides exactly as check() does."""
    policy = make_policy()
    for request in ALL_KINDS:
        assert policy.admit("phone", request, at=AT, now=0.0) == policy.check(
            "phone", request, at=AT
        )


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(1, 5),
    gaps=st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=40),
)
def test_rate_limit_never_exceeds_its_budget(count: int, gaps: list[float]) -> None:
    """Over any span, allowed requests never exceed N plus what the refill rate earned."""
    policy = make_policy(FULL + f'rate = "{count}/min"\n')
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += policy.admit("phone", ShellRequest(), at=AT, now=now).allowed
    assert allowed <= count + now * count / 60 + 1e-9


# --------------------------------------------------------------------------- sessions


def test_max_sessions_counts_open_sessions() -> None:
    """session_opened admits up to max_sessions; session_closed frees a slot."""
    policy = make_policy(FULL + "max_sessions = 2\n")
    first = policy.session_opened("phone")
    assert first == Decision(True, "peers.phone.policy.max_sessions 2", "session 1 of at most 2")
    assert policy.session_opened("phone").allowed
    assert policy.sessions("phone") == 2
    third = policy.session_opened("phone")
    assert third == Decision(
        False, "peers.phone.policy.max_sessions 2", "2 of 2 sessions already open"
    )
    assert not policy.check("phone", SessionRequest(), at=AT).allowed
    policy.session_closed("phone")
    assert policy.check("phone", SessionRequest(), at=AT).allowed
    assert policy.session_opened("phone").allowed
    for _ in range(5):
        policy.session_closed("phone")
    assert policy.sessions("phone") == 0


def test_max_sessions_zero_and_unlimited() -> None:
    """max_sessions = 0 refuses every session; no max_sessions means no limit."""
    policy = make_policy(FULL + "max_sessions = 0\n")
    assert not policy.session_opened("phone").allowed
    unlimited = make_policy()
    assert all(unlimited.session_opened("phone").allowed for _ in range(50))


def test_session_opened_for_unknown_peer_is_denied() -> None:
    """Sessions of unknown peers are denied and not counted."""
    policy = make_policy()
    assert policy.session_opened("laptop") == Decision(
        False, "default deny", 'unknown peer "laptop"'
    )
    assert policy.sessions("laptop") == 0


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("path", "write", "allowed", "rule", "reason"),
    [
        (
            "/srv/share/a.txt",
            False,
            True,
            'files[0] "/srv/share"',
            'read "/srv/share/a.txt" under "/srv/share"',
        ),
        (
            "/srv/share//./a.txt",
            False,
            True,
            'files[0] "/srv/share"',
            'read "/srv/share/a.txt" under "/srv/share"',
        ),
        (
            "/srv/share/a.txt",
            True,
            False,
            'files[0] "/srv/share"',
            '"/srv/share/a.txt" is under a read-only root',
        ),
        (
            "/srv/share/inbox/b",
            True,
            True,
            'files[1] "/srv/share/inbox"',
            'write "/srv/share/inbox/b" under "/srv/share/inbox"',
        ),
        (
            "/srv/share/inbox",
            False,
            True,
            'files[1] "/srv/share/inbox"',
            'read "/srv/share/inbox" under "/srv/share/inbox"',
        ),
    ],
)
def test_files_most_specific_root_decides(
    path: str, write: bool, allowed: bool, rule: str, reason: str
) -> None:
    """A path is judged by the deepest root holding it, read-only unless write = true."""
    decision = make_policy().check("phone", FileRequest(path, write), at=AT)
    assert decision == Decision(allowed, f"peers.phone.policy.{rule}", reason)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc/passwd", '"/etc/passwd" is outside the roots in peers.phone.policy.files'),
        ("/srv/sharex/a", '"/srv/sharex/a" is outside the roots in peers.phone.policy.files'),
        ("srv/share/a", 'the path "srv/share/a" is not absolute'),
        (
            "/srv/share/../../etc/passwd",
            'the path "/srv/share/../../etc/passwd" has a ".." component',
        ),
        ("/srv/share/a\x00", "the path contains a NUL character"),
    ],
)
def test_files_outside_roots_are_denied(path: str, reason: str) -> None:
    """Relative paths, ".." components and paths outside every root are denied."""
    decision = make_policy().check("phone", FileRequest(path), at=AT)
    assert decision == Decision(False, "default deny", reason)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize(
    ("host", "port", "index"),
    [
        ("127.0.0.1", 554, 0),
        ("camera.local", 80, 1),
        ("CAMERA.LOCAL.", 80, 1),
        ("0:0::1", 22, 2),
        ("[::1]", 22, 2),
    ],
)
def test_forward_allowed_targets(host: str, port: int, index: int) -> None:
    """Targets match literally: names case-insensitively, IP addresses by value."""
    decision = make_policy().check("phone", ForwardRequest(host, port), at=AT)
    assert decision.allowed
    assert decision.rule.startswith(f"peers.phone.policy.forward[{index}] ")


@pytest.mark.parametrize(
    ("host", "port", "reason"),
    [
        ("127.0.0.1", 555, '"127.0.0.1:555" is not in peers.phone.policy.forward'),
        ("localhost", 554, '"localhost:554" is not in peers.phone.policy.forward'),
        ("::2", 22, '"[::2]:22" is not in peers.phone.policy.forward'),
        ("127.0.0.1", 0, "port 0 is out of range (1-65535)"),
        ("127.0.0.1", 70000, "port 70000 is out of range (1-65535)"),
    ],
)
def test_forward_other_targets_are_denied(host: str, port: int, reason: str) -> None:
    """Any other host or port is denied."""
    decision = make_policy().check("phone", ForwardRequest(host, port), at=AT)
    assert decision == Decision(False, "default deny", reason)


# --------------------------------------------------------------------------- checks order


def test_checks_run_in_the_documented_order() -> None:
    """expired, then windows, then reason, then the kind's rules: the first failure decides."""
    policy = make_policy(
        WINDOWS.replace("shell = true", "shell = false") + "require_reason = true\n"
    )
    night = datetime(2026, 11, 23, 3, 0)
    assert policy.check("phone", ShellRequest(), at=night).rule == "peers.phone.policy.when"
    assert policy.check("phone", ShellRequest(), at=AT).rule == "peers.phone.policy.require_reason"
    assert policy.check("phone", ShellRequest("why"), at=AT).rule == "peers.phone.policy.shell"


def test_cli_action_allowed(
    cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """An allowed action prints allow, the rule, the reason and the coerced args; exit 0."""
    code, out, _ = cli(
        "phone",
        "action",
        "kettle.on",
        "temp=80",
        "--reason",
        "coming home",
        "--at",
        "2026-11-23T08:00",
        capsys=capsys,
    )
    assert code == 0
    assert out == (
        "allow\n"
        '  rule:   peers.phone.policy.actions[0] "kettle.*"\n'
        '  reason: action "kettle.on" matches "kettle.*"\n'
        "  args:   temp=80\n"
        "  at:     Mon 2026-11-23 08:00 (local time)\n"
    )


def test_cli_action_bad_arg_denied(
    cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A string that does not coerce is denied by the argument's schema; exit 1."""
    code, out, _ = cli(
        "phone",
        "--reason",
        "r",
        "--at",
        "2026-11-23T08:00",
        "action",
        "kettle.on",
        "temp=200",
        capsys=capsys,
    )
    assert code == 1
    assert out.splitlines()[:3] == [
        "deny",
        '  rule:   actions."kettle.on".args.temp',
        "  reason: temp: 200 is above the maximum 100",
    ]


def test_cli_exec_outside_windows(
    cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Options after the exec command are pstp's: --at is judged, not matched; exit 1."""
    code, out, _ = cli(
        "phone",
        "exec",
        "--",
        "systemctl",
        "status",
        "nginx",
        "--at",
        "2026-11-22T03:00",
        capsys=capsys,
    )
    assert code == 1
    assert out.splitlines()[:3] == [
        "deny",
        "  rule:   peers.phone.policy.when",
        "  reason: outside the time windows in peers.phone.policy.when (Sun 03:00)",
    ]


def test_cli_exec_allowed_with_trailing_options(
    cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """--reason and --at=... may both trail the command."""
    code, out, _ = cli(
        "phone",
        "exec",
        "--",
        "systemctl",
        "status",
        "nginx",
        "--reason",
        "check",
        "--at=2026-11-23T12:00",
        capsys=capsys,
    )
    assert code == 0, out
    assert '  rule:   peers.phone.policy.exec[1] ["systemctl", "status", "*"]' in out


def test_cli_exec_options_before_keep_the_command_whole(
    cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Given before WHAT, --at is not taken from the command, which keeps its own --at."""
    code, out, _ = cli(
        "phone",
        "--at",
        "2026-11-23T12:00",
        "--reason",
        "r",
        "exec",
        "--",
        "echo",
        "--at",
        "x",
        capsys=capsys,
    )
    assert code == 1
    assert 'argument 1 "--at" looks like an option' in out


def test_cli_exec_metacharacters_are_one_argument_each(
    cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each CLI word is one argv element; shell syntax inside it is never interpreted."""
    code, out, _ = cli(
        "phone",
        "--at",
        "2026-11-23T12:00",
        "--reason",
        "r",
        "exec",
        "--",
        "echo",
        "$(id)",
        "; ls",
        capsys=capsys,
    )
    assert code == 0, out
    assert '  rule:   peers.phone.policy.exec[3] ["echo", "**"]' in out


@pytest.mark.parametrize(
    ("argv", "lines"),
    [
        (
            ["file", "/srv/share/inbox/x", "--write"],
            ['  rule:   peers.phone.policy.files[1] "/srv/share/inbox"'],
        ),
        (
            ["forward", "camera.local:80"],
            ['  rule:   peers.phone.policy.forward[1] "Camera.Local:80"'],
        ),
        (["forward", "[::1]:22"], ['  rule:   peers.phone.policy.forward[2] "[::1]:22"']),
        (["shell"], ["  rule:   peers.phone.policy.shell", "  reason: shell = true"]),
    ],
)
def test_cli_other_kinds_allowed(
    argv: list[str],
    lines: list[str],
    cli: Callable[..., tuple[int, str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """file, forward and shell are checked like the daemon would; exit 0 when allowed."""
    code, out, _ = cli("phone", *argv, "--reason", "r", "--at", "2026-11-24T12:00", capsys=capsys)
    assert code == 0, out
    assert out.startswith("allow\n")
    for line in lines:
        assert line in out.splitlines()


def test_cli_session_and_unknown_peer(
    cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """session needs no reason; an unknown peer is denied by default."""
    code, out, _ = cli("phone", "session", "--at", "2026-11-24T12:00", capsys=capsys)
    assert (code, out.splitlines()[0]) == (0, "allow")
    code, out, _ = cli("laptop", "shell", "--at", "2026-11-24T12:00", capsys=capsys)
    assert code == 1
    assert out.splitlines()[1:3] == ["  rule:   default deny", '  reason: unknown peer "laptop"']


def test_cli_require_reason(
    cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --reason a policy requiring one denies."""
    code, out, _ = cli("phone", "shell", "--at", "2026-11-24T12:00", capsys=capsys)
    assert code == 1
    assert "  rule:   peers.phone.policy.require_reason" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["phone", "action", "kettle.on", "temp"], "action arguments are ARG=VALUE"),
        (["phone", "action", "kettle.on", "temp=1", "temp=2"], "given twice"),
        (["phone", "shell", "--at", "yesterday"], "--at: 'yesterday' is not an ISO date"),
        (["phone", "forward", "camera.local"], "forward:"),
        (["phone", "exec", "--"], "exec: give the command"),
        (["phone", "session", "--reason", "x"], "sessions carry no reason"),
    ],
)
def test_cli_usage_errors_exit_2(
    argv: list[str],
    message: str,
    cli: Callable[..., tuple[int, str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Malformed arguments print a message on stderr and exit 2."""
    code, out, err = cli(*argv, capsys=capsys)
    assert (code, out) == (2, "")
    assert message in err


@pytest.mark.parametrize("argv", [[], ["phone"], ["phone", "teleport"], ["phone", "file"]])
def test_cli_argparse_errors_exit_2(
    argv: list[str], cli: Callable[..., tuple[int, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing or unknown words are argparse usage errors (exit 2)."""
    with pytest.raises(SystemExit) as info:
        cli(*argv, capsys=capsys)
    assert info.value.code == 2


def test_cli_config_error_names_key_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid policy fails with the file, line and key on stderr (exit 78)."""
    text = config_text('[peers.phone.policy]\nshell = true\nrate = "fast"\n')
    path = write_config(tmp_path, text)
    code = main(["--config", str(path), "policy", "check", "phone", "shell"])
    _, err = capsys.readouterr()
    assert code == 78
    assert f"{path}:{line_of(text, 'rate =')}: peers.phone.policy.rate: must be" in err


def test_running_sessions_are_judged_on_time_not_on_max_sessions() -> None:
    """check(running=True): an open session is one of those counted, but expiry still ends it."""
    policy = make_policy("[peers.phone.policy]\nmax_sessions = 1\n")
    assert policy.session_opened("phone").allowed
    assert not policy.check("phone", SessionRequest(), at=AT).allowed  # no room for another
    assert policy.check("phone", SessionRequest(), at=AT, running=True).allowed
    assert not policy.time_bound("phone") and not policy.time_bound("nobody")
    timed = make_policy(WINDOWS)
    assert timed.time_bound("phone")
    night = datetime(2026, 11, 23, 23, 0)  # Mon 23:00: outside the windows
    decision = timed.check("phone", SessionRequest(), at=night, running=True)
    assert not decision.allowed and decision.rule == "peers.phone.policy.when"
    expired = make_policy("[peers.phone.policy]\nexpires = 2001-01-01T00:00:00Z\n")
    assert expired.time_bound("phone")
    assert not expired.check("phone", SessionRequest(), at=AT, running=True).allowed


def test_carried_sessions_stay_counted_above_a_lowered_maximum() -> None:
    """A reload hands over the open-session counts as they are, even above max_sessions."""
    policy = make_policy("[peers.phone.policy]\nmax_sessions = 2\n")
    policy.carry_sessions({"phone": 3, "nobody": 2, "zero": 0})
    assert policy.sessions("phone") == 3 and policy.sessions("nobody") == 0
    policy.session_closed("phone")
    assert not policy.session_opened("phone").allowed  # 2 still open, 2 allowed


def test_forward_listen_is_denied_by_default_and_allowed_where_listed() -> None:
    """forward_listen: no list, no listening; a listed address and port range allow it."""
    from pstp.daemon.policy import ListenRequest

    bare = make_policy()
    assert bare.check("phone", ListenRequest("127.0.0.1", 2222), at=AT) == Decision(
        False, "default deny", "peers.phone.policy.forward_listen allows no listening"
    )
    policy = make_policy(FULL + 'forward_listen = ["2200-2299", "0.0.0.0:8080"]\n')
    ok = policy.check("phone", ListenRequest("127.0.0.1", 2222), at=AT)
    assert ok.allowed and ok.rule == 'peers.phone.policy.forward_listen[0] "2200-2299"'
    assert policy.check("phone", ListenRequest("0.0.0.0", 8080), at=AT).allowed
    wide = policy.check("phone", ListenRequest("0.0.0.0", 2222), at=AT)
    assert wide.reason == '"0.0.0.0:2222" is not in peers.phone.policy.forward_listen'
    assert policy.check("phone", ListenRequest("127.0.0.1", 70000), at=AT).reason == (
        "port 70000 is out of range (0-65535)"
    )


def test_forward_cidr_and_port_range_rules() -> None:
    """A range rule allows an address inside it, not a name; a port range its ports."""
    policy = make_policy(FULL.replace('"[::1]:22"]', '"[::1]:22", "10.1.0.0/16:8000-8099"]'))
    assert policy.check("phone", ForwardRequest("10.1.2.3", 8042), at=AT).allowed
    assert not policy.check("phone", ForwardRequest("10.1.2.3", 8100), at=AT).allowed
    assert not policy.check("phone", ForwardRequest("nas.lan", 8042), at=AT).allowed


def test_an_ipv4_mapped_target_is_judged_as_the_ipv4_address() -> None:
    """::ffff:127.0.0.1 is 127.0.0.1: an IPv6 range rule does not reach it, an IPv4 rule does."""
    policy = make_policy(FULL.replace('"[::1]:22"]', '"[::1]:22", "[::/0]:8080"]'))
    assert not policy.check("phone", ForwardRequest("::ffff:127.0.0.1", 8080), at=AT).allowed
    assert policy.check("phone", ForwardRequest("::ffff:127.0.0.1", 554), at=AT).allowed
