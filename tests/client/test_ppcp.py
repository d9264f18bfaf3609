"""Tests for the PPCP quick-start functions over real sockets, and the quick start itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pstp.client import ppcp
from pstp.client.ppcp import PpcpSession, client_connect, server_accept
from pstp.exceptions import ConnectionClosed, HandshakeFailed, RemoteProtocolError
from pstp.protocol.handshake import PairKey
from pstp.sync.connection import SyncChannel
from tests import netns_host
from tests.helpers import TIMEOUT

KEY = PairKey(bytes(range(100, 132)))
SHORT = TIMEOUT / 50
#: Where the in-process discovery tests send their PINGs (nothing leaves the machine).
LOOPBACK = ["127.0.0.1"]

Pair = tuple[PpcpSession, PpcpSession]


def ppcp_pair(sockets: tuple[socket.socket, socket.socket] | None = None, key: bytes = KEY) -> Pair:
    """A PPCP client and server session over a socketpair (or the given sockets)."""
    a, b = sockets if sockets is not None else socket.socketpair()
    with ThreadPoolExecutor(1) as pool:
        server = pool.submit(server_accept, b, key)
        client = client_connect(a, key)
        return client, server.result(TIMEOUT)


@pytest.fixture
def make_pair() -> Iterator[Callable[..., Pair]]:
    """Builds PPCP session pairs and closes them all at the end of the test."""
    made: list[PpcpSession] = []

    def make(**kw: object) -> Pair:
        pair = ppcp_pair(**kw)  # type: ignore[arg-type]
        made.extend(pair)
        return pair

    yield make
    for session in made:
        session.close()


def free_port() -> int:
    """A port number free for both TCP and UDP on this host right now."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("0.0.0.0", 0))
            port = int(tcp.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port


def test_server_accept_and_client_connect_over_socketpair(make_pair: Callable[..., Pair]) -> None:
    """Both sides come up; each reports the other's id as client_id."""
    client, server = make_pair()
    assert server.client_id == ppcp._device_id()  # the id the client stated for itself
    assert client.client_id == ppcp._device_id()  # the server's id, as the handshake proved it
    assert client.session_id == server.session_id
    client.send(b"hello")
    assert server.recv(TIMEOUT) == b"hello"


def test_server_accept_and_client_connect_over_tcp(make_pair: Callable[..., Pair]) -> None:
    """The same over a real loopback TCP connection (a socket not from find_server)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT)
        b, _ = listener.accept()
    client, server = make_pair(sockets=(a, b))
    server.send(b"from the server")
    assert client.recv(TIMEOUT) == b"from the server"


def test_each_recv_returns_exactly_one_message(make_pair: Callable[..., Pair]) -> None:
    """Messages of 1 byte, 1 MiB and 300 bytes (and an empty one) arrive one per recv."""
    client, server = make_pair()
    messages = [b"a", os.urandom(1 << 20), b"xyz" * 100, b""]
    for msg in messages:
        client.send(msg)
    assert [server.recv(TIMEOUT) for _ in messages] == messages
    for msg in reversed(messages):
        server.send(msg)
    assert [client.recv(TIMEOUT) for _ in messages] == messages[::-1]


def test_recv_timeout_keeps_a_partial_message(make_pair: Callable[..., Pair]) -> None:
    """A recv that times out mid-message keeps what arrived; the next recv completes it."""
    client, server = make_pair()
    client.session.send(b"\x00\x00\x00\x05he")
    with pytest.raises(TimeoutError):
        server.recv(SHORT)
    client.session.send(b"llo")
    assert server.recv(TIMEOUT) == b"hello"


def test_oversized_message_is_refused_before_buffering(make_pair: Callable[..., Pair]) -> None:
    """A length prefix above the limit raises RemoteProtocolError and closes the session."""
    client, server = make_pair()
    strict = PpcpSession(server.session, server.client_id, max_message_size=10)
    client.send(b"x" * 11)
    with pytest.raises(RemoteProtocolError):
        strict.recv(TIMEOUT)
    with pytest.raises(ConnectionClosed):
        client.recv(TIMEOUT)


def test_iteration_stops_when_the_peer_closes(make_pair: Callable[..., Pair]) -> None:
    """Iterating yields whole messages until the peer closes normally."""
    client, server = make_pair()
    with client:
        client.send(b"one")
        client.send(b"two")
    assert list(server) == [b"one", b"two"]
    server.wait_closed(TIMEOUT)


def test_channels_stay_available_through_the_session(make_pair: Callable[..., Pair]) -> None:
    """A PpcpSession passes channels through to the PSTP session underneath."""

    def upper(ch: SyncChannel) -> None:
        ch.write(ch.read_all().upper())

    client, server = make_pair()
    server.set_handler("upper", upper)
    assert client.request("upper", b"kettle", timeout=TIMEOUT) == b"KETTLE"
    assert client.peer_id == ppcp._device_id()
    assert client.connection is client.session.connection


def test_wrong_key_fails_with_handshake_failed() -> None:
    """Different keys on the two sides fail the handshake on both."""
    a, b = socket.socketpair()
    with ThreadPoolExecutor(1) as pool:
        server = pool.submit(server_accept, b, KEY)
        with pytest.raises(HandshakeFailed):
            client_connect(a, PairKey(bytes(32)))
        with pytest.raises(HandshakeFailed):
            server.result(TIMEOUT)


@pytest.mark.parametrize("secret", [b"super-secret-key", "correct horse", bytes(32)])
def test_plain_secrets_are_passphrases_and_run_pake(secret: bytes | str) -> None:
    """Plain bytes or str run PSTP-PAKE (never PSTP-HS), whatever their length."""
    client, server = ppcp_pair(key=secret)  # type: ignore[arg-type]
    with client, server:
        assert client.session.connection.via_pake and server.session.connection.via_pake
        assert server.client_id == ppcp._device_id()
        client.send(b"over pake")
        assert server.recv(TIMEOUT) == b"over pake"


def test_wrong_passphrase_fails_and_a_key_is_never_used_as_a_passphrase() -> None:
    """A wrong passphrase fails; a PairKey and a passphrase of the same bytes do not mix."""
    a, b = socket.socketpair()
    with ThreadPoolExecutor(1) as pool:
        server = pool.submit(server_accept, b, b"super-secret-key")
        with pytest.raises(HandshakeFailed):
            client_connect(a, b"super-secret-kex")
        with pytest.raises(HandshakeFailed):
            server.result(TIMEOUT)
    a, b = socket.socketpair()
    with ThreadPoolExecutor(1) as pool:
        server = pool.submit(server_accept, b, bytes(KEY))
        with pytest.raises(HandshakeFailed):
            client_connect(a, KEY)
        with pytest.raises(HandshakeFailed):
            server.result(TIMEOUT)


def test_repeat_passphrase_sessions_reuse_the_stretched_values() -> None:
    """PBKDF2 runs once per passphrase and parameters, so repeat sessions are fast."""
    secret = b"repeat-me"
    pairs = [ppcp_pair(key=secret) for _ in range(3)]
    for client, server in pairs:
        client.close()
        server.close()
    assert len(ppcp._prover_for(ppcp._credential(secret))._cache) == 1


def test_bad_secrets_are_refused_before_touching_the_socket() -> None:
    """An empty secret is a ValueError; a non-bytes secret a TypeError."""
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(ValueError):
            server_accept(b, b"")
        with pytest.raises(ValueError):
            client_connect(a, "")
        with pytest.raises(TypeError):
            client_connect(a, 12345)  # type: ignore[arg-type]
        assert a.fileno() != -1 and b.fileno() != -1


# -- with discovery ---------------------------------------------------------------


def test_find_server_finds_create_tcp_server_and_binds_the_handshake() -> None:
    """find_server discovers a create_tcp_server listener; the handshake is bound to it."""
    pytest.importorskip("pstp.sync.discovery")
    listener = ppcp.create_tcp_server("127.0.0.1", 0)
    port = int(listener.getsockname()[1])
    try:
        with ThreadPoolExecutor(1) as pool:
            sock = ppcp.find_server(port=port, timeout=TIMEOUT, addresses=LOOPBACK)
            assert sock.getpeername() == ("127.0.0.1", port)
            assert sock in ppcp._found  # remembered for client_connect
            server = pool.submit(lambda: server_accept(listener.accept()[0], KEY))
            with client_connect(sock, KEY) as client, server.result(TIMEOUT) as served:
                assert client.client_id == ppcp._device_id()
                assert served.client_id == ppcp._device_id()
                client.send(b"found you")
                assert served.recv(TIMEOUT) == b"found you"
    finally:
        ppcp.close_tcp_server(listener)
    assert port not in ppcp._responders


def test_a_server_without_the_discovery_exchange_refuses_a_bound_client() -> None:
    """A client bound to a PING/PONG fails against a server that never saw them."""
    pytest.importorskip("pstp.sync.discovery")
    listener = ppcp.create_tcp_server("127.0.0.1", 0)
    port = int(listener.getsockname()[1])
    try:
        sock = ppcp.find_server(port=port, timeout=TIMEOUT, addresses=LOOPBACK)
        responder = ppcp._responders.pop(port)  # the server forgets its discovery exchanges
        try:
            with ThreadPoolExecutor(1) as pool:
                server = pool.submit(lambda: server_accept(listener.accept()[0], KEY))
                with pytest.raises(HandshakeFailed):
                    client_connect(sock, KEY)
                with pytest.raises(HandshakeFailed):
                    server.result(TIMEOUT)
        finally:
            responder.stop()
    finally:
        ppcp.close_tcp_server(listener)


SERVER_README = """\
from ppcp import create_tcp_server, server_accept

pre_shared_key = b"super-secret-key"
listener = create_tcp_server("0.0.0.0", 9000)

while True:
    sock, addr = listener.accept()
    # PING -> ECDH -> AUTH. Returns a completely encrypted session!
    session = server_accept(sock, pre_shared_key)
    print(f"Connected to {session.client_id}!")
"""

CLIENT_README = """\
from ppcp import find_server, client_connect

pre_shared_key = b"super-secret-key"
# 1. Scans the LAN to find the server dynamically
server_socket = find_server(port=9000)

# 2. Performs full cryptographic handshake
session = client_connect(server_socket, pre_shared_key)
# Ready to send encrypted commands and files...
"""


def adapt(readme: str, port: int, *, pair_key: bool) -> str:
    """The README code with our import line and a free port (9000 may be taken here).

    With ``pair_key`` the human secret is replaced by a 32-byte PairKey from the
    environment (PSTP-HS); otherwise the README's b"super-secret-key" stays as
    written and runs PSTP-PAKE.
    """
    code = readme.replace("from ppcp import", "from pstp import").replace("9000", str(port))
    if pair_key:
        code = "import os\nfrom pstp import PairKey\n" + code.replace(
            'b"super-secret-key"', 'PairKey(bytes.fromhex(os.environ["PSTP_DEMO_KEY_HEX"]))'
        )
    return code


@netns_host.needs_netns
@pytest.mark.parametrize("pair_key", [False, True], ids=["super-secret-key", "pair-key"])
def test_ppcp_quick_start_runs_in_two_processes(tmp_path: Path, pair_key: bool) -> None:
    """The PPCP README's server.py and client.py, as two processes, find and talk to each other.

    They run in a namespace of their own (tests/netns_host.py), so the README's
    code runs as written, port 9000 and ``find_server``'s default broadcast
    included, and no PING leaves the machine.
    """
    pytest.importorskip("pstp.sync.discovery")
    server_py = tmp_path / "server.py"
    client_py = tmp_path / "client.py"
    server_py.write_text(
        adapt(SERVER_README, 9000, pair_key=pair_key) + "    session.send(session.recv())\n"
    )
    client_py.write_text(
        adapt(CLIENT_README, 9000, pair_key=pair_key)
        + 'session.send(b"kettle.on")\nprint(session.recv())\n'
    )
    env = netns_host.env(PSTP_DEMO_KEY_HEX=KEY.hex(), PYTHONUNBUFFERED="1")
    with netns_host.lone_host("ppcp") as ns:
        server = subprocess.Popen(
            netns_host.in_ns(ns, sys.executable, str(server_py)),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Ready once its discovery responder answers (it starts after the listener).
            ready = subprocess.run(
                netns_host.in_ns(
                    ns,
                    sys.executable,
                    "-m",
                    "tests.discovery.netns_peers",
                    "find",
                    "--port",
                    "9000",
                    "--seconds",
                    str(TIMEOUT * 2),
                ),
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT * 4,
                check=False,
            )
            assert server.poll() is None, server.communicate()[1]
            assert ready.returncode == 0, f"the server never answered discovery: {ready.stderr}"
            client = subprocess.run(
                netns_host.in_ns(ns, sys.executable, str(client_py)),
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT * 4,
                check=False,
            )
            assert client.returncode == 0, client.stderr
            assert client.stdout == "b'kettle.on'\n"
        finally:
            server.terminate()
            out, err = server.communicate(timeout=TIMEOUT)
    assert f"Connected to {ppcp._device_id()}!" in out, err
