"""Shared test helpers: a fake clock, a connected pair, and feed_all_ways."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pstp.protocol.config import Config
from pstp.protocol.connection import Connection, ConnectionState, Role
from pstp.protocol.events import ConnectionTerminated, DataReceived, Event
from pstp.protocol.handshake import KeyRing

#: The repository root, the external vectors kept in it (tests/vectors/README.md says
#: where each came from), and our own published ones.
ROOT = Path(__file__).resolve().parents[1]
EXTERNAL_VECTORS = ROOT / "tests" / "vectors"
OUR_VECTORS = ROOT / "docs" / "test-vectors"

#: Time unit for waits in driver tests; scale with PSTP_TEST_TIMEOUT_SCALE on slow machines.
TIMEOUT = 5.0 * float(os.environ.get("PSTP_TEST_TIMEOUT_SCALE", "1"))

PAIR_KEY = bytes(range(32))
CLIENT_ID = "phone"
SERVER_ID = "home"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def advance(self, dt: float) -> float:
        """Move forward by ``dt`` seconds and return the new time."""
        self.now += dt
        return self.now


_ts = [1_700_000_000_000_000_000]


def next_timestamp() -> int:
    """A strictly increasing HS_INIT timestamp for tests."""
    _ts[0] += 1_000
    return _ts[0]


def make_keyring(pair_key: bytes = PAIR_KEY, device_id: str = CLIENT_ID) -> KeyRing:
    """A responder key ring holding one peer."""
    ring = KeyRing()
    ring.add(device_id, pair_key)
    return ring


def make_client(
    config: Config | None = None, pair_key: bytes = PAIR_KEY, **kw: object
) -> Connection:
    """An initiator aimed at SERVER_ID."""
    kw.setdefault("responder_id", SERVER_ID)
    kw.setdefault("timestamp", next_timestamp())
    return Connection(Role.CLIENT, config, pair_key=pair_key, **kw)  # type: ignore[arg-type]


def make_server(
    config: Config | None = None, keyring: KeyRing | None = None, **kw: object
) -> Connection:
    """A responder for SERVER_ID holding CLIENT_ID's key."""
    return Connection(
        Role.SERVER,
        config,
        keyring=keyring if keyring is not None else make_keyring(),
        own_id=SERVER_ID,
        **kw,  # type: ignore[arg-type]
    )


@dataclass
class Pair:
    """A client and a server wired together in memory."""

    client: Connection
    server: Connection
    clock: FakeClock = field(default_factory=FakeClock)
    client_events: list[Event] = field(default_factory=list)
    server_events: list[Event] = field(default_factory=list)
    #: Every chunk that crossed, as (sender, bytes); for attack tests.
    wire: list[tuple[str, bytes]] = field(default_factory=list)

    @classmethod
    def new(cls, client_config: Config | None = None, server_config: Config | None = None) -> Pair:
        """A fresh, started pair."""
        pair = cls(make_client(client_config), make_server(server_config))
        pair.server.start(pair.clock.now)
        pair.client.start(pair.clock.now)
        return pair

    def roundtrip(self, max_rounds: int = 20) -> None:
        """Move bytes both ways until neither side has anything to send."""
        for _ in range(max_rounds):
            moved = False
            out = self.client.data_to_send()
            if out:
                moved = True
                self.wire.append(("client", out))
                self.server.receive_data(out, self.clock.now)
            out = self.server.data_to_send()
            if out:
                moved = True
                self.wire.append(("server", out))
                self.client.receive_data(out, self.clock.now)
            self.client_events += self.client.events_received()
            self.server_events += self.server.events_received()
            if not moved:
                return
        raise AssertionError("pair did not go quiet")

    def established(self) -> Pair:
        """Run the handshake to completion and check both sides agree."""
        self.roundtrip()
        assert self.client.state is ConnectionState.ESTABLISHED
        assert self.server.state is ConnectionState.ESTABLISHED
        return self


def summarize(events: list[Event]) -> list[str]:
    """Events as comparable strings (session ids and keys differ per run)."""
    out = []
    for e in events:
        if isinstance(e, DataReceived):
            out.append(f"DataReceived({e.data!r})")
        elif isinstance(e, ConnectionTerminated):
            out.append(f"ConnectionTerminated({e.code}, by_peer={e.by_peer})")
        else:
            out.append(type(e).__name__)
    return out


def feed_all_ways(
    make: Callable[[], Connection], data: bytes, now: float = 1_000.0
) -> dict[str, tuple[list[str], int]]:
    """Feed ``data`` to fresh connections whole, byte by byte, and with trailing garbage.

    Returns each way's event summary and output length.  With trailing
    garbage, the termination the garbage causes (and its CLOSE record) is cut.
    """
    results: dict[str, tuple[list[str], int]] = {}
    for way in ("whole", "bytewise", "garbage"):
        conn = make()
        if way == "whole":
            conn.receive_data(data, now)
        elif way == "bytewise":
            for i in range(len(data)):
                conn.receive_data(data[i : i + 1], now)
        else:
            conn.receive_data(data + b"\xff\x00\x00\x01garbage", now)
        events = conn.events_received()
        out = len(conn.data_to_send())
        if way == "garbage":
            events = [e for e in events if not isinstance(e, ConnectionTerminated)]
            # The garbage may add a CLOSE record after the real output; keep the prefix.
            out = min(out, results["whole"][1])
        results[way] = (summarize(events), out)
    return results
