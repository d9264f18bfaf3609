"""pstp.daemon.policy.model: the Decision, exec rules, time windows and forward targets."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pstp.daemon.policy.model import (
    Decision,
    ExecRule,
    TimeWindow,
    parse_pattern,
    parse_target,
)


def test_decision_str_names_verdict_reason_and_rule() -> None:
    """str(Decision) is a one-line log entry."""
    decision = Decision(False, "default deny", 'unknown peer "x"')
    assert str(decision) == 'deny: unknown peer "x" [default deny]'


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
_pattern_element = st.one_of(_text, st.sampled_from(["*", "?", "[", "[!a]", "-*", "**", "/srv/*"]))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    command=st.text(min_size=1, max_size=8).filter(lambda s: not set(s) & set("*?[")),
    rest=st.lists(_pattern_element, max_size=5),
    argv=st.lists(_text, max_size=8),
)
def test_exec_matcher_never_crashes(command: str, rest: list[str], argv: list[str]) -> None:
    """Arbitrary argvs against arbitrary entries give a match or a reason, never an exception."""
    try:
        rule = ExecRule((command, *rest))
    except ValueError:
        assert "**" in rest[:-1]
        return
    result = rule.mismatch(argv)
    assert result is None or isinstance(result, str)
    result = rule.mismatch([command, *argv])
    assert result is None or isinstance(result, str)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=st.sampled_from(["echo", "ls"]), args=st.lists(_text, max_size=8))
def test_double_star_matches_any_remaining_args(command: str, args: list[str]) -> None:
    """[cmd, "**"] matches cmd with any args, except option-like ones and ".." components."""
    rule = ExecRule(("echo", "**"))
    expected = command == "echo" and not any(
        a.startswith("-") or ".." in a.split("/") for a in args
    )
    assert (rule.mismatch([command, *args]) is None) == expected


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fixed=st.lists(_text.filter(lambda s: not set(s) & set("*?[")), max_size=5),
    argv=st.lists(_text, max_size=6),
)
def test_literal_entries_match_only_equal_argv(fixed: list[str], argv: list[str]) -> None:
    """An entry without wildcards matches exactly the identical argv."""
    rule = ExecRule(("cmd", *fixed))
    assert (rule.mismatch(["cmd", *argv]) is None) == (argv == fixed)


def test_double_star_only_last_and_command_literal() -> None:
    """ExecRule refuses "**" before the end and globs in the command."""
    with pytest.raises(ValueError, match="last element"):
        ExecRule(("ls", "**", "x"))
    with pytest.raises(ValueError, match="literal"):
        ExecRule(("l*",))
    with pytest.raises(ValueError, match="literal"):
        ExecRule(())


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.integers(0, 1439),
    end=st.integers(0, 1439),
    moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_all_days_window_is_a_minute_interval(start: int, end: int, moment: datetime) -> None:
    """On every day, a window holds exactly on the minutes from..to, wrapping past midnight."""
    window = TimeWindow(frozenset(range(7)), start, end)
    minute = moment.hour * 60 + moment.minute
    inside = start <= minute <= end if start <= end else (minute >= start or minute <= end)
    assert window.contains(moment) is inside


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a.b:1", ("a.b", 1)), ("[::1]:22", ("::1", 22)), (" Host:65535 ", ("host", 65535))],
)
def test_parse_target(text: str, expected: tuple[str, int]) -> None:
    """parse_target splits and normalises HOST:PORT."""
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    "text", ["host", "::1:22", "host:", ":80", "h:0", "h:65536", "h:x", "*:80"]
)
def test_parse_target_refuses_bad_targets(text: str) -> None:
    """A port is required, IPv6 needs brackets, and hosts are literal."""
    with pytest.raises(ValueError):
        parse_target(text)


def test_decision_refusal_is_none_when_allowed_else_the_reason() -> None:
    """A Decision is a session-core verdict: refusal is None or the reason."""
    from pstp.daemon.policy import Decision

    assert Decision(True, "r", "ok").refusal is None
    assert Decision(False, "default deny", "no rule").refusal == "no rule"


@pytest.mark.parametrize(
    ("text", "listen", "allowed", "denied"),
    [
        ("camera.local:80", False, [("camera.local", 80)], [("camera.local", 81)]),
        ("*.lan:80-89", False, [("tv.lan", 80), ("nas.lan", 89)], [("nas.lan", 90), ("lan", 80)]),
        ("192.168.1.0/24:*", False, [("192.168.1.7", 1)], [("192.168.2.7", 1), ("nas.lan", 1)]),
        ("[2001:db8::/32]:443", False, [("2001:db8::5", 443)], [("2001:db9::5", 443)]),
        ("[::1]:22", False, [("::1", 22)], [("::2", 22)]),
        ("2222", True, [("127.0.0.1", 2222)], [("0.0.0.0", 2222), ("127.0.0.1", 2223)]),
        ("0.0.0.0:*", True, [("0.0.0.0", 0), ("0.0.0.0", 65535)], [("127.0.0.1", 80)]),
    ],
)
def test_forward_patterns_match_names_globs_addresses_and_ranges(
    text: str, listen: bool, allowed: list[tuple[str, int]], denied: list[tuple[str, int]]
) -> None:
    """A CIDR range matches addresses, never a name (no DNS in the policy)."""
    pattern = parse_pattern(text, listen=listen)
    assert all(pattern.matches(h, p) for h, p in allowed)
    assert not any(pattern.matches(h, p) for h, p in denied)


@pytest.mark.parametrize(
    ("text", "listen", "message"),
    [
        ("camera.local", False, "is not HOST:PORT"),
        ("::1:22", False, "write IPv6 addresses as"),
        ("a:0", False, "ports are 1-65535"),
        ("a:90-80", False, "ports are 1-65535"),
        ("a:x", False, "PORT is a port"),
        ("10.0.0.300/8:80", False, "is not a CIDR range"),
        ("localhost:22", True, "listen on an IP address"),
        ("[::1:22", False, "is not HOST:PORT"),
    ],
)
def test_bad_forward_patterns_are_refused(text: str, listen: bool, message: str) -> None:
    """What is wrong, in words."""
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_pattern(text, listen=listen)
