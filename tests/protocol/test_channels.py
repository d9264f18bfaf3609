"""Tests for pstp.protocol.channels through the sans-I/O Connection (bytes only)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pstp.exceptions import ErrorCode, InvalidState, LocalProtocolError
from pstp.protocol.channels import CHANNEL_TRANSITIONS, ChannelInput, ChannelState
from pstp.protocol.config import Config
from pstp.protocol.connection import ConnectionState
from pstp.protocol.events import (
    ChannelAccepted,
    ChannelClosed,
    ChannelDataReceived,
    ChannelEofReceived,
    ChannelOpenRequested,
    ChannelRejected,
    ChannelWindowUpdated,
    ConnectionTerminated,
)
from pstp.wire.frames import InnerType
from pstp.wire.messages import (
    INITIAL_WINDOW,
    Accept,
    ChannelCode,
    Close,
    Open,
    Window,
    decode_control,
    encode_channel_data,
    encode_control,
)
from tests.helpers import Pair


def of(events: list[object], kind: type) -> list:  # type: ignore[type-arg]
    """The events of one type."""
    return [e for e in events if isinstance(e, kind)]


def fresh() -> Pair:
    """An established pair with empty event lists."""
    pair = Pair.new().established()
    pair.client_events.clear()
    pair.server_events.clear()
    return pair


def test_open_accept_data_eof_close_with_exit_status() -> None:
    """A full channel life: open, accept, data both ways, half-close, close with status."""
    pair = fresh()
    cid = pair.client.open_channel("exec", {"argv": ["ls", "-l"], "tty": False})
    pair.roundtrip()
    (req,) = of(pair.server_events, ChannelOpenRequested)
    assert (req.channel_id, req.kind, req.params) == (
        cid,
        "exec",
        {"argv": ["ls", "-l"], "tty": False},
    )
    pair.server.accept_channel(cid)
    pair.roundtrip()
    assert of(pair.client_events, ChannelAccepted) == [ChannelAccepted(channel_id=cid)]
    pair.client.send_channel_data(cid, b"stdin bytes")
    pair.client.send_channel_eof(cid)
    pair.server.send_channel_data(cid, b"stdout bytes")
    pair.roundtrip()
    assert of(pair.server_events, ChannelDataReceived)[0].data == b"stdin bytes"
    assert of(pair.server_events, ChannelEofReceived) == [ChannelEofReceived(channel_id=cid)]
    assert of(pair.client_events, ChannelDataReceived)[0].data == b"stdout bytes"
    assert pair.server.channel_state(cid) is ChannelState.HALF_CLOSED_REMOTE
    pair.server.send_channel_eof(cid)
    pair.server.close_channel(cid, exit_status=3)
    pair.roundtrip()
    (closed,) = of(pair.client_events, ChannelClosed)
    assert (closed.exit_status, closed.code, closed.by_peer) == (3, ChannelCode.OK, True)
    assert pair.client.channel_state(cid) is ChannelState.CLOSED
    assert pair.client.state is ConnectionState.ESTABLISHED


def test_ids_are_odd_for_the_initiator_and_even_for_the_responder() -> None:
    """Both sides open channels at once without colliding."""
    pair = fresh()
    a = pair.client.open_channel("x")
    b = pair.server.open_channel("x")
    c = pair.client.open_channel("x")
    assert (a % 2, b % 2, c) == (1, 0, a + 2)
    pair.roundtrip()
    assert len(of(pair.server_events, ChannelOpenRequested)) == 2
    assert len(of(pair.client_events, ChannelOpenRequested)) == 1


def test_reject_reaches_the_opener_and_late_data_is_ignored() -> None:
    """A rejected channel reports code and reason; data already in flight is dropped quietly."""
    pair = fresh()
    cid = pair.client.open_channel("nope")
    pair.client.send_channel_data(cid, b"sent before the answer")
    pair.roundtrip()
    pair.server.reject_channel(cid, ChannelCode.UNKNOWN_KIND, "no such kind")
    pair.roundtrip()
    (rej,) = of(pair.client_events, ChannelRejected)
    assert (rej.code, rej.reason) == (ChannelCode.UNKNOWN_KIND, "no such kind")
    # The server still gets data for the channel it just rejected: silently ignored.
    sender = pair.client._sender
    assert sender is not None
    pair.server.receive_data(
        sender.seal(InnerType.CHANNEL_DATA, encode_channel_data(cid, b"late"), 0.0), 0.0
    )
    assert pair.server.state is ConnectionState.ESTABLISHED
    assert not of(pair.server.events_received(), ChannelDataReceived)


def test_opener_may_send_the_initial_window_before_accept_and_no_more() -> None:
    """Before ACCEPT the opener has exactly INITIAL_WINDOW bytes of credit."""
    pair = fresh()
    cid = pair.client.open_channel("bulk")
    assert pair.client.channel_send_window(cid) == INITIAL_WINDOW
    pair.client.send_channel_data(cid, b"x" * INITIAL_WINDOW)
    with pytest.raises(LocalProtocolError):
        pair.client.send_channel_data(cid, b"y")
    pair.roundtrip()
    pair.server.accept_channel(cid)
    pair.roundtrip()
    # After ACCEPT the credit is the acceptor's window minus what was sent early.
    assert pair.client.channel_send_window(cid) == Config().channel_window - INITIAL_WINDOW


def test_window_reopens_only_when_the_reader_acknowledges() -> None:
    """Without acknowledgement the sender runs dry; acknowledging grants more."""
    cfg = Config(channel_window=INITIAL_WINDOW)
    pair = Pair.new(cfg, cfg).established()
    cid = pair.client.open_channel("bulk")
    pair.roundtrip()
    pair.server.accept_channel(cid)
    pair.roundtrip()
    pair.client.send_channel_data(cid, b"x" * INITIAL_WINDOW)
    pair.roundtrip()
    assert pair.client.channel_send_window(cid) == 0
    pair.server.acknowledge_channel_data(cid, 1000)  # below half: no update yet
    pair.roundtrip()
    assert pair.client.channel_send_window(cid) == 0
    pair.server.acknowledge_channel_data(cid, INITIAL_WINDOW // 2)
    pair.roundtrip()
    assert pair.client.channel_send_window(cid) == INITIAL_WINDOW // 2 + 1000
    assert of(pair.client_events, ChannelWindowUpdated)


def test_peer_exceeding_the_window_ends_the_session() -> None:
    """CHANNEL_DATA beyond the granted window is a protocol error."""
    pair = fresh()
    cid = pair.client.open_channel("bulk")
    pair.roundtrip()
    sender = pair.client._sender
    assert sender is not None
    frame = b"".join(
        sender.seal(InnerType.CHANNEL_DATA, encode_channel_data(cid, b"z" * n), 0.0)
        for n in (INITIAL_WINDOW - 10, 11)
    )
    pair.server.receive_data(frame, 0.0)
    ev = pair.server.events_received()
    assert of(ev, ConnectionTerminated)[0].code == ErrorCode.PROTOCOL_ERROR


def test_too_many_channels_are_rejected_with_resource_limit() -> None:
    """Opens beyond max_channels are refused at once by the core."""
    cfg = Config(max_channels=2)
    pair = Pair.new(cfg, cfg).established()
    ids = [pair.client.open_channel("x") for _ in range(3)]
    pair.roundtrip()
    assert len(of(pair.server_events, ChannelOpenRequested)) == 2
    (rej,) = of(pair.client_events, ChannelRejected)
    assert (rej.channel_id, rej.code) == (ids[2], ChannelCode.RESOURCE_LIMIT)
    # Closing one frees a slot.
    pair.server.reject_channel(ids[0])
    pair.roundtrip()
    pair.client.open_channel("x")
    pair.roundtrip()
    assert len(of(pair.server_events, ChannelOpenRequested)) == 3


@pytest.mark.parametrize(
    "msg",
    [
        Open(2, "x", INITIAL_WINDOW),  # responder's parity from the initiator
        Open(1, "x", INITIAL_WINDOW - 1),  # window below the minimum
        Accept(99, INITIAL_WINDOW),  # never opened
        Window(7, 10),  # never opened
        Close(0),  # id 0 is never valid
    ],
)
def test_bad_control_messages_end_the_session(msg: object) -> None:
    """Invalid ids, never-opened channels and short windows are protocol errors."""
    pair = fresh()
    sender = pair.client._sender
    assert sender is not None
    pair.server.receive_data(
        sender.seal(InnerType.CHANNEL_CONTROL, encode_control(msg), 0.0),  # type: ignore[arg-type]
        0.0,
    )
    assert pair.server.state is ConnectionState.CLOSED
    assert (
        of(pair.server.events_received(), ConnectionTerminated)[0].code == ErrorCode.PROTOCOL_ERROR
    )


def test_reused_channel_id_is_refused() -> None:
    """An OPEN must use a fresh, increasing id."""
    pair = fresh()
    sender = pair.client._sender
    assert sender is not None
    for _ in range(2):
        pair.server.receive_data(
            sender.seal(
                InnerType.CHANNEL_CONTROL, encode_control(Open(5, "x", INITIAL_WINDOW)), 0.0
            ),
            0.0,
        )
    assert pair.server.state is ConnectionState.CLOSED


def test_local_misuse_raises() -> None:
    """Sending on a closed channel or accepting our own open raises InvalidState."""
    pair = fresh()
    cid = pair.client.open_channel("x")
    with pytest.raises(InvalidState):
        pair.client.accept_channel(cid)
    pair.client.close_channel(cid)
    pair.client.close_channel(cid)  # twice is harmless
    with pytest.raises(InvalidState):
        pair.client.send_channel_data(cid, b"x")
    with pytest.raises(InvalidState):
        pair.client.send_channel_eof(cid)


def test_control_messages_round_trip_and_garbage_is_a_protocol_error() -> None:
    """Control messages survive encoding; invalid MessagePack is refused."""
    from pstp.exceptions import RemoteProtocolError

    for msg in (Open(1, "k", INITIAL_WINDOW, {"a": [""], "b": None}), Close(3, 1, -9, "r")):
        assert decode_control(encode_control(msg)) == msg
    for bad in (b"", b"\xc1", b"\x92\x01\x01", encode_control(Close(1))[:-1]):
        with pytest.raises(RemoteProtocolError):
            decode_control(bad)


def test_transition_table_has_no_exit_from_closed() -> None:
    """CLOSED is terminal and every state can reach CLOSED."""
    assert not [k for k in CHANNEL_TRANSITIONS if k[0] is ChannelState.CLOSED]
    for state in ChannelState:
        if state is not ChannelState.CLOSED:
            assert any(
                CHANNEL_TRANSITIONS.get((state, i)) is ChannelState.CLOSED for i in ChannelInput
            ), state


class ChannelInterleavings(RuleBasedStateMachine):
    """Random interleavings of channel operations on both sides never break the session."""

    @initialize()
    def setup(self) -> None:
        self.pair = Pair.new(
            Config(channel_window=INITIAL_WINDOW), Config(channel_window=INITIAL_WINDOW)
        )
        self.pair.established()
        self.sent: dict[tuple[str, int], bytearray] = {}
        self.got: dict[tuple[str, int], bytearray] = {}

    def _side(self, name: str):  # type: ignore[no-untyped-def]
        return self.pair.client if name == "client" else self.pair.server

    def _ids(self, name: str) -> list[int]:
        return self._side(name)._channels.ids()

    @rule(side=st.sampled_from(["client", "server"]))
    def open(self, side: str) -> None:
        self._side(side).open_channel("k")

    @rule(side=st.sampled_from(["client", "server"]), pick=st.integers(0, 50))
    def decide(self, side: str, pick: int) -> None:
        conn = self._side(side)
        pending = [
            c
            for c in self._ids(side)
            if conn.channel_state(c)
            in (ChannelState.APP_EXPECT_DECISION, ChannelState.APP_EXPECT_DECISION_EOF)
        ]
        if pending:
            cid = pending[pick % len(pending)]
            if pick % 3:
                conn.accept_channel(cid)
            else:
                conn.reject_channel(cid)

    @rule(
        side=st.sampled_from(["client", "server"]),
        pick=st.integers(0, 50),
        size=st.integers(1, 5000),
    )
    def send(self, side: str, pick: int, size: int) -> None:
        conn = self._side(side)
        ids = [
            c
            for c in self._ids(side)
            if (conn.channel_state(c), ChannelInput.SEND_DATA) in CHANNEL_TRANSITIONS
        ]
        if ids:
            cid = ids[pick % len(ids)]
            n = min(size, conn.channel_send_window(cid))
            if n:
                data = bytes([pick % 256]) * n
                conn.send_channel_data(cid, data)
                self.sent.setdefault((side, cid), bytearray()).extend(data)

    @rule(side=st.sampled_from(["client", "server"]), pick=st.integers(0, 50))
    def eof_or_close(self, side: str, pick: int) -> None:
        conn = self._side(side)
        ids = [
            c
            for c in self._ids(side)
            if conn.channel_state(c)
            not in (ChannelState.APP_EXPECT_DECISION, ChannelState.APP_EXPECT_DECISION_EOF)
        ]
        if ids:
            cid = ids[pick % len(ids)]
            if pick % 2 and (conn.channel_state(cid), ChannelInput.SEND_EOF) in CHANNEL_TRANSITIONS:
                conn.send_channel_eof(cid)
            else:
                conn.close_channel(cid, exit_status=pick)

    @rule()
    def deliver(self) -> None:
        self.pair.roundtrip(max_rounds=50)
        for name, events in (
            ("server", self.pair.server_events),
            ("client", self.pair.client_events),
        ):
            other = "client" if name == "server" else "server"
            for e in events:
                if isinstance(e, ChannelDataReceived):
                    self.got.setdefault((other, e.channel_id), bytearray()).extend(e.data)
                    self._side(name).acknowledge_channel_data(e.channel_id, len(e.data))
            events.clear()

    @invariant()
    def session_alive_and_data_is_a_prefix(self) -> None:
        assert self.pair.client.state is ConnectionState.ESTABLISHED
        assert self.pair.server.state is ConnectionState.ESTABLISHED
        for key, data in self.got.items():
            assert bytes(self.sent.get(key, b"")).startswith(bytes(data))

    @precondition(lambda self: True)
    @rule()
    def windows_never_negative(self) -> None:
        for side in ("client", "server"):
            for cid in self._ids(side):
                assert self._side(side).channel_send_window(cid) >= 0


TestChannelInterleavings = ChannelInterleavings.TestCase
TestChannelInterleavings.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
