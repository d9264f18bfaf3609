"""Issue 11's policy fixes: option injection through action arguments, refusals
spending rate tokens, and exec path patterns resolved on the device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pstp.cli.main import main
from pstp.daemon.policy import ActionRequest, ExecRequest, ExecRule, Policy, ShellRequest, model
from pstp.settings import ConfigError
from tests.daemon.policy.support import AT, config_text, make_policy, write_config

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


# --------------------------------------------------------------------------- item 10


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """A shared directory holding a file, a subdirectory, and symbolic links leading in
    and out of it (to a secret next to it, to a missing file, through a directory)."""
    tmp_path = tmp_path.resolve()  # the resolved paths below are compared as strings
    root = tmp_path / "share"
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("notes\n")
    (root / "sub" / "deep.txt").write_text("deep\n")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "shadow").write_text("root:x\n")
    (root / "out").symlink_to(secret / "shadow")
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    (root / "dir").symlink_to(secret)
    (root / "in").symlink_to(root / "sub" / "deep.txt")
    (root / "key.txt").symlink_to(root / "sub" / "deep.key")
    return root


def _exec_policy(*entries: list[str]) -> Policy:
    rules = ", ".join("[" + ", ".join(f'"{e}"' for e in entry) + "]" for entry in entries)
    return make_policy(f"[peers.phone.policy]\nexec = [{rules}]\n")


@pytest.mark.parametrize(
    ("pattern", "fixed"),
    [
        ("/srv/share/*", "/srv/share"),
        ("/srv/share/*.txt", "/srv/share"),
        ("/srv/*/logs/*", "/srv"),
        ("/srv/sh?re/x", "/srv"),
        ("/srv/[ab]/x", "/srv"),
        ("/*", "/"),
        ("/srv/share/file", None),
        ("share/*", None),
        ("--file=/srv/*", None),
        ("**", None),
    ],
)
def test_path_patterns_and_their_fixed_directory(pattern: str, fixed: str | None) -> None:
    """An absolute path with a glob character is a path pattern; the rest are not."""
    assert model.path_pattern_dir(pattern) == fixed


def test_a_symlink_out_of_a_path_pattern_is_refused(share: Path) -> None:
    """`cat ROOT/out` with out -> ../secret/shadow matched lexically and ran: now refused,
    and the reason does not reveal the link's target."""
    policy = _exec_policy(["cat", f"{share}/*"])
    for name in ("out", "dangling", "dir/shadow"):
        decision = policy.check("phone", ExecRequest(["cat", f"{share}/{name}"]), at=AT)
        assert not decision.allowed, name
        assert decision.reason.startswith("argument 1 leaves ")
        assert decision.rule.startswith("peers.phone.policy.exec[0] ")
        assert "secret" not in decision.reason and "nowhere" not in decision.reason


def test_resolved_paths_inside_are_allowed_and_run_resolved(share: Path) -> None:
    """Files and links that stay inside are allowed; the decision's argv holds the resolved
    path (so the path checked is the path run), the other arguments untouched."""
    policy = _exec_policy(["cat", "-n", f"{share}/*"], ["cat", f"{share}/*", "**"])
    plain = policy.check("phone", ExecRequest(["cat", "-n", f"{share}/notes.txt"]), at=AT)
    assert plain.allowed and plain.argv == ("cat", "-n", str(share / "notes.txt"))
    linked = policy.check("phone", ExecRequest(["cat", f"{share}/in", "x"]), at=AT)
    assert linked.allowed and linked.argv == ("cat", str(share / "sub" / "deep.txt"), "x")
    missing = policy.check("phone", ExecRequest(["cat", f"{share}/not-yet"]), at=AT)
    assert missing.allowed and missing.argv == ("cat", str(share / "not-yet"))


def test_a_resolved_path_must_still_match_the_glob(share: Path) -> None:
    """key.txt -> sub/deep.key stays in the directory but is no *.txt file: refused."""
    policy = _exec_policy(["cat", f"{share}/*.txt"])
    assert policy.check("phone", ExecRequest(["cat", f"{share}/notes.txt"]), at=AT).allowed
    refused = policy.check("phone", ExecRequest(["cat", f"{share}/key.txt"]), at=AT)
    assert not refused.allowed and "no longer matches" in refused.reason


def test_the_fixed_directory_may_itself_be_a_link(share: Path, tmp_path: Path) -> None:
    """A pattern naming a linked directory confines to where that directory really is."""
    alias = tmp_path / "alias"
    alias.symlink_to(share)
    policy = _exec_policy(["cat", f"{alias}/*"])
    ok = policy.check("phone", ExecRequest(["cat", f"{alias}/notes.txt"]), at=AT)
    assert ok.allowed and ok.argv == ("cat", str(share / "notes.txt"))
    assert not policy.check("phone", ExecRequest(["cat", f"{alias}/out"]), at=AT).allowed


def test_dot_dot_and_literal_elements(share: Path) -> None:
    """`..` stays refused lexically; a literal element is the owner's exact path and is
    passed on as it is (not resolved); a final "**" is not resolved either."""
    policy = _exec_policy(["cat", f"{share}/*"], ["cat", f"{share}/out"], ["echo", "**"])
    dotdot = policy.check("phone", ExecRequest(["cat", f"{share}/sub/../out"]), at=AT)
    assert not dotdot.allowed and '".." component' in dotdot.reason
    literal = policy.check("phone", ExecRequest(["cat", f"{share}/out"]), at=AT)
    assert literal.allowed and literal.argv == ("cat", f"{share}/out")
    tail = policy.check("phone", ExecRequest(["echo", f"{share}/out"]), at=AT)
    assert tail.allowed and tail.argv == ("echo", f"{share}/out")


def test_exec_rule_confine_directly(share: Path) -> None:
    """ExecRule.confine: the resolved argv, or ValueError naming the argument."""
    rule = ExecRule(("cat", f"{share}/*"))
    assert rule.confine(["cat", f"{share}/in"]) == ("cat", str(share / "sub" / "deep.txt"))
    with pytest.raises(ValueError, match="argument 1"):
        rule.confine(["cat", f"{share}/out"])


def test_policy_check_cli_shows_resolution(
    share: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pstp policy check` denies the link out, and shows the resolved argv of a link in."""
    cfg = write_config(
        tmp_path, config_text(f'[peers.phone.policy]\nexec = [["cat", "{share}/*"]]\n')
    )
    os.chmod(cfg, 0o600)
    check = ["--config", str(cfg), "policy", "check", "phone", "exec", "--"]
    assert main([*check, "cat", f"{share}/out"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("deny") and "once symbolic links are resolved" in out
    assert main([*check, "cat", f"{share}/in"]) == 0
    out = capsys.readouterr().out
    assert f'runs:   ["cat", "{share}/sub/deep.txt"] (paths resolved)' in out
