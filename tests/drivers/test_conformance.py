"""Driver conformance: the same cases against the asyncio and the blocking driver.

Both drivers run one session core (pstp.protocol.session); a case that passes
on one and fails on the other is a driver bug.  Real loopback TCP throughout.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pstp.exceptions import ChannelError, ConnectionClosed, ErrorCode, InvalidState
from pstp.protocol.config import Config
from pstp.protocol.events import ChannelOpenRequested
from pstp.wire.messages import INITIAL_WINDOW, ChannelCode, Close, Eof, Open, Window
from tests.drivers.adapters import Driver
from tests.drivers.raw import RawPeer
from tests.helpers import CLIENT_ID, SERVER_ID, TIMEOUT

# -- request / response ---------------------------------------------------------


def test_request_echoes(driver: Driver) -> None:
    """request() returns the reply read to EOF."""
    assert driver.session().request("echo", b"kettle.on") == b"kettle.on"


def test_empty_request(driver: Driver) -> None:
    """An empty request still gets its (empty) reply."""
    assert driver.session().request("echo") == b""


def test_request_params_reach_the_handler(driver: Driver) -> None:
    """OPEN parameters arrive at the serving side as sent."""
    seen: list[object] = []

    def authorize(conn: object, kind: str, params: object) -> None:
        seen.append((kind, params))

    s = driver.session(authorize=authorize)  # type: ignore[arg-type]
    s.request("echo", b"x", {"level": 40, "name": "lamp", "on": True, "tags": ["a"]})
    assert seen == [("echo", {"level": 40, "name": "lamp", "on": True, "tags": ["a"]})]


def test_many_requests_on_one_session(driver: Driver) -> None:
    """Fifty requests in a row on one session all succeed."""
    s = driver.session()
    for i in range(50):
        assert s.request("echo", str(i).encode()) == str(i).encode()


def test_concurrent_requests(driver: Driver) -> None:
    """Requests from many threads at once each get their own reply."""
    s = driver.session()
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: s.request("echo", b"%d" % i), range(32)))
    assert replies == [b"%d" % i for i in range(32)]


def test_large_request_and_reply(driver: Driver) -> None:
    """Several windows' worth each way arrives whole."""
    s = driver.session()
    data = bytes(range(256)) * 4096  # 1 MiB
    assert s.request("echo", data) == data
    assert s.request("size", data) == str(len(data)).encode()


def test_reply_larger_than_the_window(driver: Driver) -> None:
    """The server writes far past the initial window; flow control carries it."""
    s = driver.session()
    assert s.request("big", b"%d" % (3 << 20)) == bytes(3 << 20)


# -- exit statuses ------------------------------------------------------------------


@pytest.mark.parametrize("status", [0, 1, 7, 127, 255, -1, 2**31 - 1])
def test_exit_status_reaches_the_opener(driver: Driver, status: int) -> None:
    """An int returned by a handler is the channel's exit status."""
    ch = driver.session().open("status")
    ch.write(b"%d" % status)
    ch.write_eof()
    assert ch.read_all() == b""
    assert ch.wait_closed() == status
    assert ch.exit_status() == status
    assert ch.close_code() == ChannelCode.OK


@pytest.mark.parametrize("behaviour", ["size", "notint"])
def test_no_exit_status(driver: Driver, behaviour: str) -> None:
    """A handler returning None or a non-int ends the channel normally with no status."""
    ch = driver.session().open(behaviour)
    ch.write_eof()
    ch.read_all()
    assert ch.wait_closed() is None
    assert ch.close_code() == ChannelCode.OK


def test_echo_exit_status_after_eof(driver: Driver) -> None:
    """A channel's status comes after its data and EOF."""
    ch = driver.session().open("echo")
    ch.write(b"abc")
    ch.write_eof()
    assert ch.read_all() == b"abc"
    assert ch.wait_closed() == 7


# -- handler failures -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [
        ("deny", ChannelCode.REFUSED, "not for you"),
        ("fail", 127, "command not found"),
        ("local", ChannelCode.APPLICATION_ERROR, ""),
        ("boom", ChannelCode.APPLICATION_ERROR, "handler failed"),
    ],
)
def test_handler_exception_becomes_a_code(
    driver: Driver, kind: str, code: int, reason: str
) -> None:
    """A raising handler closes its channel with the core's code; only chosen text leaks."""
    s = driver.session()
    with pytest.raises(ChannelError) as info:
        s.request(kind, b"x")
    assert info.value.code == code
    assert info.value.reason == reason
    assert "secret" not in info.value.reason
    assert s.request("echo", b"ok") == b"ok"  # the session is unharmed


@pytest.mark.parametrize("kind", ["deny", "fail", "local", "boom"])
def test_failed_channel_reports_code_and_reason(driver: Driver, kind: str) -> None:
    """After a failure, wait_closed raises and close_code/close_reason say why."""
    ch = driver.session().open(kind)
    with pytest.raises(ChannelError):
        ch.wait_closed()
    assert ch.close_code() not in (None, ChannelCode.OK)
    assert ch.exit_status() is None
    with pytest.raises(ChannelError):
        ch.read()


# -- REJECT ---------------------------------------------------------------------------


def test_unknown_kind_is_rejected(driver: Driver) -> None:
    """A kind nobody serves is rejected with UNKNOWN_KIND."""
    s = driver.session()
    with pytest.raises(ChannelError) as info:
        s.request("nope", b"x")
    assert info.value.code == ChannelCode.UNKNOWN_KIND
    assert "nope" in info.value.reason


def test_unknown_kind_open_with_wait(driver: Driver) -> None:
    """open_channel waiting for ACCEPT raises on REJECT."""
    with pytest.raises(ChannelError) as info:
        driver.session().open("nope")
    assert info.value.code == ChannelCode.UNKNOWN_KIND


def test_authorizer_refusal(driver: Driver) -> None:
    """A string from the authorizer is the REFUSED reason."""
    s = driver.session(authorize=lambda conn, kind, params: "policy says no")
    with pytest.raises(ChannelError) as info:
        s.request("echo", b"x")
    assert (info.value.code, info.value.reason) == (ChannelCode.REFUSED, "policy says no")


class _Verdict:
    def __init__(self, refusal: str | None) -> None:
        self.refusal = refusal


@pytest.mark.parametrize(("refusal", "ok"), [(None, True), ("no: rate limit", False)])
def test_authorizer_verdict(driver: Driver, refusal: str | None, ok: bool) -> None:
    """A verdict object allows or refuses by its refusal attribute."""
    s = driver.session(authorize=lambda conn, kind, params: _Verdict(refusal))
    if ok:
        assert s.request("echo", b"x") == b"x"
    else:
        with pytest.raises(ChannelError) as info:
            s.request("echo", b"x")
        assert info.value.reason == refusal


def test_authorizer_sees_kind(driver: Driver) -> None:
    """The authorizer is asked per channel with its kind; unknown kinds never reach it."""
    kinds: list[str] = []
    s = driver.session(authorize=lambda conn, kind, params: kinds.append(kind))  # type: ignore[arg-type,func-returns-value]
    s.request("echo")
    with pytest.raises(ChannelError):
        s.request("nope")
    s.request("size")
    assert kinds == ["echo", "size"]


def test_too_many_channels_is_resource_limit(driver: Driver) -> None:
    """Past max_channels the OPEN is rejected with RESOURCE_LIMIT; closing frees a slot."""
    s = driver.session(config=Config(max_channels=2))
    a, b = s.open("wait"), s.open("wait")
    with pytest.raises(ChannelError) as info:
        s.open("wait")
    assert info.value.code == ChannelCode.RESOURCE_LIMIT
    a.write_eof()
    a.wait_closed()
    b.write_eof()
    b.wait_closed()
    assert s.request("echo", b"again") == b"again"


def _tcp_only(driver: Driver) -> None:
    """The raw peer speaks PSTP framing on TCP: not for the WebSocket driver."""
    if getattr(driver, "websocket", None):
        pytest.skip("the raw peer speaks PSTP framing on TCP (WebSocket has its own tests)")


def _raw_server(driver: Driver) -> tuple[RawPeer, object]:
    """A raw responder on loopback, and the driver's client session to it."""
    _tcp_only(driver)
    listener = socket.create_server(("127.0.0.1", 0))
    client_sock = socket.create_connection(listener.getsockname())
    server_sock, _ = listener.accept()
    listener.close()
    raw = RawPeer.server(server_sock)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(driver.client_over, client_sock)
        raw.established()
        session = fut.result(TIMEOUT)
    return raw, session


@pytest.mark.parametrize("code", [0, ChannelCode.REFUSED, 999, 65535])
def test_reject_with_any_code_is_a_failure(driver: Driver, code: int) -> None:
    """A REJECT fails the request whatever its code, 0 included, reported as received."""
    raw, s = _raw_server(driver)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(s.request, "echo", b"x")  # type: ignore[attr-defined]
        raw.until(lambda: bool(raw.opens()))
        raw.conn.reject_channel(raw.opens()[0].channel_id, code, "rejected")
        raw.flush()
        with pytest.raises(ChannelError) as info:
            fut.result(TIMEOUT)
    assert info.value.code == code
    assert info.value.reason == "rejected"
    assert not s.is_closed()  # type: ignore[attr-defined]


def test_reject_with_code_zero_is_a_failure(driver: Driver) -> None:
    """The issue's case: REJECT code 0 never looks like an empty successful reply."""
    raw, s = _raw_server(driver)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(s.open, "echo")  # type: ignore[attr-defined]
        raw.until(lambda: bool(raw.opens()))
        raw.conn.reject_channel(raw.opens()[0].channel_id, 0, "")
        raw.flush()
        with pytest.raises(ChannelError) as info:
            fut.result(TIMEOUT)
    assert info.value.code == 0


# -- orderings within one read ------------------------------------------------------------


def _raw_client(driver: Driver) -> RawPeer:
    """A raw initiator connected to the driver's server, established."""
    _tcp_only(driver)
    listener = socket.create_server(("127.0.0.1", 0))
    client_sock = socket.create_connection(listener.getsockname())
    server_sock, _ = listener.accept()
    listener.close()
    driver.serve_raw(server_sock)
    return RawPeer.client(client_sock).established()


def _raw_request(raw: RawPeer, kind: str, data: bytes) -> tuple[bytes, object]:
    """Run one request from the raw peer; return the reply and the ChannelClosed event."""
    from pstp.protocol.events import ChannelClosed, ChannelDataReceived, ChannelRejected

    cid = raw.conn.open_channel(kind)
    raw.conn.send_channel_data(cid, data)
    raw.conn.send_channel_eof(cid)
    raw.flush()
    start = len(raw.events)

    def ended() -> bool:
        return any(
            isinstance(e, ChannelClosed | ChannelRejected) and e.channel_id == cid
            for e in raw.events[start:]
        )

    raw.until(ended)
    reply = b"".join(
        e.data
        for e in raw.events[start:]
        if isinstance(e, ChannelDataReceived) and e.channel_id == cid
    )
    for e in raw.events[start:]:
        if isinstance(e, ChannelDataReceived) and e.channel_id == cid:
            raw.conn.acknowledge_channel_data(cid, len(e.data))
    end = next(
        e
        for e in raw.events[start:]
        if isinstance(e, ChannelClosed | ChannelRejected) and e.channel_id == cid
    )
    return reply, end


def test_open_and_close_in_one_read(driver: Driver) -> None:
    """The issue's case: OPEN and CLOSE of one channel in one write; the server goes on."""
    raw = _raw_client(driver)
    raw.send_control(Open(channel=1, kind="echo", window=INITIAL_WINDOW), Close(channel=1))
    raw.conn._channels._next_id = 3  # the raw OPEN used id 1 behind the table's back
    reply, end = _raw_request(raw, "echo", b"after")
    assert reply == b"after"
    assert end.code == ChannelCode.OK  # type: ignore[attr-defined]


def test_open_close_then_session_close_in_one_read(driver: Driver) -> None:
    """OPEN, CLOSE and a session CLOSE in one write end the served session promptly."""
    raw = _raw_client(driver)
    served = driver.server_session()
    raw.send_control(Open(channel=1, kind="echo", window=INITIAL_WINDOW), Close(channel=1))
    raw.conn.close(ErrorCode.NORMAL, "bye")
    raw.flush()
    served.wait_closed()
    assert served.is_closed()
    with pytest.raises(ConnectionClosed):
        served.recv()


def test_open_eof_close_in_one_read(driver: Driver) -> None:
    """OPEN, EOF and CLOSE in one write: no crash, the session still serves."""
    raw = _raw_client(driver)
    raw.send_control(
        Open(channel=1, kind="echo", window=INITIAL_WINDOW), Eof(channel=1), Close(channel=1)
    )
    raw.conn._channels._next_id = 3
    assert _raw_request(raw, "echo", b"x")[0] == b"x"


def test_open_with_data_and_eof_in_one_read(driver: Driver) -> None:
    """A whole request in one write (OPEN, DATA, EOF) is served."""
    raw = _raw_client(driver)
    reply, end = _raw_request(raw, "echo", b"one flight")
    assert reply == b"one flight" and end.exit_status == 7  # type: ignore[attr-defined]


def test_many_opens_in_one_read(driver: Driver) -> None:
    """Ten OPENs, each with EOF, in one write: ten replies."""
    from pstp.protocol.events import ChannelClosed

    raw = _raw_client(driver)
    ids = []
    for _ in range(10):
        cid = raw.conn.open_channel("echo")
        raw.conn.send_channel_eof(cid)
        ids.append(cid)
    raw.flush()
    raw.until(lambda: sum(isinstance(e, ChannelClosed) for e in raw.events) == 10)


def test_open_then_session_close_in_one_read_serves_nothing(driver: Driver) -> None:
    """A channel opened in the same write as the session CLOSE is not started."""
    raw = _raw_client(driver)
    served = driver.server_session()
    cid = raw.conn.open_channel("echo")
    raw.conn.send_channel_data(cid, b"x")
    raw.conn.close(ErrorCode.NORMAL)
    raw.flush()
    served.wait_closed()
    assert served.is_closed()


def test_window_for_a_closed_channel_is_ignored(driver: Driver) -> None:
    """A WINDOW that crosses our CLOSE changes nothing."""
    raw = _raw_client(driver)
    _reply, _ = _raw_request(raw, "echo", b"a")
    raw.send_control(Window(channel=1, increment=10))
    assert _raw_request(raw, "echo", b"b")[0] == b"b"


def test_garbage_from_a_peer_ends_only_that_session(driver: Driver) -> None:
    """A peer that sends garbage after the handshake loses its session; others go on."""
    good = driver.session()
    raw = _raw_client(driver)
    raw.sock.sendall(b"\x17\x00\x00\x05hello")
    raw.until(lambda: raw.conn.state.name == "CLOSED")
    assert good.request("echo", b"fine") == b"fine"


# -- half-close and channel ends ------------------------------------------------------


def test_half_close_client_then_server(driver: Driver) -> None:
    """After our EOF we still read the peer's data to its EOF."""
    ch = driver.session().open("echo")
    ch.write(b"abc")
    ch.write_eof()
    assert ch.read(1) == b"a"
    assert ch.read_all() == b"bc"


def test_read_at_eof_returns_empty(driver: Driver) -> None:
    """Reading after EOF returns b'' again and again."""
    ch = driver.session().open("echo")
    ch.write_eof()
    assert ch.read_all() == b""
    assert ch.read() == b""
    assert ch.read() == b""


def test_write_after_eof_is_misuse(driver: Driver) -> None:
    """Writing after our own EOF is refused locally."""
    ch = driver.session().open("hold")
    ch.write_eof()
    with pytest.raises((InvalidState, ChannelError)):
        ch.write(b"x")


def test_second_eof_is_misuse(driver: Driver) -> None:
    """A second EOF on an open channel raises InvalidState."""
    ch = driver.session().open("hold")
    ch.write_eof()
    with pytest.raises(InvalidState):
        ch.write_eof()


def test_eof_after_normal_end_does_nothing(driver: Driver) -> None:
    """EOF on a channel the peer already closed normally is not an error."""
    ch = driver.session().open("first")
    ch.write(b"x")
    assert ch.read() == b"x"
    ch.wait_closed()
    ch.write_eof()


def test_write_after_peer_closed_raises(driver: Driver) -> None:
    """Writing on a channel the peer closed raises ChannelError (CANCELLED)."""
    ch = driver.session().open("first")
    ch.write(b"x")
    ch.wait_closed()
    with pytest.raises(ChannelError) as info:
        ch.write(b"more")
    assert info.value.code == ChannelCode.CANCELLED


def test_close_twice_does_nothing(driver: Driver) -> None:
    """Closing a channel twice is harmless."""
    ch = driver.session().open("wait")
    ch.close(0)
    ch.close(0)
    assert ch.exit_status() == 0


@pytest.mark.parametrize(
    ("code", "reason"),
    [(ChannelCode.CANCELLED, "gave up"), (ChannelCode.GOING_AWAY, ""), (4242, "x")],
)
def test_local_close_code_is_kept(driver: Driver, code: int, reason: str) -> None:
    """Closing with a code records it locally; the session goes on."""
    s = driver.session()
    ch = s.open("wait")
    ch.close(None, code, reason)
    assert ch.close_code() == code
    assert ch.close_reason() == reason
    with pytest.raises(ChannelError):
        ch.wait_closed()
    assert s.request("echo", b"ok") == b"ok"


def test_closing_our_channel_ends_the_handler(driver: Driver) -> None:
    """A handler blocked reading sees our CLOSE; the session goes on."""
    s = driver.session()
    ch = s.open("wait")
    ch.write(b"partial")
    ch.close(None, ChannelCode.CANCELLED, "")
    assert s.request("echo", b"next") == b"next"


def test_channel_ids_are_odd_and_increasing_for_the_initiator(driver: Driver) -> None:
    """The initiator's channels are numbered 1, 3, 5 (protocol.md §14.5)."""
    s = driver.session()
    ids = [s.open("wait", wait=False).id for _ in range(3)]
    assert ids == [1, 3, 5]


def test_open_without_waiting_then_write(driver: Driver) -> None:
    """A channel may be written before ACCEPT."""
    ch = driver.session().open("echo", wait=False)
    ch.write(b"early")
    ch.write_eof()
    assert ch.read_all() == b"early"


def test_read_all_limit(driver: Driver) -> None:
    """read_all with a limit refuses more than that."""
    ch = driver.session().open("echo")
    ch.write(bytes(1000))
    ch.write_eof()
    with pytest.raises(ValueError, match="more than"):
        ch.read_all(limit=10)


def test_read_all_within_limit(driver: Driver) -> None:
    """read_all with a limit returns what fits."""
    ch = driver.session().open("echo")
    ch.write(bytes(10))
    ch.write_eof()
    assert ch.read_all(limit=10) == bytes(10)


def test_kind_is_reported(driver: Driver) -> None:
    """A channel knows its kind."""
    assert driver.session().open("echo").kind() == "echo"


# -- flow control -----------------------------------------------------------------------


def test_writer_blocks_while_the_reader_does_not_read(driver: Driver) -> None:
    """A peer that reads one chunk only stops us at the window; closing frees the writer."""
    s = driver.session(config=Config(channel_window=INITIAL_WINDOW))
    ch = s.open("first")
    done = threading.Event()

    def write() -> None:
        with contextlib.suppress(ChannelError, ConnectionClosed, TimeoutError):
            ch.write(bytes(8 * INITIAL_WINDOW))
        done.set()

    threading.Thread(target=write, daemon=True).start()
    assert ch.read(10)  # the echo of the first chunk
    ch.wait_closed()  # the handler returned: its CLOSE frees the writer
    assert done.wait(TIMEOUT)


def test_flow_control_both_ways(driver: Driver) -> None:
    """Many windows each way through an echo while both sides read and write."""
    s = driver.session(config=Config(channel_window=INITIAL_WINDOW))
    ch = s.open("echo")
    blob = bytes(range(256)) * 2048  # 512 KiB
    got = bytearray()

    def reader() -> None:
        while chunk := ch.read():
            got.extend(chunk)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    ch.write(blob)
    ch.write_eof()
    t.join(TIMEOUT)
    assert bytes(got) == blob


@pytest.mark.parametrize("size", [1, INITIAL_WINDOW - 1, INITIAL_WINDOW, INITIAL_WINDOW + 1])
def test_sizes_around_the_window(driver: Driver, size: int) -> None:
    """Requests just below, at and above the initial window arrive whole."""
    data = bytes([size % 256]) * size
    assert driver.session().request("echo", data) == data


# -- the session-level stream --------------------------------------------------------------


def test_session_send_recv(driver: Driver) -> None:
    """Session DATA arrives in order."""
    s = driver.session()
    served = driver.server_session()
    for i in range(5):
        s.send(b"%d" % i)
    got = b""
    while len(got) < 5:
        got += served.recv()
    assert got == b"01234"


def test_session_stream_both_ways(driver: Driver) -> None:
    """Both ends send and receive session DATA."""
    s = driver.session()
    served = driver.server_session()
    served.send(b"hello client")
    s.send(b"hello server")
    assert served.recv() == b"hello server"
    assert s.recv() == b"hello client"


def test_session_iteration_ends_at_normal_close(driver: Driver) -> None:
    """Iterating the session stops at a NORMAL close, after all data."""
    s = driver.session()
    served = driver.server_session()
    served.send(b"a")
    served.send(b"b")
    served.close()
    assert b"".join(s.recv_all()) == b"ab"


def test_session_iteration_raises_on_error_close(driver: Driver) -> None:
    """A close with an error code ends iteration with ConnectionClosed."""
    s = driver.session()
    served = driver.server_session()
    served.close(ErrorCode.GOING_AWAY, "restart")
    with pytest.raises(ConnectionClosed) as info:
        s.recv_all()
    assert info.value.code == ErrorCode.GOING_AWAY


def test_large_session_data(driver: Driver) -> None:
    """Megabytes of session DATA arrive whole and in order."""
    s = driver.session()
    served = driver.server_session()
    blob = bytes(range(256)) * 8192
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(s.send, blob)
        got = bytearray()
        while len(got) < len(blob):
            got += served.recv()
        fut.result(TIMEOUT)
    assert bytes(got) == blob


# -- session ends ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"), [(ErrorCode.NORMAL, ""), (ErrorCode.GOING_AWAY, "bye"), (0x7777, "x")]
)
def test_close_code_reaches_the_peer(driver: Driver, code: int, reason: str) -> None:
    """The peer's recv raises ConnectionClosed with our code and reason."""
    s = driver.session()
    served = driver.server_session()
    s.close(code, reason)
    with pytest.raises(ConnectionClosed) as info:
        served.recv()
    assert info.value.code == code
    assert info.value.reason == reason
    assert served.is_closed()


def test_is_closed_after_close(driver: Driver) -> None:
    """is_closed is false while open and true after close."""
    s = driver.session()
    assert not s.is_closed()
    s.close()
    assert s.is_closed()


def test_close_twice_is_harmless(driver: Driver) -> None:
    """Closing a closed session does nothing."""
    s = driver.session()
    s.close()
    s.close()


@pytest.mark.parametrize("op", ["request", "open", "send", "recv"])
def test_operations_after_close_raise(driver: Driver, op: str) -> None:
    """Every operation on a closed session raises ConnectionClosed."""
    s = driver.session()
    s.close()
    with pytest.raises(ConnectionClosed):
        if op == "request":
            s.request("echo", b"x")
        elif op == "open":
            s.open("echo")
        elif op == "send":
            s.send(b"x")
        else:
            s.recv()


def test_open_channel_fails_when_the_session_ends(driver: Driver) -> None:
    """A channel open when the peer closes the session fails with ConnectionClosed."""
    s = driver.session()
    served = driver.server_session()
    ch = s.open("wait")
    served.close(ErrorCode.GOING_AWAY)
    with pytest.raises(ConnectionClosed):
        ch.read()
    with pytest.raises(ConnectionClosed):
        ch.wait_closed()


def test_truncation_is_reported(driver: Driver) -> None:
    """A peer that hangs up without CLOSE ends the session with TRUNCATED."""
    raw = _raw_client(driver)
    served = driver.server_session()
    raw.sock.close()
    served.wait_closed()
    with pytest.raises(ConnectionClosed) as info:
        served.recv()
    assert info.value.code == ErrorCode.TRUNCATED


def test_server_sees_peer_close_while_a_handler_runs(driver: Driver) -> None:
    """A session closed while a handler waits ends the session on the server too."""
    s = driver.session()
    served = driver.server_session()
    s.open("wait")
    s.close()
    served.wait_closed()
    assert served.is_closed()


# -- identities -------------------------------------------------------------------------


def test_peer_ids(driver: Driver) -> None:
    """Each side knows the other's device id."""
    s = driver.session()
    assert s.peer_id() == SERVER_ID
    assert driver.server_session().peer_id() == CLIENT_ID


def test_session_ids_agree(driver: Driver) -> None:
    """Both ends have the same 32-byte session id."""
    s = driver.session()
    assert s.session_id() == driver.server_session().session_id()
    assert len(s.session_id()) == 32


# -- heartbeats --------------------------------------------------------------------------


def test_heartbeat_sets_last_rtt(driver: Driver) -> None:
    """With a short keepalive, an idle session measures its round-trip time."""
    s = driver.session(config=Config(keepalive_interval=0.05))
    assert s.last_rtt() is None
    end = time.monotonic() + TIMEOUT
    while s.last_rtt() is None and time.monotonic() < end:
        time.sleep(0.02)
    rtt = s.last_rtt()
    assert rtt is not None and 0 <= rtt < TIMEOUT


def test_dead_peer_is_detected(driver: Driver) -> None:
    """A peer that stops answering heartbeats is dropped (TIMEOUT)."""
    _tcp_only(driver)
    listener = socket.create_server(("127.0.0.1", 0))
    client_sock = socket.create_connection(listener.getsockname())
    server_sock, _ = listener.accept()
    listener.close()
    raw = RawPeer.server(server_sock)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(driver.client_over, client_sock, Config(keepalive_interval=0.05))
        raw.established()
        s = fut.result(TIMEOUT)
    # The raw server now stays silent: no PONG ever comes back.
    end = time.monotonic() + TIMEOUT
    while not s.is_closed() and time.monotonic() < end:
        time.sleep(0.02)
    assert s.is_closed()
    with pytest.raises(ConnectionClosed) as info:
        s.recv()
    assert info.value.code == ErrorCode.TIMEOUT
    raw.sock.close()


def test_heartbeats_keep_a_quiet_session_alive(driver: Driver) -> None:
    """An idle session with heartbeats survives many intervals."""
    # Long enough intervals that a loaded machine still answers in time.
    s = driver.session(config=Config(keepalive_interval=0.25))
    time.sleep(1.0)
    assert not s.is_closed()
    assert s.request("echo", b"alive") == b"alive"


# -- handlers at run time ----------------------------------------------------------------


def test_set_handler_adds_a_kind(driver: Driver) -> None:
    """A kind served from now on is accepted."""
    s = driver.session()
    served = driver.server_session()
    served.serve_kind("late", "echo")
    assert s.request("late", b"x") == b"x"


def test_set_handler_none_removes_a_kind(driver: Driver) -> None:
    """A kind no longer served is rejected with UNKNOWN_KIND."""
    s = driver.session()
    served = driver.server_session()
    served.serve_kind("echo", None)
    with pytest.raises(ChannelError) as info:
        s.request("echo", b"x")
    assert info.value.code == ChannelCode.UNKNOWN_KIND


def test_server_opens_a_channel_to_the_client(driver: Driver) -> None:
    """Either side may open channels; the client serves what it registered."""
    driver.session(client_handlers={"back": "echo"})
    served = driver.server_session()
    assert served.request("back", b"reverse") == b"reverse"


def test_server_channel_ids_are_even(driver: Driver) -> None:
    """The responder's channels are numbered 2, 4, ... (protocol.md §14.5)."""
    driver.session(client_handlers={"back": "wait"})
    served = driver.server_session()
    assert served.open("back", wait=False).id == 2


def test_client_without_handlers_rejects_server_opens(driver: Driver) -> None:
    """A client that serves nothing rejects the server's OPEN."""
    driver.session()
    with pytest.raises(ChannelError) as info:
        driver.server_session().request("back", b"x")
    assert info.value.code == ChannelCode.UNKNOWN_KIND


# -- many channels --------------------------------------------------------------------------


def test_many_channels_open_at_once(driver: Driver) -> None:
    """Forty channels open together, each echoes its own data."""
    s = driver.session()
    chans = [s.open("echo") for _ in range(40)]
    for i, ch in enumerate(chans):
        ch.write(b"%d" % i)
        ch.write_eof()
    for i, ch in enumerate(chans):
        assert ch.read_all() == b"%d" % i
        assert ch.wait_closed() == 7


def test_interleaved_channels(driver: Driver) -> None:
    """Writes on two channels interleave without mixing their data."""
    s = driver.session()
    a, b = s.open("echo"), s.open("echo")
    for _ in range(10):
        a.write(b"a" * 100)
        b.write(b"b" * 100)
    a.write_eof()
    b.write_eof()
    assert a.read_all() == b"a" * 1000
    assert b.read_all() == b"b" * 1000


def test_served_open_is_reported_to_the_raw_peer(driver: Driver) -> None:
    """The driver's OPENs are well-formed for another implementation."""
    raw, s = _raw_server(driver)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(s.open, "anything", {"k": "v"}, False)  # type: ignore[attr-defined]
        raw.until(lambda: bool(raw.opens()))
    ev = raw.opens()[0]
    assert isinstance(ev, ChannelOpenRequested)
    assert (ev.kind, ev.params, ev.channel_id) == ("anything", {"k": "v"}, 1)
