"""A far-future HS_INIT timestamp cannot lock a pair key out (docs/protocol.md §5.1).

Before the bound, a key holder that sent one HS_INIT stamped ten years ahead
moved the key's replay guard there: every later, honest HS_INIT of that key was
"stale" until the clock caught up, and the daemon saved the guard.  Now the
responder refuses a timestamp more than MAX_AHEAD_NS (5 minutes) ahead of its
wall clock like any failed handshake, without moving the guard.
"""

from __future__ import annotations

import time

import pytest

from pstp.clock import next_timestamp, responder
from pstp.exceptions import HandshakeFailed
from pstp.protocol import handshake
from pstp.protocol.config import Config
from pstp.protocol.connection import Connection, ConnectionState, Role
from pstp.protocol.handshake import InitiatorHandshake, KeyRing, ResponderHandshake
from tests.helpers import CLIENT_ID, PAIR_KEY, SERVER_ID, FakeClock, Pair, make_keyring

NOW = 1_800_000_000_000_000_000  # the responder's wall clock in these tests (ns)
TEN_YEARS = 10 * 365 * 86_400 * 10**9
#: handshake.MAX_AHEAD_NS, spelled out so this module also runs against the old code.
MAX_AHEAD_NS = 5 * 60 * 10**9


def _ring() -> KeyRing:
    ring = KeyRing()
    ring.add(CLIENT_ID, PAIR_KEY)
    return ring


def _hs_init(timestamp: int) -> bytes:
    init = InitiatorHandshake(PAIR_KEY, Config(), timestamp=timestamp, responder_id=SERVER_ID)
    return init.message.serialize()[4:]  # the frame body


def _read(ring: KeyRing, timestamp: int, wall_clock: int | None = NOW) -> None:
    clock = None if wall_clock is None else (lambda: wall_clock)
    ResponderHandshake(ring, Config(), own_id=SERVER_ID, wall_clock=clock).read_init(
        _hs_init(timestamp)
    )


def test_max_ahead_is_five_minutes_like_the_saved_guard() -> None:
    """The same bound as the daemon's saved replay guard (pstp.daemon.replay)."""
    from pstp.daemon.replay import MAX_AHEAD_NS as SAVED_BOUND

    assert handshake.MAX_AHEAD_NS == MAX_AHEAD_NS == SAVED_BOUND


@pytest.mark.parametrize("ahead", [MAX_AHEAD_NS + 1, TEN_YEARS])
def test_a_far_future_timestamp_is_refused_and_moves_nothing(ahead: int) -> None:
    """Refused, the guard of the key is where it was; an honest HS_INIT then succeeds."""
    ring = _ring()
    (peer,) = ring
    with pytest.raises(HandshakeFailed, match="too far ahead"):
        _read(ring, NOW + ahead)
    assert peer.last_timestamp == 0
    assert peer.floor == 0
    _read(ring, NOW)  # not locked out
    assert peer.last_timestamp == NOW


def test_a_timestamp_at_the_bound_is_accepted() -> None:
    """Exactly MAX_AHEAD_NS ahead still passes (a clock up to 5 minutes fast)."""
    ring = _ring()
    _read(ring, NOW + MAX_AHEAD_NS)
    (peer,) = ring
    assert peer.last_timestamp == NOW + MAX_AHEAD_NS


def test_without_a_wall_clock_there_is_no_bound() -> None:
    """The sans-I/O core reads no clock: without one, only the replay guard applies."""
    ring = _ring()
    _read(ring, NOW + TEN_YEARS, wall_clock=None)
    (peer,) = ring
    assert peer.last_timestamp == NOW + TEN_YEARS


def test_a_connection_refuses_it_silently_and_hangs_up() -> None:
    """Through Connection: no byte answers the HS_INIT, the responder closes, the key works."""
    ring = make_keyring()
    clock = FakeClock()

    def pair(timestamp: int) -> Pair:
        client = Connection(
            Role.CLIENT, pair_key=PAIR_KEY, responder_id=SERVER_ID, timestamp=timestamp
        )
        server = Connection(Role.SERVER, keyring=ring, own_id=SERVER_ID, wall_clock=lambda: NOW)
        p = Pair(client, server, clock)
        server.start(clock.now)
        client.start(clock.now)
        return p

    bad = pair(NOW + TEN_YEARS)
    bad.roundtrip()
    assert [who for who, _ in bad.wire] == ["client"]  # silence (§5.1)
    assert bad.server.state is ConnectionState.CLOSED
    assert isinstance(bad.server.close_exc, HandshakeFailed)
    (peer,) = ring
    assert peer.last_timestamp == 0
    pair(NOW - 1).established()


def test_the_drivers_responder_reads_the_wall_clock() -> None:
    """pstp.clock.responder (both drivers) passes time.time_ns: ten years ahead fails."""
    ring = make_keyring()

    def attempt(timestamp: int) -> Pair:
        client = Connection(
            Role.CLIENT, pair_key=PAIR_KEY, responder_id=SERVER_ID, timestamp=timestamp
        )
        p = Pair(client, responder(None, ring, SERVER_ID, None, None))
        p.server.start(p.clock.now)
        p.client.start(p.clock.now)
        p.roundtrip()
        return p

    assert attempt(time.time_ns() + TEN_YEARS).server.state is ConnectionState.CLOSED
    assert attempt(next_timestamp()).server.state is ConnectionState.ESTABLISHED
