"""docs/configuration.md against pstp.settings.SCHEMA, both ways, and the schema's defaults
against what the code does when a key is absent."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from pstp.daemon import actions as action_runner
from pstp.daemon.audit import audit_path, audit_reserve
from pstp.daemon.policy import ArgSpec, PeerPolicy, TimeWindow
from pstp.daemon.policy import load as policy_load
from pstp.daemon.policy.load import read_policy
from pstp.settings import SCHEMA, Settings, check_keys, load, schema_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
KEY = "ab" * 32
Row = tuple[str, str, str, str]


def documented() -> dict[str, dict[str, Row]]:
    """The key tables of the doc: heading -> key -> (key, type, default, meaning)."""
    tables: dict[str, dict[str, Row]] = {}
    heading = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            continue
        m = re.fullmatch(r"\| `([^`]+)` \| (.+?) \| (.+?) \| (.+) \|", line)
        if m and heading is not None:
            rows = tables.setdefault(heading, {})
            assert m[1] not in rows, f"{heading}: {m[1]} is documented twice"
            rows[m[1]] = (m[1], m[2], m[3], m[4])
    return tables


def expected_row(table: str, name: str) -> str:
    key = next(k for k in schema_table(table).keys if k.name == name)
    return f"| `{key.name}` | {key.type} | {key.default} | {key.help} |"


def test_every_schema_key_is_documented_with_its_type_default_and_meaning() -> None:
    """Each key of each schema table has its row, under its table's heading, as the code says."""
    doc = documented()
    for table in SCHEMA:
        assert table.heading in doc, f"docs/configuration.md has no '## {table.heading}' table"
        rows = doc[table.heading]
        for key in table.keys:
            assert key.name in rows, (
                f"{table.heading} {key.name} is not documented; add:\n"
                + expected_row(table.name, key.name)
            )
            assert rows[key.name] == (key.name, key.type, key.default, key.help), (
                f"{table.heading} {key.name} differs from pstp.settings.SCHEMA; write:\n"
                + expected_row(table.name, key.name)
            )


def test_every_documented_key_exists() -> None:
    """No table or key in the doc that the schema (and so the loader) does not know."""
    headings = {t.heading: t for t in SCHEMA}
    for heading, rows in documented().items():
        assert heading in headings, f"docs/configuration.md documents an unknown table {heading}"
        assert list(rows) == list(headings[heading].names()), heading


def test_schema_nesting_reaches_every_table() -> None:
    """Every table but the top level is held by a key, so the unknown-key check reaches it."""
    held = {k.holds for t in SCHEMA for k in t.keys if k.holds}
    assert held == {t.name for t in SCHEMA} - {""}
    assert all(k.shape in ("table", "map", "array") for t in SCHEMA for k in t.keys)


def test_loaders_key_lists_are_the_schema() -> None:
    """The action runner's and the policy loader's own key lists agree with the schema."""
    assert set(schema_table('actions."NAME"').names()) == action_runner._KEYS
    arg_keys: set[str] = set().union(*policy_load._ARG_KEYS.values())
    assert set(schema_table('actions."NAME".args.ARG').names()) == arg_keys
    assert schema_table("peers.NAME.policy").names() == policy_load._POLICY_KEYS


# --------------------------------------------------------------------------- defaults

MINIMAL = f"""\
[device]
id = "home"

[actions.say]
argv = ["/bin/echo", "{{word}}"]
args = {{ word = {{ type = "str" }} }}

[peers.phone]
key = "{KEY}"

[peers.phone.policy]
when = [{{ days = ["mon"] }}, {{ from = "08:00" }}]
files = [{{ root = "/srv" }}]
"""


@pytest.fixture
def minimal(tmp_path: Path) -> Settings:
    path = tmp_path / "pstp.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    path.chmod(0o600)
    return load(path)


def _policy(s: Settings) -> PeerPolicy:
    policy = read_policy(s.data, path=s.path)[1]["phone"]
    assert policy is not None
    return policy


def _bare_policy(s: Settings) -> PeerPolicy:
    """The policy of an empty ``[peers.phone.policy]`` table."""
    policy = read_policy({**s.data, "peers": {"phone": {"policy": {}}}}, path=s.path)[1]["phone"]
    assert policy is not None
    return policy


def _arg(s: Settings) -> ArgSpec:
    return read_policy(s.data, path=s.path)[0]["say"].args["word"]


def _action(s: Settings) -> action_runner.ActionSpec:
    return action_runner.load_actions(s)["say"]


def _window(s: Settings, index: int = 0) -> TimeWindow:
    windows = _policy(s).when
    assert windows is not None
    return windows[index]


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _only_actions(s: Settings, actions: dict[str, object]) -> Settings:
    return Settings(s.path, s.device_id, s.listen, s.discovery, s.stealth, s.peers, actions)


#: How the code's value for each key whose documented default is a TOML value is read
#: from a configuration that leaves that key out, and turned into the TOML value.
EFFECTIVE: dict[str, Callable[[Settings], object]] = {
    "device.listen": lambda s: [f"{h}:{p}" for h, p in s.listen],
    "device.discovery": lambda s: s.discovery,
    "device.stealth": lambda s: s.stealth,
    "device.advertise": lambda s: [str(a) for a in s.advertise],
    "peers.NAME.via": lambda s: list(s.peers["phone"].via),
    "peers.NAME.reach": lambda s: list(s.peers["phone"].reach),
    "peers.NAME.policy.actions": lambda s: list(_bare_policy(s).actions),
    "peers.NAME.policy.exec": lambda s: list(_bare_policy(s).exec),
    # None when not set, which denies as false does (pstp.daemon.policy.check).
    "peers.NAME.policy.shell": lambda s: bool(_bare_policy(s).shell),
    "peers.NAME.policy.require_reason": lambda s: _bare_policy(s).require_reason,
    "peers.NAME.policy.files": lambda s: list(_bare_policy(s).files),
    "peers.NAME.policy.forward": lambda s: list(_bare_policy(s).forward),
    "peers.NAME.policy.forward_listen": lambda s: list(_bare_policy(s).forward_listen),
    "peers.NAME.policy.when.from": lambda s: _hhmm(_window(s).start),
    "peers.NAME.policy.when.to": lambda s: _hhmm(_window(s).end),
    "peers.NAME.policy.files.write": lambda s: _policy(s).files[0].write,
    'actions."NAME".timeout': lambda s: _action(s).timeout,
    'actions."NAME".max_output': lambda s: _action(s).max_output,
    'actions."NAME".args': lambda s: (
        action_runner.load_actions(_only_actions(s, {"actions": {"x": {"argv": ["/bin/true"]}}}))[
            "x"
        ].args
    ),
    'actions."NAME".description': lambda s: _action(s).description,
    'actions."NAME".args.ARG.max_len': lambda s: _arg(s).max_len,
    'actions."NAME".args.ARG.allow_dash': lambda s: _arg(s).allow_dash,
    "audit.reserve_mib": lambda s: audit_reserve(s) >> 20,
}


def literal_defaults() -> dict[str, object]:
    """Every schema key whose default is one TOML value in backticks, parsed."""
    found = {}
    for table in SCHEMA:
        for key in table.keys:
            m = re.fullmatch(r"`([^`]*)`", key.default)
            if m:
                name = f"{table.name}.{key.name}" if table.name else key.name
                found[name] = tomllib.loads(f"v = {m[1]}")["v"]
    return found


def test_every_literal_default_is_checked_against_the_code() -> None:
    """A key given a TOML default in the schema must have its effective value read here."""
    assert set(literal_defaults()) == set(EFFECTIVE)


@pytest.mark.parametrize("key", sorted(EFFECTIVE))
def test_documented_default_is_what_the_code_uses(key: str, minimal: Settings) -> None:
    """Leaving the key out gives the documented default."""
    assert EFFECTIVE[key](minimal) == literal_defaults()[key]


def test_worded_defaults(minimal: Settings) -> None:
    """The defaults written in words: no policy limits, all days, the audit file's place."""
    policy = _bare_policy(minimal)
    assert (policy.when, policy.expires, policy.rate, policy.max_sessions) == (None,) * 4
    assert _window(minimal, 1).days == frozenset(range(7))
    assert audit_path(minimal) == minimal.path.parent / "audit.sqlite"
    assert _arg(minimal).required


def test_the_minimal_example_and_the_doc_example_pass_the_key_check(minimal: Settings) -> None:
    """The doc's example uses only known keys."""
    text = DOC.read_text(encoding="utf-8")
    example = re.search(r"## Example\n\n```toml\n(.*?)```", text, re.S)
    assert example is not None
    check_keys(tomllib.loads(example[1]), DOC, example[1])
    check_keys(minimal.data, minimal.path, MINIMAL)
