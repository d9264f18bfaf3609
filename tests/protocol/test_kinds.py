"""pstp.protocol.kinds against docs/test-vectors/kinds.json (docs/protocol.md §17.4-§17.15)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pstp.exceptions import ChannelFailure
from pstp.protocol.kinds import (
    KINDS,
    ActionOpen,
    BadParams,
    ExecOpen,
    ForwardInOpen,
    ForwardOpen,
    ListenOpen,
    ShellOpen,
    action_args,
)
from pstp.wire.messages import ChannelCode, Open, decode_control, encode_control

VECTORS = json.loads(
    (Path(__file__).parents[2] / "docs" / "test-vectors" / "kinds.json").read_text()
)["kinds"]
#: Every kind's params struct: those a client opens (KINDS) and ``forward-in``,
#: which the device opens toward the peer (§17.15).
CLASSES = {**KINDS, **{cls.KIND: cls for cls in (ForwardOpen, ListenOpen, ForwardInOpen)}}


def cases(section: str) -> list[Any]:
    """Every (kind, case) pair of one section of the vectors."""
    return [
        pytest.param(kind, case, id=f"{kind}-{i}")
        for kind, entry in VECTORS.items()
        for i, case in enumerate(entry[section])
    ]


def test_every_kind_has_vectors() -> None:
    """The vectors cover exactly the kinds the module defines; none is reserved any more."""
    kinds = {"action", "actions", "exec", "shell", "ping", "file", "token"}
    kinds |= {"forward", "forward-listen", "forward-in"}
    assert set(VECTORS) == set(CLASSES) == kinds
    assert set(KINDS) <= kinds
    assert [k for k, e in VECTORS.items() if e["reserved"]] == []
    for kind in ("forward", "forward-listen", "forward-in"):
        assert all(VECTORS[kind][section] for section in ("valid", "decode", "rejected"))


@pytest.mark.parametrize(("kind", "case"), cases("valid"))
def test_encoder_gives_the_published_params(kind: str, case: dict[str, Any]) -> None:
    """Each struct encodes to the published params map and MessagePack bytes, and back."""
    cls = CLASSES[kind]
    obj = cls(**case["fields"])
    params = obj.to_params()
    assert params == case["params"]
    assert list(params) == list(case["params"])  # the order the bytes follow
    assert msgspec.msgpack.encode(params).hex() == case["msgpack"]
    assert cls.from_params(case["params"]) == obj


@pytest.mark.parametrize(("kind", "case"), cases("decode"))
def test_decoder_accepts(kind: str, case: dict[str, Any]) -> None:
    """Params a receiver accepts decode to the published fields."""
    obj = CLASSES[kind].from_params(case["params"])
    assert msgspec.structs.asdict(obj) == case["fields"]


@pytest.mark.parametrize(("kind", "case"), cases("rejected"))
def test_decoder_rejects_with_bad_params(kind: str, case: dict[str, Any]) -> None:
    """Invalid params raise BadParams: a ChannelFailure with code BAD_PARAMS and the reason."""
    with pytest.raises(BadParams) as info:
        CLASSES[kind].from_params(case["params"])
    assert isinstance(info.value, ChannelFailure)
    assert info.value.code == ChannelCode.BAD_PARAMS == 9
    assert info.value.reason == case["reason"]
    assert info.value.reason.startswith("bad params: ")


@pytest.mark.parametrize(("kind", "case"), cases("valid"))
def test_params_travel_in_open(kind: str, case: dict[str, Any]) -> None:
    """An OPEN carrying the encoded params decodes to them (the wire form of §14.4)."""
    msg = Open(3, kind, 65536, CLASSES[kind](**case["fields"]).to_params())
    assert decode_control(encode_control(msg)) == msg


def test_action_args_undo_the_prefix() -> None:
    """action_args keeps only non-empty ``arg.`` keys, without the prefix."""
    assert action_args({"name": "a", "arg.x": 1, "arg.": 2, "argx": 3}) == {"x": 1}


_TEXT = st.text(max_size=20)
_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), _TEXT)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=_TEXT,
    reason=st.none() | _TEXT,
    args=st.dictionaries(st.text(min_size=1, max_size=10), _VALUE, max_size=5),
)
def test_action_round_trip(name: str, reason: str | None, args: dict[str, Any]) -> None:
    """Any action OPEN decodes back to itself."""
    obj = ActionOpen(name=name, reason=reason, args=args)
    assert ActionOpen.from_params(obj.to_params()) == obj


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    argv=st.lists(_TEXT, min_size=1, max_size=5).filter(lambda a: bool(a[0])),
    reason=st.none() | _TEXT,
)
def test_exec_round_trip(argv: list[str], reason: str | None) -> None:
    """Any valid exec OPEN decodes back to itself."""
    obj = ExecOpen(argv=argv, reason=reason)
    assert ExecOpen.from_params(obj.to_params()) == obj


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=st.dictionaries(st.sampled_from(["term", "rows", "cols", "reason"]), _VALUE))
def test_shell_decoder_never_fails_otherwise(params: dict[str, Any]) -> None:
    """The shell decoder either decodes or raises BadParams, whatever the values."""
    try:
        obj = ShellOpen.from_params(params)
    except BadParams:
        return
    assert ShellOpen.from_params(obj.to_params()) == obj


_FORWARD_VALUE = st.one_of(
    _VALUE, st.integers(-1, 70000), st.sampled_from(["127.0.0.1", "::1", "[::1]", "a.lan", ""])
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["forward", "forward-listen", "forward-in"]),
    params=st.dictionaries(
        st.sampled_from(["host", "port", "reason", "listen", "origin"]), _FORWARD_VALUE
    ),
)
def test_forward_decoders_never_fail_otherwise(kind: str, params: dict[str, Any]) -> None:
    """The forwarding kinds decode or raise BadParams, whatever the values (§17.14, §17.15)."""
    cls = CLASSES[kind]
    try:
        obj = cls.from_params(params)
    except BadParams:
        return
    assert cls.from_params(obj.to_params()) == obj
