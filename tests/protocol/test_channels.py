"""Tests for pstp.protocol.channels through the sans-I/O Connection (bytes only)."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pstp.exceptions import ErrorCode, InvalidState, LocalProtocolError
from pstp.protocol.channels import (
    CHANNEL_TRANSITIONS,
    ChannelInput,
    ChannelState,
    ChannelTable,
)
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
    MAX_WINDOW,
    Accept,
    ChannelCode,
    Close,
    Eof,
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


# -- peers breaking §14 ---------------------------------------------------------


def send_control(pair: Pair, msg: object, *, from_server: bool = True) -> None:
    """Deliver a control message sealed by one side's real keys to the other side."""
    src, dst = (pair.server, pair.client) if from_server else (pair.client, pair.server)
    sender = src._sender
    assert sender is not None
    dst.receive_data(
        sender.seal(InnerType.CHANNEL_CONTROL, encode_control(msg), 0.0),  # type: ignore[arg-type]
        0.0,
    )


def accepted_channel(pair: Pair) -> int:
    """A channel the client opened and the server accepted."""
    cid = pair.client.open_channel("x")
    pair.roundtrip()
    pair.server.accept_channel(cid)
    pair.roundtrip()
    pair.client_events.clear()
    pair.server_events.clear()
    return cid


def protocol_error(conn: object) -> bool:
    """True when ``conn`` ended with PROTOCOL_ERROR."""
    events = conn.events_received()  # type: ignore[attr-defined]
    ended = of(events, ConnectionTerminated)
    return bool(ended) and ended[0].code == ErrorCode.PROTOCOL_ERROR


def test_window_beyond_the_maximum_ends_the_session() -> None:
    """WINDOW increments that push the send window past 2^31-1 are a protocol error."""
    pair = fresh()
    cid = accepted_channel(pair)
    window = pair.client.channel_send_window(cid)
    send_control(pair, Window(cid, MAX_WINDOW - window))
    assert pair.client.channel_send_window(cid) == MAX_WINDOW  # exactly the maximum is fine
    assert pair.client.state is ConnectionState.ESTABLISHED
    send_control(pair, Window(cid, 1))
    assert protocol_error(pair.client)
    assert "window overflow" in str(pair.client.close_exc)


def test_accept_with_a_window_below_the_initial_window_ends_the_session() -> None:
    """An ACCEPT granting less than INITIAL_WINDOW is a protocol error."""
    pair = fresh()
    cid = pair.client.open_channel("x")
    pair.roundtrip()
    send_control(pair, Accept(cid, INITIAL_WINDOW - 1))
    assert protocol_error(pair.client)
    assert "ACCEPT window" in str(pair.client.close_exc)


@pytest.mark.parametrize("case", ["accept_twice", "eof_twice", "data_after_eof", "accept_own"])
def test_channel_messages_in_the_wrong_channel_state_end_the_session(case: str) -> None:
    """A second ACCEPT or EOF, data after EOF, or accepting one's own OPEN is refused."""
    pair = fresh()
    if case == "accept_own":
        cid = pair.server.open_channel("x")
        pair.roundtrip()
        send_control(pair, Accept(cid, INITIAL_WINDOW))  # the opener accepts its own channel
    else:
        cid = accepted_channel(pair)
        if case == "accept_twice":
            send_control(pair, Accept(cid, INITIAL_WINDOW))
        else:
            pair.server.send_channel_eof(cid)
            pair.roundtrip()
            if case == "eof_twice":
                send_control(pair, Eof(cid))
            else:
                sender = pair.server._sender
                assert sender is not None
                pair.client.receive_data(
                    sender.seal(InnerType.CHANNEL_DATA, encode_channel_data(cid, b"z"), 0.0), 0.0
                )
    assert protocol_error(pair.client)
    assert f"on channel {cid}" in str(pair.client.close_exc)


def test_channel_data_shorter_than_its_id_ends_the_session() -> None:
    """A CHANNEL_DATA body without its 4-byte channel id is a protocol error."""
    pair = fresh()
    sender = pair.client._sender
    assert sender is not None
    pair.server.receive_data(sender.seal(InnerType.CHANNEL_DATA, b"\x00\x00\x01", 0.0), 0.0)
    assert protocol_error(pair.server)


def test_crossing_closes_are_harmless() -> None:
    """Both sides closing a channel at once, and late EOF or WINDOW for it, are ignored."""
    pair = fresh()
    cid = accepted_channel(pair)
    pair.client.close_channel(cid, reason="mine")
    pair.server.send_channel_eof(cid)
    pair.server.close_channel(cid, reason="yours")
    pair.roundtrip()
    assert not of(pair.client_events, ChannelClosed)
    assert not of(pair.server_events, ChannelClosed)
    send_control(pair, Window(cid, 10))
    send_control(pair, Eof(cid), from_server=False)
    assert pair.client.state is pair.server.state is ConnectionState.ESTABLISHED
    assert pair.client.channel_state(cid) is pair.server.channel_state(cid) is ChannelState.CLOSED


# -- acknowledgements -------------------------------------------------------------


def test_acknowledging_nothing_or_an_unknown_channel_sends_nothing() -> None:
    """acknowledge_channel_data with 0 or fewer bytes, or for a channel not open, is a no-op."""
    cfg = Config(channel_window=INITIAL_WINDOW)
    pair = Pair.new(cfg, cfg).established()
    cid = accepted_channel(pair)
    pair.client.send_channel_data(cid, b"x" * INITIAL_WINDOW)
    pair.roundtrip()
    pair.server.acknowledge_channel_data(cid, 0)
    pair.server.acknowledge_channel_data(cid + 2, 1_000_000)
    pair.server.acknowledge_channel_data(cid, -5)
    assert pair.server.data_to_send() == b""
    # Nothing was counted: acknowledging exactly half the window now grants exactly that.
    pair.server.acknowledge_channel_data(cid, INITIAL_WINDOW // 2)
    pair.roundtrip()
    assert pair.client.channel_send_window(cid) == INITIAL_WINDOW // 2


def test_no_window_is_granted_once_the_peer_sent_eof() -> None:
    """After the peer's EOF it sends no more, so acknowledging grants no WINDOW."""
    cfg = Config(channel_window=INITIAL_WINDOW)
    pair = Pair.new(cfg, cfg).established()
    cid = accepted_channel(pair)
    pair.client.send_channel_data(cid, b"x" * INITIAL_WINDOW)
    pair.client.send_channel_eof(cid)
    pair.roundtrip()
    assert pair.server.channel_state(cid) is ChannelState.HALF_CLOSED_REMOTE
    pair.server.acknowledge_channel_data(cid, INITIAL_WINDOW)
    assert pair.server.data_to_send() == b""
    # Before a decision too: an OPEN followed by EOF.
    cid = pair.client.open_channel("x")
    pair.client.send_channel_data(cid, b"y" * INITIAL_WINDOW)
    pair.client.send_channel_eof(cid)
    pair.roundtrip()
    assert pair.server.channel_state(cid) is ChannelState.APP_EXPECT_DECISION_EOF
    pair.server.acknowledge_channel_data(cid, INITIAL_WINDOW)
    assert pair.server.data_to_send() == b""


# -- verbs outside ESTABLISHED --------------------------------------------------------


def test_channel_verbs_outside_established_raise() -> None:
    """Opening, deciding, sending and EOF before the handshake or after close raise."""
    pair = Pair.new()
    with pytest.raises(InvalidState):
        pair.client.open_channel("x")
    pair.established()
    cid = pair.client.open_channel("x")
    pair.roundtrip()
    pair.client.close()
    pair.server.close()
    for verb, args in (
        (pair.client.open_channel, ("x",)),
        (pair.client.send_channel_data, (cid, b"x")),
        (pair.client.send_channel_eof, (cid,)),
        (pair.server.accept_channel, (cid,)),
        (pair.server.reject_channel, (cid,)),
    ):
        with pytest.raises(InvalidState, match="no channels in state CLOSED"):
            verb(*args)  # type: ignore[operator]


def test_close_and_acknowledge_after_the_session_ended_do_nothing() -> None:
    """close_channel and acknowledge_channel_data after the session closed queue nothing."""
    pair = fresh()
    cid = accepted_channel(pair)
    pair.client.send_channel_data(cid, b"x" * 1000)
    pair.roundtrip()
    pair.server.close()
    pair.server.data_to_send()
    pair.server.close_channel(cid)
    pair.server.acknowledge_channel_data(cid, 1_000_000)
    assert pair.server.data_to_send() == b""
    assert pair.server.events_received() == [
        ConnectionTerminated(code=ErrorCode.NORMAL, reason="", by_peer=False)
    ]


@pytest.mark.parametrize("how", ["local_close", "peer_close", "eof", "failure"])
def test_channels_read_as_closed_once_the_session_ends(how: str) -> None:
    """However the session ends, its channels report CLOSED and no send window."""
    pair = fresh()
    cid = accepted_channel(pair)
    assert pair.client.channel_send_window(cid) > 0
    if how == "local_close":
        pair.client.close()
    elif how == "peer_close":
        pair.server.close()
        pair.roundtrip()
    elif how == "eof":
        pair.client.receive_eof(0.0)
    else:
        pair.client.receive_data(b"\x42\x00\x00\x00", 0.0)
    assert pair.client.state is ConnectionState.CLOSED
    assert pair.client.channel_state(cid) is ChannelState.CLOSED
    assert pair.client.channel_send_window(cid) == 0


# -- the table on its own ---------------------------------------------------------------


def test_table_refuses_a_window_out_of_range() -> None:
    """A ChannelTable grants between INITIAL_WINDOW and MAX_WINDOW, nothing else."""
    for window in (INITIAL_WINDOW - 1, MAX_WINDOW + 1):
        with pytest.raises(ValueError):
            ChannelTable(initiator=True, window=window, max_channels=1)
    for window in (INITIAL_WINDOW, MAX_WINDOW):
        assert len(ChannelTable(initiator=True, window=window, max_channels=1)) == 0


def test_channel_ids_run_out_at_two_to_the_32() -> None:
    """Once the 32-bit id space of our parity is used, open() raises and nothing changes."""
    for initiator, last in ((True, 0xFFFFFFFF), (False, 0xFFFFFFFE)):
        table = ChannelTable(initiator=initiator, window=INITIAL_WINDOW, max_channels=8)
        table._next_id = last
        assert table.open("x", None)[0] == last
        with pytest.raises(LocalProtocolError, match="exhausted"):
            table.open("x", None)
        assert len(table) == 1 and table.ids() == [last]


def test_connection_survives_exhausted_channel_ids() -> None:
    """open_channel raising for exhausted ids leaves the session and its channels usable."""
    pair = fresh()
    cid = accepted_channel(pair)
    pair.client._channels._next_id = 0xFFFFFFFF + 2
    with pytest.raises(LocalProtocolError):
        pair.client.open_channel("x")
    assert pair.client.data_to_send() == b""
    pair.client.send_channel_data(cid, b"still here")
    pair.roundtrip()
    assert of(pair.server_events, ChannelDataReceived)[0].data == b"still here"


def test_close_all_forgets_every_channel() -> None:
    """close_all returns every live id and frees the peer's channel slots."""
    table = ChannelTable(initiator=True, window=INITIAL_WINDOW, max_channels=1)
    mine, _ = table.open("x", None)
    table.receive_control(Open(2, "y", INITIAL_WINDOW))
    assert sorted(table.close_all()) == [mine, 2]
    assert len(table) == 0 and table.state(mine) is ChannelState.CLOSED
    events, replies = table.receive_control(Open(4, "y", INITIAL_WINDOW))
    assert replies == [] and len(events) == 1  # the slot was freed


def test_window_that_overtakes_accept_is_not_lost() -> None:
    """A WINDOW sent by the acceptor before its ACCEPT still counts at the opener."""
    cfg = Config(channel_window=INITIAL_WINDOW)
    pair = Pair.new(cfg, cfg).established()
    cid = pair.client.open_channel("bulk")
    pair.client.send_channel_data(cid, b"x" * INITIAL_WINDOW)
    pair.roundtrip()
    # The acceptor consumes the early data before deciding: its WINDOW goes out first.
    pair.server.acknowledge_channel_data(cid, INITIAL_WINDOW)
    pair.server.accept_channel(cid)
    pair.roundtrip()
    assert pair.client.channel_send_window(cid) == INITIAL_WINDOW
    pair.client.send_channel_data(cid, b"y" * INITIAL_WINDOW)
    pair.roundtrip()
    assert pair.server.state is ConnectionState.ESTABLISHED


def test_acknowledging_more_than_received_grants_nothing_extra() -> None:
    """Over-acknowledging cannot open the peer's window beyond what was freed."""
    cfg = Config(channel_window=INITIAL_WINDOW)
    pair = Pair.new(cfg, cfg).established()
    cid = pair.client.open_channel("bulk")
    pair.roundtrip()
    pair.server.accept_channel(cid)
    pair.client.send_channel_data(cid, b"x" * 40_000)
    pair.roundtrip()
    pair.server.acknowledge_channel_data(cid, 10**9)
    pair.roundtrip()
    assert pair.client.channel_send_window(cid) == INITIAL_WINDOW


@pytest.mark.parametrize("close", [False, True])
def test_a_non_ascii_reason_is_cut_in_bytes_and_reaches_the_peer(close: bool) -> None:
    """A 300-character reason of 2-byte characters arrives cut to 200 bytes, not as an error.

    The sender once cut at 200 characters (400 bytes here) while the receiver allowed
    200 bytes: the refusal ended the session with PROTOCOL_ERROR (docs/protocol.md §14.4).
    """
    pair = fresh()
    cid = pair.client.open_channel("exec")
    pair.roundtrip()
    reason = "refused: echo -" + "é" * 300
    if close:
        pair.server.accept_channel(cid)
        pair.roundtrip()
        pair.server.close_channel(cid, ChannelCode.REFUSED, reason=reason)
    else:
        pair.server.reject_channel(cid, ChannelCode.REFUSED, reason)
    pair.roundtrip()
    assert pair.client.state is ConnectionState.ESTABLISHED
    events = of(pair.client_events, ChannelClosed if close else ChannelRejected)
    got = events[0].reason
    assert len(got.encode()) <= 200 and len(got.encode()) >= 199
    assert reason.startswith(got)


def test_a_kind_longer_than_64_bytes_is_a_local_error() -> None:
    """64 characters of 2-byte text is 128 bytes: the opener refuses to send it."""
    pair = fresh()
    with pytest.raises(LocalProtocolError, match="64 bytes"):
        pair.client.open_channel("é" * 64)
    assert pair.client.open_channel("é" * 32) % 2 == 1
