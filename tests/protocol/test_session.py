"""The session core (pstp.protocol.session): channel state and open decisions, bytes only."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pstp.exceptions import (
    ChannelError,
    ChannelFailure,
    ConnectionClosed,
    ErrorCode,
    InvalidState,
    PermissionDenied,
    PstpError,
)
from pstp.protocol.config import Config
from pstp.protocol.connection import Connection
from pstp.protocol.session import REPLY_FLOOD, ChannelCore, SessionCore, outcome_of
from pstp.wire.frames import InnerType
from pstp.wire.messages import ChannelCode, Close, Eof, Open, Params, encode_control
from tests.helpers import FakeClock, make_client, make_server

Handler = str  # the core treats handlers as opaque: a name is enough here


@dataclass
class Cores:
    """A client and a server core wired in memory."""

    client: SessionCore[Handler]
    server: SessionCore[Handler]
    clock: FakeClock
    started: list[tuple[ChannelCore, Handler]]

    def move(self, rounds: int = 20) -> None:
        """Move bytes both ways until quiet, pumping both cores."""
        for _ in range(rounds):
            moved = False
            for src, dst in ((self.client, self.server), (self.server, self.client)):
                out = src.conn.data_to_send()
                if out:
                    moved = True
                    dst.conn.receive_data(out, self.clock.now)
                got = dst.pump()
                if dst is self.server:
                    self.started += got
                else:
                    assert not got
            if not moved:
                return
        raise AssertionError("did not go quiet")


def make_cores(
    *,
    handlers: dict[str, Handler] | None = None,
    authorize: object = None,
    admit: object = None,
    high_water: int = 1 << 20,
    config: Config | None = None,
    session_data: bool = True,
) -> Cores:
    """An established client/server pair of session cores."""
    clock = FakeClock()
    client: SessionCore[Handler] = SessionCore(make_client(config))
    server: SessionCore[Handler] = SessionCore(
        make_server(config),
        handlers=handlers if handlers is not None else {"echo": "echo"},
        authorize=authorize,  # type: ignore[arg-type]
        admit=admit,  # type: ignore[arg-type]
        high_water=high_water,
        session_data=session_data,
    )
    server.conn.start(clock.now)
    client.conn.start(clock.now)
    cores = Cores(client, server, clock, [])
    cores.move()
    return cores


def raw(conn: Connection, *messages: object) -> bytes:
    """Seal channel control messages from a bare connection, as one write."""
    for msg in messages:
        conn._seal(InnerType.CHANNEL_CONTROL, encode_control(msg))  # type: ignore[arg-type]
    return conn.data_to_send()


@dataclass
class Allow:
    """A verdict object, as the daemon's policy decision is."""

    refusal: str | None = None


def test_established_on_both_sides() -> None:
    """A completed handshake marks both cores established and not terminated."""
    c = make_cores()
    assert c.client.established and c.server.established
    assert not c.client.terminated


def test_request_response_through_the_core() -> None:
    """Data written on a channel reaches the handler's inbox; EOF and CLOSE end it with a status."""
    c = make_cores()
    ch = c.client.open_channel("echo", {"a": 1})
    assert c.client.write(ch, memoryview(b"hello"), 1 << 20) == 5
    c.client.write_eof(ch)
    c.move()
    (srv, handler) = c.started[0]
    assert handler == "echo" and srv.kind == "echo" and srv.params == {"a": 1}
    assert srv.accepted and srv.readable
    assert c.server.read(srv, 2) == b"he"
    assert c.server.read(srv) == b"llo"
    assert c.server.read(srv) == b""  # EOF
    c.server.handler_done(srv, 7)
    c.move()
    assert ch.accepted and ch.done and ch.exit_status == 7 and ch.error is None
    assert c.client.read(ch) == b""
    assert c.client.channels == {} and c.server.channels == {}


def test_read_waits_with_none() -> None:
    """A read with nothing there and no EOF returns None: the driver must wait."""
    c = make_cores()
    c.client.open_channel("echo")
    c.move()
    srv = c.started[0][0]
    assert not srv.readable
    assert c.server.read(srv) is None


def test_unknown_kind_is_rejected() -> None:
    """An OPEN of a kind with no handler is rejected with UNKNOWN_KIND; the reader sees it."""
    c = make_cores()
    ch = c.client.open_channel("nope")
    c.move()
    assert ch.done and isinstance(ch.error, ChannelError)
    assert ch.error.code == ChannelCode.UNKNOWN_KIND and ch.close_code == ChannelCode.UNKNOWN_KIND
    with pytest.raises(ChannelError):
        c.client.read(ch)
    assert not c.started


@pytest.mark.parametrize("code", [0, 2, 999])
def test_reject_is_a_failure_whatever_its_code(code: int) -> None:
    """A REJECT fails the channel even with code 0, and the code is reported as received."""
    c = make_cores()
    ch = c.client.open_channel("echo")
    out = c.client.conn.data_to_send()
    # The server decides by hand: reject the OPEN with the code under test.
    c.server.handlers.clear()
    c.server.conn.receive_data(out, c.clock.now)
    c.server.conn.events_received()
    c.server.conn.reject_channel(ch.id, code, "no")
    c.client.conn.receive_data(c.server.conn.data_to_send(), c.clock.now)
    c.client.pump()
    assert isinstance(ch.error, ChannelError) and ch.error.code == code
    assert ch.close_reason == "no"
    with pytest.raises(ChannelError):
        c.client.write(ch, memoryview(b"x"), 10)


def test_authorizer_string_refuses_and_verdict_travels() -> None:
    """A string refusal rejects with REFUSED; a verdict object allows and stays on the channel."""
    said: list[object] = ["not you"]
    c = make_cores(authorize=lambda conn, kind, params: said[0])
    ch = c.client.open_channel("echo")
    c.move()
    assert isinstance(ch.error, ChannelError) and ch.error.code == ChannelCode.REFUSED
    assert ch.close_reason == "not you"
    verdict = Allow()
    said[0] = verdict
    c.client.open_channel("echo")
    c.move()
    assert c.started[0][0].verdict is verdict
    said[0] = Allow("policy says no" * 30)
    ch3 = c.client.open_channel("echo")
    c.move()
    assert ch3.close_code == ChannelCode.REFUSED and len(ch3.close_reason) == 200
    said[0] = None
    c.client.open_channel("echo")
    c.move()
    assert c.started[1][0].verdict is None


def test_admit_refusal_closes_the_session_in_the_same_pump() -> None:
    """A session refused by admit ends at once, before a channel of the same flight is served."""
    clock = FakeClock()
    client: SessionCore[Handler] = SessionCore(make_client())
    server: SessionCore[Handler] = SessionCore(
        make_server(), handlers={"echo": "echo"}, admit=lambda conn: "too many sessions"
    )
    server.conn.start(clock.now)
    client.conn.start(clock.now)
    server.conn.receive_data(client.conn.data_to_send(), clock.now)
    assert server.pump() == []
    client.conn.receive_data(server.conn.data_to_send(), clock.now)
    client.pump()
    client.open_channel("echo")
    server.conn.receive_data(client.conn.data_to_send(), clock.now)
    assert server.pump() == []
    assert server.terminated and server.established
    assert server.closed_error().code == ErrorCode.REFUSED
    assert server.linger_for_eof  # our own CLOSE must not be destroyed by a reset
    client.conn.receive_data(server.conn.data_to_send(), clock.now)
    client.pump()
    assert client.terminated and not client.linger_for_eof
    assert client.closed_error().code == ErrorCode.REFUSED


def test_admit_allowing_changes_nothing() -> None:
    """An admit that returns None leaves the session open."""
    c = make_cores(admit=lambda conn: None)
    assert not c.server.terminated


def test_open_and_close_in_one_read_is_ignored() -> None:
    """OPEN and CLOSE of one channel in one read start no handler and leave the session usable."""
    c = make_cores()
    peer = c.client.conn
    data = raw(peer, Open(channel=1, kind="echo", window=1 << 16), Close(channel=1))
    c.server.conn.receive_data(data, c.clock.now)
    assert c.server.pump() == []
    assert c.server.channels == {} and not c.server.terminated
    peer._channels._next_id = 3  # the raw OPEN used id 1 behind the table's back
    ch = c.client.open_channel("echo")
    c.move()
    assert c.started and c.started[0][0].id == ch.id


def test_open_then_session_close_in_one_read_starts_nothing() -> None:
    """A channel opened in the flight that ends the session is not started."""
    c = make_cores()
    peer = c.client.conn
    data = raw(peer, Open(channel=1, kind="echo", window=1 << 16))
    peer.close(ErrorCode.NORMAL)
    data += peer.data_to_send()
    c.server.conn.receive_data(data, c.clock.now)
    assert c.server.pump() == []
    assert c.server.terminated and not c.server.linger_for_eof


def test_open_eof_data_in_one_read() -> None:
    """OPEN, then EOF in the same read: the handler starts with EOF already there."""
    c = make_cores()
    data = raw(c.client.conn, Open(channel=1, kind="echo", window=1 << 16), Eof(channel=1))
    c.server.conn.receive_data(data, c.clock.now)
    started = c.server.pump()
    assert len(started) == 1
    srv = started[0][0]
    # The EOF arrived before the core knew the channel: it is in the table's state.
    assert c.server.conn.channel_state(srv.id).name in {"HALF_CLOSED_REMOTE", "OPEN"}


def test_session_end_fails_every_channel() -> None:
    """When the session ends, open channels fail with ConnectionClosed and wake."""
    c = make_cores()
    ch = c.client.open_channel("echo")
    woken: list[int] = []
    ch.wake = lambda: woken.append(1)
    c.move()
    c.server.conn.close(ErrorCode.GOING_AWAY, "bye")
    c.move()
    assert ch.done and isinstance(ch.error, ConnectionClosed)
    assert ch.error.code == ErrorCode.GOING_AWAY
    assert woken
    with pytest.raises(ConnectionClosed):
        c.client.read(ch)
    with pytest.raises(ConnectionClosed):
        c.client.write(ch, memoryview(b"x"), 1)
    with pytest.raises(ConnectionClosed):
        c.client.write_eof(ch)
    with pytest.raises(ConnectionClosed):
        c.client.open_channel("echo")
    with pytest.raises(ConnectionClosed):
        c.client.send_data(b"x")
    with pytest.raises(ConnectionClosed):
        c.client.recv_data()
    assert c.client.writable(ch)
    c.client.close_channel(ch)  # nothing: already ended
    ch.fail(ConnectionClosed(0, ""))  # a second end changes nothing
    assert isinstance(ch.error, ConnectionClosed) and ch.error.code == ErrorCode.GOING_AWAY


def test_closed_error_after_truncation_uses_the_core_code() -> None:
    """A session cut without CLOSE reports TRUNCATED, from the connection's close code."""
    c = make_cores()
    c.client.conn.receive_eof(c.clock.now)
    c.client.pump()
    assert c.client.terminated and not c.client.linger_for_eof
    assert c.client.closed_error().code == ErrorCode.TRUNCATED


def test_closed_error_falls_back_on_the_event_code() -> None:
    """With no close code or cause on the connection, the event's code is used, else INTERNAL."""
    c = make_cores()
    assert c.client.closed_error().code == ErrorCode.INTERNAL_ERROR
    c.client.conn.close(ErrorCode.NORMAL)
    c.client.pump()
    c.client.conn.close_exc = None
    c.client.conn.close_code = None
    assert c.client.closed_error().code == ErrorCode.NORMAL


def test_check_open() -> None:
    """check_open passes on an established session and raises once it ended."""
    c = make_cores()
    c.client.check_open()
    c.client.conn.close()
    with pytest.raises(ConnectionClosed):
        c.client.check_open()


def test_flow_control_write_waits_for_window() -> None:
    """A write past the window sends what fits and 0 when closed; reading reopens it."""
    c = make_cores()
    ch = c.client.open_channel("echo")
    window = c.client.conn.channel_send_window(ch.id)
    sent = c.client.write(ch, memoryview(bytes(window + 10)), 1 << 30)
    assert sent == window
    assert not c.client.writable(ch)
    assert c.client.write(ch, memoryview(b"x"), 10) == 0
    c.move()
    srv = c.started[0][0]
    while c.server.read(srv):
        pass
    c.move()
    assert c.client.writable(ch)
    assert c.client.write(ch, memoryview(bytes(10)), 1 << 30) == 10


def test_write_after_close_is_cancelled() -> None:
    """Writing on a channel we closed normally raises CANCELLED."""
    c = make_cores()
    ch = c.client.open_channel("echo")
    c.client.close_channel(ch, exit_status=0)
    with pytest.raises(ChannelError) as info:
        c.client.write(ch, memoryview(b"x"), 10)
    assert info.value.code == ChannelCode.CANCELLED
    c.client.write_eof(ch)  # a normal end: nothing to do


def test_write_eof_twice_is_caller_misuse() -> None:
    """A second EOF is the caller's mistake (InvalidState)."""
    c = make_cores()
    ch = c.client.open_channel("echo")
    c.client.write_eof(ch)
    with pytest.raises(InvalidState):
        c.client.write_eof(ch)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ChannelFailure(127, "command not found"), (127, "command not found")),
        (PermissionDenied("exec of rm is not allowed"), (2, "exec of rm is not allowed")),
        (PstpError("local detail"), (5, "")),
        (RuntimeError("secret detail"), (5, "handler failed")),
    ],
)
def test_outcome_of_exceptions(exc: BaseException, expected: tuple[int, str]) -> None:
    """Only refusals and channel failures tell the peer their text."""
    assert outcome_of(exc) == expected


def test_handler_done_with_exception_and_odd_results() -> None:
    """A raising handler closes with its outcome; a non-int or bool result is no status."""
    c = make_cores()
    chans = [c.client.open_channel("echo") for _ in range(3)]
    c.move()
    srv = [s for s, _ in c.started]
    c.server.handler_done(srv[0], exc=ChannelFailure(126, "cannot execute"))
    c.server.handler_done(srv[1], "not a status")
    c.server.handler_done(srv[2], True)
    c.move()
    assert chans[0].close_code == 126 and chans[0].close_reason == "cannot execute"
    assert chans[1].exit_status is None and chans[1].error is None
    assert chans[2].exit_status is None


def test_session_data_and_high_water() -> None:
    """Session DATA queues in order; reading pauses above high water and resumes at half."""
    c = make_cores(high_water=100)
    for _ in range(3):
        c.client.send_data(bytes(60))
    c.move()
    assert c.server.reading_paused and c.server.inbox_bytes == 180
    assert c.server.recv_data() == bytes(60)
    assert c.server.recv_data() == bytes(60)
    assert c.server.reading_paused  # 60 left, above half of high water
    assert c.server.recv_data() == bytes(60)
    assert not c.server.reading_paused
    assert c.server.recv_data() is None


def test_session_data_refused_by_a_side_that_serves_only_channels() -> None:
    """With session_data off, DATA ends the session with REFUSED instead of queueing unread."""
    c = make_cores(session_data=False)
    c.client.send_data(b"nobody reads this")
    c.move()
    assert c.server.terminated and c.server.inbox_bytes == 0
    assert c.client.terminated and c.client.conn.close_code == ErrorCode.REFUSED
    assert "use a channel" in str(c.client.closed_error())


def test_flow_tracks_how_long_reading_or_writing_has_stopped() -> None:
    """Reading stops only for unread data; the stall clock runs for either reason."""
    c = make_cores(high_water=100, config=Config(keepalive_interval=10.0, keepalive_count_max=2))
    core = c.server
    assert core.conn.silence_limit == 30.0
    assert core.flow(False, 5.0) and core.stall_deadline() is None
    assert core.flow(True, 5.0)  # the peer does not read: we still read
    assert core.flow(True, 9.0) and core.stall_deadline() == 35.0  # from when it began
    core.check_stall(34.9)
    assert not core.terminated
    assert core.flow(False, 10.0) and core.stall_deadline() is None  # the peer read again
    for _ in range(3):
        c.client.send_data(bytes(60))
    c.move()
    assert core.reading_paused and not core.flow(False, 20.0)
    assert core.stall_deadline() == 50.0
    core.check_stall(50.0)
    c.move()
    assert core.stalled and core.terminated
    assert c.client.conn.close_code == ErrorCode.TIMEOUT


def test_no_stall_deadline_without_heartbeats() -> None:
    """Heartbeats off: no silence limit, so no stall deadline either."""
    c = make_cores(config=Config(keepalive_interval=None))
    assert c.server.conn.silence_limit is None
    c.server.flow(True, 1.0)
    assert c.server.stall_deadline() is None


def test_replies_queued_while_the_peer_reads_nothing_are_bounded() -> None:
    """Past REPLY_FLOOD bytes of answers queued unread, the session ends (a PING flood)."""
    c = make_cores()
    core = c.server
    core.flow(True, 1.0)
    core.queued_replies(REPLY_FLOOD)
    assert not core.terminated
    core.queued_replies(1)
    c.move()
    assert core.stalled and core.terminated
    assert c.client.conn.close_code == ErrorCode.PROTOCOL_ERROR
    core.queued_replies(REPLY_FLOOD + 1)  # after the end: nothing more happens
    c2 = make_cores()
    c2.server.flow(True, 1.0)
    c2.server.queued_replies(REPLY_FLOOD)
    c2.server.flow(False, 2.0)  # the peer read: the count starts again
    c2.server.flow(True, 3.0)
    c2.server.queued_replies(REPLY_FLOOD)
    assert not c2.server.terminated


def test_heartbeat_rtt() -> None:
    """An answered heartbeat sets last_rtt."""
    c = make_cores()
    c.client.conn.send_ping()
    c.clock.advance(0.25)
    c.move()
    assert c.client.last_rtt == pytest.approx(0.25)


def test_events_for_unknown_channels_are_ignored() -> None:
    """Data, window, accept, EOF and close for a channel the core does not hold change nothing."""
    c = make_cores()
    ch = c.client.open_channel("echo")
    c.client.channels.clear()  # as if the application forgot it
    c.client.write(ch, memoryview(b"abc"), 10)
    c.client.write_eof(ch)
    c.move()
    srv = c.started[0][0]
    c.server.write(srv, memoryview(b"xyz"), 10)
    c.server.write_eof(srv)
    c.server.handler_done(srv, 0)
    c.move()
    assert not ch.done and not ch.inbox


def test_reject_of_a_channel_the_core_does_not_hold_changes_nothing() -> None:
    """A REJECT for a channel opened on the connection behind the core's back is ignored."""
    c = make_cores()
    c.client.conn.open_channel("missing")
    c.move()
    assert not c.client.terminated and c.client.channels == {}


def test_repr_and_readable() -> None:
    """A channel's repr names it; readable reflects inbox, EOF and end."""
    ch = ChannelCore(5, "exec", {})
    assert repr(ch) == "<ChannelCore 5 'exec'>"
    assert not ch.readable
    ch.eof = True
    assert ch.readable
    ch.finish(ChannelCode.APPLICATION_ERROR, None, "x")
    ch.finish(ChannelCode.OK, 0, "")  # a second end changes nothing
    assert ch.close_code == ChannelCode.APPLICATION_ERROR


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=50)
@given(
    st.lists(
        st.sampled_from(["open", "data", "eof", "close", "read", "done", "reject"]),
        max_size=30,
    )
)
def test_any_interleaving_keeps_the_core_consistent(steps: list[str]) -> None:
    """Any sequence of channel operations leaves both cores consistent and the session up."""
    c = make_cores(handlers={"echo": "echo", "r": "r"}, authorize=lambda conn, kind, p: None)
    mine: list[ChannelCore] = []
    eof_sent: set[int] = set()
    for step in steps:
        if step == "open":
            mine.append(c.client.open_channel("echo"))
        elif step == "reject":
            mine.append(c.client.open_channel("missing"))
        elif mine:
            ch = mine[-1]
            usable = not ch.done and ch.id not in eof_sent
            if step == "data" and usable and c.client.writable(ch):
                c.client.write(ch, memoryview(b"abc"), 100)
            elif step == "eof" and usable:
                c.client.write_eof(ch)
                eof_sent.add(ch.id)
            elif step == "close":
                c.client.close_channel(ch, code=ChannelCode.CANCELLED)
            elif step == "read" and c.started:
                srv = c.started[-1][0]
                if srv.readable and not (srv.done and srv.error):
                    c.server.read(srv)
            elif step == "done" and c.started:
                c.server.handler_done(c.started[-1][0], 0)
        c.move()
    assert not c.client.terminated and not c.server.terminated
    assert set(c.server.channels) <= {s.id for s, _ in c.started}
    for ch in mine:
        assert ch.done or ch.id in c.client.channels


def test_params_type_alias_is_a_mapping() -> None:
    """Params from an OPEN arrive as given."""
    params: Params = {"k": "v", "n": ["1"], "i": 3}
    c = make_cores()
    c.client.open_channel("echo", params)
    c.move()
    assert c.started[0][0].params == params


def test_facts_read_through_to_the_core() -> None:
    """ChannelFacts and SessionFacts, the drivers' shared properties, show the core's state."""
    from pstp.protocol.session import ChannelFacts, SessionFacts

    class Chan(ChannelFacts):
        def __init__(self, core: ChannelCore) -> None:
            self._core = core

    class Sess(SessionFacts[Handler]):
        def __init__(self, core: SessionCore[Handler]) -> None:
            self._core = core

    c = make_cores(authorize=lambda conn, kind, params: Allow())
    c.client.open_channel("echo", {"k": "v"})
    c.move()
    srv = c.started[0][0]
    ch = Chan(srv)
    assert (ch.id, ch.kind, ch.params) == (srv.id, "echo", {"k": "v"})
    assert isinstance(ch.verdict, Allow)
    assert ch.close_code is None and ch.close_reason == ""
    assert repr(ch) == f"<Chan {srv.id} 'echo'>"
    s = Sess(c.server)
    assert s.peer_id == "phone" and s.connection is c.server.conn
    assert s.session_id == c.client.conn.session_id
    assert s.last_rtt is None and not s.is_closed
    s.set_handler("late", "late")
    assert c.server.handlers["late"] == "late"
    s.set_handler("late", None)
    assert "late" not in c.server.handlers
