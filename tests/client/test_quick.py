"""pstp.client.quick: the pieces both drivers' clients share (addresses, params, failures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pstp.address import Address
from pstp.client.quick import Attempts, action_params, failure_note
from pstp.exceptions import ChannelError
from pstp.settings import add_peer, create, load
from pstp.wire.messages import ChannelCode

KEY = bytes(range(32))


def settings_with(tmp_path: Path, address: str | None) -> Path:
    """A config for "phone" that knows "home" (maybe at a remembered address)."""
    path = create(tmp_path / "phone.toml", "phone")
    add_peer(path, "home", KEY, address=address)
    return path


def test_attempts_try_the_given_address_alone_else_the_remembered_one(tmp_path: Path) -> None:
    """A given address is the only candidate; without one the remembered one is tried."""
    settings = load(settings_with(tmp_path, "10.0.0.2:7000"))
    attempts = Attempts(settings, "home", "10.0.0.9", None)
    assert [c[0] for c in attempts.candidates] == ["10.0.0.9"]
    assert attempts.explicit
    assert attempts.options["device_id"] == "home"
    assert attempts.options["pair_key"] == KEY
    remembered = Attempts(settings, "home", None, None)
    assert [c[1] for c in remembered.candidates] == [Address("tcp", "10.0.0.2", 7000)]
    assert not remembered.explicit
    remembered.give_up()  # nothing given: the caller goes on to discovery


def test_attempts_note_failures_and_remember_a_new_address(tmp_path: Path) -> None:
    """A failure is noted for the message; an address that worked and is new is stored."""
    path = settings_with(tmp_path, None)
    attempts = Attempts(load(path), "home", "127.0.0.1:7001", None)
    attempts.failed("10.0.0.3", ConnectionRefusedError(111, "Connect call failed ('10.0.0.3', 1)"))
    attempts.failed("10.0.0.4", TimeoutError())
    # The cause in words, from the errno: not asyncio's text, which repeats the address.
    assert attempts.tried == [
        "10.0.0.3 (given): connection refused",
        "10.0.0.4 (given): no answer (timed out)",
    ]
    attempts.worked("127.0.0.1:7001")
    assert load(path).peers["home"].address == "127.0.0.1:7001"


def test_attempts_unknown_peer(tmp_path: Path) -> None:
    """An unknown peer is a KeyError, as before."""
    with pytest.raises(KeyError):
        Attempts(load(settings_with(tmp_path, None)), "kettle", None, None)


def test_action_params_use_the_arg_prefix() -> None:
    """An action's OPEN params: name, reason, then arg.<name> keys (§17.6)."""
    assert action_params("gate.open", {"seconds": 30}, None) == {
        "name": "gate.open",
        "reason": None,
        "arg.seconds": 30,
    }


@pytest.mark.parametrize(
    ("code", "reason", "status", "note"),
    [
        (ChannelCode.NOT_FOUND, "command not found: x", 127, b"pstp: command not found: x\n"),
        (ChannelCode.CANNOT_EXECUTE, "cannot execute: y", 126, b"pstp: cannot execute: y\n"),
        (ChannelCode.APPLICATION_ERROR, "", 255, b"pstp: the remote command failed\n"),
        (ChannelCode.APPLICATION_ERROR, "no such action: z", 127, b"pstp: no such action: z\n"),
    ],
)
def test_failure_note(code: int, reason: str, status: int, note: bytes) -> None:
    """A remote failure gives its status and a note for stderr."""
    assert failure_note(ChannelError(1, code, reason)) == (status, note)


def test_failure_note_raises_other_codes() -> None:
    """A refusal or a cancellation is not a failure of what ran: it is raised."""
    exc = ChannelError(1, ChannelCode.REFUSED, "no")
    with pytest.raises(ChannelError) as info:
        failure_note(exc)
    assert info.value is exc


def test_the_reach_ladder_follows_reach_and_sorts_via_by_transport(tmp_path: Path) -> None:
    """direct (remembered, then TCP via), lan, websocket and mqtt (those via), in the
    configured order; a step left out of ``reach`` is not tried; ``--address`` is alone."""
    path = create(tmp_path / "phone.toml", "phone")
    via = ["mqtt://broker.example.net", "wss://home.example.org/pstp", "10.0.0.7:9000"]
    add_peer(path, "home", KEY, address="10.0.0.2:7000", extra={"via": via})
    ladder = Attempts(load(path), "home", None, None)
    assert [(step, [a for a, _ in found]) for step, found in ladder.steps] == [
        ("direct", ["10.0.0.2:7000", "10.0.0.7:9000"]),
        ("lan", []),
        ("websocket", ["wss://home.example.org/pstp"]),
        ("mqtt", ["mqtt://broker.example.net"]),
    ]
    text = path.read_text().replace("[peers.home]", '[peers.home]\nreach = ["mqtt", "direct"]')
    path.write_text(text)
    reordered = Attempts(load(path), "home", None, None)
    assert [step for step, _ in reordered.steps] == ["mqtt", "direct"]
    assert next(a for a, _ in reordered.candidates) == "mqtt://broker.example.net"
    given = Attempts(load(path), "home", "ws://10.0.0.9/pstp", None)
    assert [(s, [a for a, _ in f]) for s, f in given.steps] == [("given", ["ws://10.0.0.9/pstp"])]


def test_a_bad_reach_is_refused_with_the_steps(tmp_path: Path) -> None:
    """An unknown or repeated step: the configuration says which steps exist."""
    from pstp.settings import ConfigError

    path = create(tmp_path / "phone.toml", "phone")
    add_peer(path, "home", KEY)
    for bad in ('["direct", "carrier-pigeon"]', '["mqtt", "mqtt"]', '"mqtt"'):
        path.write_text(path.read_text().split("reach =")[0].rstrip() + f"\nreach = {bad}\n")
        with pytest.raises(ConfigError, match="direct, lan, websocket, mqtt"):
            load(path)
