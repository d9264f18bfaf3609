"""Issue 11's policy fixes: option injection through action arguments, refusals
spending rate tokens, and exec path patterns resolved on the device."""

from __future__ import annotations

import pytest

from pstp.daemon.policy import ActionRequest, Policy, ShellRequest
from pstp.settings import ConfigError
from tests.daemon.policy.support import AT, make_policy

# --------------------------------------------------------------------------- item 11

DASH_ACTIONS = """\
[actions.sort]
argv = ["/usr/bin/sort", "{file}"]
args = { file = { type = "str" } }

[actions.flags]
argv = ["/usr/bin/sort", "{flags}", "--", "{file}"]
args = { flags = { type = "str", allow_dash = true }, file = { type = "str" } }

[actions.inside]
argv = ["/usr/bin/tool", "--file={file}", "x{file}", "{n}"]
args = { file = { type = "str" }, n = { type = "int", min = -9, max = 9 } }

[actions.pair]
argv = ["/usr/bin/tool", "{a}{b}"]
args = { a = { type = "str", default = "" }, b = { type = "str" } }

[actions.owner]
argv = ["/usr/bin/tool", "{mode}"]
args = { mode = { type = "str", default = "-v" } }
"""
DASH_POLICY = '[peers.phone.policy]\nactions = ["*"]\n'


def _dash() -> Policy:
    return make_policy(DASH_POLICY, actions=DASH_ACTIONS)


def test_a_dash_value_filling_an_argv_element_is_refused() -> None:
    """`-o/etc/x` as the whole element would be an option of sort: refused, and the
    reason says why and names the argument's schema."""
    decision = _dash().check("phone", ActionRequest("sort", {"file": "-o/tmp/x"}), at=AT)
    assert not decision.allowed
    assert decision.rule == "actions.sort.args.file"
    assert decision.reason.startswith(
        'argument "file" starts with "-" and would be read as an option'
    )
    assert "allow_dash = true" in decision.reason
    assert _dash().check("phone", ActionRequest("sort", {"file": "a-o"}), at=AT).allowed
    assert _dash().check("phone", ActionRequest("sort", {"file": "-"}), at=AT).allowed is False


def test_allow_dash_lets_a_value_be_an_option() -> None:
    """With allow_dash = true the value passes; the other argument is still judged."""
    policy = _dash()
    ok = policy.check("phone", ActionRequest("flags", {"flags": "-r", "file": "f"}), at=AT)
    assert ok.allowed and ok.args == {"flags": "-r", "file": "f"}
    bad = policy.check("phone", ActionRequest("flags", {"flags": "-r", "file": "-f"}), at=AT)
    assert not bad.allowed and bad.rule == "actions.flags.args.file"


def test_only_values_that_begin_an_element_are_judged() -> None:
    """Inside an element (`--file={file}`, `x{file}`) a dash is data; numbers are not
    strings; defaults are the owner's own."""
    policy = _dash()
    inside = policy.check("phone", ActionRequest("inside", {"file": "-x", "n": -3}), at=AT)
    assert inside.allowed
    assert policy.check("phone", ActionRequest("owner"), at=AT).allowed
    assert not policy.check("phone", ActionRequest("owner", {"mode": "-v"}), at=AT).allowed


def test_an_empty_value_leaves_the_next_one_at_the_start() -> None:
    """In `{a}{b}` an empty `a` puts `b` first, so `b` is judged; a non-empty `a` covers it."""
    policy = _dash()
    assert not policy.check("phone", ActionRequest("pair", {"b": "-o"}), at=AT).allowed
    assert policy.check("phone", ActionRequest("pair", {"a": "x", "b": "-o"}), at=AT).allowed
    refused = policy.check("phone", ActionRequest("pair", {"a": "-o", "b": "y"}), at=AT)
    assert not refused.allowed and refused.rule == "actions.pair.args.a"


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ('{ type = "str", allow_dash = "yes" }', "allow_dash: must be true or false"),
        ('{ type = "int", allow_dash = true }', "allow_dash"),
        ('{ type = "str", allow_dashes = true }', "allow_dashes"),
    ],
)
def test_allow_dash_is_validated(schema: str, message: str) -> None:
    """allow_dash is a boolean of str schemas only; unknown keys stay errors."""
    actions = (
        f'[actions.sort]\nargv = ["/usr/bin/sort", "{{file}}"]\nargs = {{ file = {schema} }}\n'
    )
    with pytest.raises(ConfigError) as info:
        make_policy(DASH_POLICY, actions=actions)
    assert message in str(info.value)
    assert "actions.sort.args.file" in str(info.value)


# --------------------------------------------------------------------------- item 4 (rate)


def test_refused_requests_spend_rate_tokens() -> None:
    """A peer whose every request is refused is held to its rate: once the bucket is
    empty the refusal says rate-limited, and it stays so until the bucket refills."""
    policy = make_policy('[peers.phone.policy]\nrate = "3/min"\n')
    request = ActionRequest("kettle.on")  # no actions allowed: refused by the policy
    first = [policy.admit("phone", request, at=AT, now=10.0) for _ in range(3)]
    assert all(not d.allowed and d.rule == "default deny" for d in first)
    limited = policy.admit("phone", request, at=AT, now=10.0)
    assert (limited.allowed, limited.reason) == (False, "rate limit 3/min exceeded")
    assert limited.rule == 'peers.phone.policy.rate "3/min"'
    assert policy.check("phone", request, at=AT).rule == "default deny"  # check stays pure


def test_refusals_use_up_the_tokens_of_allowed_requests() -> None:
    """Refused and allowed requests share one bucket: refusals first leave nothing."""
    policy = make_policy('[peers.phone.policy]\nshell = true\nrate = "2/sec"\n')
    for _ in range(2):
        assert not policy.admit("phone", ActionRequest("kettle.on"), at=AT, now=0.0).allowed
    shell = policy.admit("phone", ShellRequest(), at=AT, now=0.0)
    assert (shell.allowed, shell.reason) == (False, "rate limit 2/sec exceeded")
    assert policy.admit("phone", ShellRequest(), at=AT, now=0.5).allowed
