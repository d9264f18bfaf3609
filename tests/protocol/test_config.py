"""Tests for pstp.protocol.config: every validation rule and its boundaries."""

from __future__ import annotations

from typing import Any

import pytest

from pstp.protocol.config import Config
from pstp.wire.frames import MAX_FRAME_BODY, RECORD_HEADER_LEN, TAG_LEN, VERSION, Suite
from pstp.wire.messages import INITIAL_WINDOW, MAX_WINDOW

#: The largest record body whose frame still fits a 24-bit length.
RECORD_LIMIT = MAX_FRAME_BODY - RECORD_HEADER_LEN - TAG_LEN - 1

#: (settings, the rule's message): each breaks exactly one rule, just past its boundary.
BAD: list[tuple[dict[str, Any], str]] = [
    ({"versions": ()}, "PSTP/2"),
    ({"versions": (VERSION + 1,)}, "PSTP/2"),
    ({"suites": ()}, "AES-256-GCM"),
    ({"suites": (Suite.CHACHA20_POLY1305,)}, "AES-256-GCM"),
    ({"max_record_size": 1023}, "max_record_size"),
    ({"max_record_size": RECORD_LIMIT + 1}, "max_record_size"),
    ({"rekey_after_records": 0}, "rekey_after_records"),
    ({"rekey_after_records": 10, "reject_after_records": 10}, "rekey_after_records"),
    ({"rekey_after_bytes": 0}, "rekey_after_bytes"),
    ({"rekey_after_bytes": 10, "reject_after_bytes": 10}, "rekey_after_bytes"),
    ({"ping_burst": 0}, "ping_burst"),
    ({"ping_rate": 0.0}, "ping_rate"),
    ({"max_handshake_size": 255}, "max_handshake_size"),
    ({"max_handshake_size": 65536}, "max_handshake_size"),
    ({"handshake_timeout": 0.0}, "timeouts"),
    ({"handshake_timeout": -1.0}, "timeouts"),
    ({"rekey_after_seconds": 0.0}, "timeouts"),
    ({"keepalive_interval": 0.0}, "keepalive_interval"),
    ({"keepalive_interval": -5.0}, "keepalive_interval"),
    ({"reject_after_records": 1 << 63}, "2\\*\\*63"),
    ({"channel_window": INITIAL_WINDOW - 1}, "channel_window"),
    ({"channel_window": MAX_WINDOW + 1}, "channel_window"),
    ({"max_channels": 0}, "max_channels"),
    ({"keepalive_count_max": 0}, "keepalive_count_max"),
    ({"replay_window": 63}, "replay_window"),
    ({"replay_window": (1 << 16) + 1}, "replay_window"),
]

#: Settings exactly on a boundary, which must be accepted.
EDGES: list[dict[str, Any]] = [
    {"versions": (VERSION,)},
    {"versions": (VERSION + 1, VERSION, 1)},
    {"suites": (Suite.AES_256_GCM,)},
    {"suites": (Suite.CHACHA20_POLY1305, Suite.AES_256_GCM)},
    {"max_record_size": 1024},
    {"max_record_size": RECORD_LIMIT},
    {"rekey_after_records": 1, "reject_after_records": 2},
    {"reject_after_records": (1 << 63) - 1},
    {"rekey_after_bytes": 1, "reject_after_bytes": 2},
    {"max_handshake_size": 256},
    {"max_handshake_size": 65535},
    {"handshake_timeout": 1e-9, "rekey_after_seconds": 1e-9},
    {"keepalive_interval": None},
    {"keepalive_interval": 1e-9},
    {"channel_window": INITIAL_WINDOW},
    {"channel_window": MAX_WINDOW},
    {"max_channels": 1},
    {"keepalive_count_max": 1},
    {"replay_window": 64},
    {"replay_window": 1 << 16},
]


def _ids(settings: dict[str, Any]) -> str:
    return ",".join(f"{k}={v!r}" for k, v in settings.items())


@pytest.mark.parametrize(("settings", "rule"), [pytest.param(s, r, id=_ids(s)) for s, r in BAD])
def test_each_rule_refuses_a_value_past_its_boundary(settings: dict[str, Any], rule: str) -> None:
    """A value just outside a documented range raises ValueError naming the rule."""
    with pytest.raises(ValueError, match=rule):
        Config(**settings)


@pytest.mark.parametrize("settings", [pytest.param(s, id=_ids(s)) for s in EDGES])
def test_boundary_values_are_accepted(settings: dict[str, Any]) -> None:
    """A value exactly on a boundary is accepted and kept as given."""
    config = Config(**settings)
    for name, value in settings.items():
        assert getattr(config, name) == value


def test_the_bad_cases_cover_every_field_with_a_rule() -> None:
    """Every field except the free-form ones has a refused value above."""
    checked = {name for settings, _ in BAD for name in settings}
    free = {"ordered", "service"}
    assert checked | free == set(Config.__struct_fields__)


def test_defaults_are_valid_and_frozen() -> None:
    """The defaults pass validation, offer both suites, and cannot be changed in place."""
    config = Config()
    assert config.versions == (VERSION,)
    assert config.suites[0] is Suite.AES_256_GCM
    assert config.rekey_after_records < config.reject_after_records
    with pytest.raises(AttributeError):
        config.max_record_size = 1  # type: ignore[misc]
