"""The MQTT transport through a real Mosquitto (docs/protocol.md §19.3), driver level.

Every test starts its own broker (tests/mosquitto.py) on loopback; a spy is a
plain paho client subscribed to ``#``, and an injector a plain paho client that
republishes what the spy saw, as anyone allowed to publish on the broker could.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from pstp.address import parse
from pstp.asyncio.client import connect
from pstp.asyncio.connection import Channel, Session
from pstp.asyncio.mqtt import HIGH_WATER, BrokerError, BrokerOptions
from pstp.asyncio.server import Server, serve
from pstp.protocol.handshake import KeyRing
from pstp.protocol.mqtt import rendezvous_id
from pstp.protocol.pake import PakeProver
from tests.helpers import TIMEOUT
from tests.mosquitto import Broker, bridged, needs_mosquitto

pytestmark = needs_mosquitto

KEY = bytes(range(32))
DEVICE = "kettle-in-the-kitchen"
CLIENT = "phone-of-alice"
PASSWORD = "s3cret-" + os.urandom(4).hex()


class Spy:
    """A paho client subscribed to ``#``: every message the broker carries."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_message = self._got
        client.on_subscribe = lambda *_a: ready.set()
        client.connect(broker.host, broker.port)
        client.subscribe("#", qos=1)
        client.loop_start()
        assert ready.wait(TIMEOUT), "the spy could not subscribe"
        self.client = client

    def _got(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def seen(self) -> list[tuple[str, bytes]]:
        """What it saw so far."""
        with self._lock:
            return list(self.messages)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish as a stranger with access to the broker would (QoS 1, waited for)."""
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path) as b:
        yield b


@pytest.fixture
def spy(broker: Broker) -> Iterator[Spy]:
    s = Spy(broker)
    yield s
    s.close()


class Device:
    """A server on the broker whose sessions echo session data (upper-cased)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sessions: list[Session] = []


@pytest.fixture
async def device(broker: Broker) -> AsyncIterator[Device]:
    dev: Device

    async def handler(session: Session) -> None:
        dev.sessions.append(session)
        while True:
            data = await session.recv()
            if not data:
                return
            await session.send(data.upper())

    async def echo_channel(ch: Channel) -> int:
        while data := await ch.read():
            await ch.write(data.upper())
        await ch.write_eof()
        return 0

    ring = KeyRing()
    ring.add(CLIENT, KEY)
    server = await serve(
        handler,
        "",
        0,
        keyring=ring,
        own_id=DEVICE,
        mqtt=parse(broker.url),
        handlers={"echo": echo_channel},
    )
    dev = Device(server)
    assert server.mqtt is not None
    await asyncio.wait_for(server.mqtt.ready.wait(), TIMEOUT)
    yield dev
    await server.close()


async def _echo_back(session: Session) -> None:
    while data := await session.recv():
        await session.send(data)


@contextlib.asynccontextmanager
async def echo_device(url: str) -> AsyncIterator[Server]:
    """A device serving CLIENT's key through the broker at ``url``, echoing session data;
    yielded once it has subscribed."""
    ring = KeyRing()
    ring.add(CLIENT, KEY)
    server = await serve(_echo_back, "", 0, keyring=ring, own_id=DEVICE, mqtt=parse(url))
    try:
        assert server.mqtt is not None
        await asyncio.wait_for(server.mqtt.ready.wait(), TIMEOUT)
        yield server
    finally:
        await server.close()


async def echo(session: Session, data: bytes) -> bytes:
    """Send ``data`` on the session stream and read back as many bytes."""
    await session.send(data)
    got = b""
    while len(got) < len(data):
        chunk = await asyncio.wait_for(session.recv(), TIMEOUT)
        assert chunk, "the session ended"
        got += chunk
    return got


async def test_a_session_through_the_broker(broker: Broker, device: Device) -> None:
    """Handshake, then data both ways; the session is in window mode with no drops."""
    async with await connect(broker.url, pair_key=KEY, own_id=CLIENT) as session:
        assert session.peer_id == DEVICE
        assert await echo(session, b"hello kettle") == b"HELLO KETTLE"
        assert not session.connection.config.ordered
        big = os.urandom(3 << 20).hex().encode()[: 3 << 20]
        assert await echo(session, big) == big.upper()
        assert session.connection.dropped_records == 0


async def test_the_broker_sees_no_name_and_no_plaintext(
    broker: Broker, device: Device, spy: Spy
) -> None:
    """Topics are HKDF outputs and random ids; payloads are ciphertext."""
    marker = b"PLAINTEXT-MARKER-4711"
    async with await connect(broker.url, pair_key=KEY, own_id=CLIENT) as session:
        assert await echo(session, marker) == marker.upper()
    await asyncio.sleep(0.2)
    seen = spy.seen()
    assert len(seen) >= 4, seen
    rid = rendezvous_id(KEY)
    for topic, payload in seen:
        assert topic.startswith(f"pstp/{rid}/") and topic[-2:] in ("/i", "/r"), topic
        for word in (DEVICE, CLIENT, "kettle", "phone"):
            assert word not in topic and word.encode() not in payload, (word, topic)
        for text in (marker, marker.upper()):
            assert text not in payload
        assert payload[0] in (0x01, 0x02, 0x17), payload[:4]  # HS_INIT, HS_RESP, RECORD


async def test_duplicated_and_reordered_messages_are_dropped(
    broker: Broker, device: Device, spy: Spy
) -> None:
    """Every message republished twice, the copies in reverse order: all dropped, the
    session carries on (§6.3 window mode); handshake frames replayed start nothing."""
    async with await connect(broker.url, pair_key=KEY, own_id=CLIENT) as session:
        for i in range(5):
            assert await echo(session, b"round %d" % i) == b"ROUND %d" % i
        await asyncio.sleep(0.2)
        seen = spy.seen()
        records = [(t, p) for t, p in seen if p[0] == 0x17]
        assert len(records) >= 10
        for topic, payload in reversed(seen):  # reordered: newest first
            await asyncio.to_thread(spy.publish, topic, payload)
        for topic, payload in seen:  # duplicated again, in order
            await asyncio.to_thread(spy.publish, topic, payload)
        assert await echo(session, b"after the storm") == b"AFTER THE STORM"
        dropped_here = session.connection.dropped_records
        dropped_there = device.sessions[0].connection.dropped_records
        assert dropped_here >= len([t for t, p in records if t.endswith("/r")])
        assert dropped_there >= len([t for t, p in records if t.endswith("/i")])
        assert len(device.sessions) == 1  # the replayed HS_INIT opened nothing


async def test_junk_on_the_device_topics_harms_nothing(
    broker: Broker, device: Device, spy: Spy
) -> None:
    """Retained, empty, oversized-header, non-handshake and malformed-topic messages, and
    a truncated HS_INIT: no crash, no lasting session; a real client is served after."""
    rid = rendezvous_id(KEY)
    sid = "ab" * 16
    junk = [
        (f"pstp/{rid}/{sid}/i", b"\x17\x00\x00\x10" + bytes(16), False),  # record, no session
        (f"pstp/{rid}/{sid}/i", b"", False),
        (f"pstp/{rid}/{'cd' * 16}/i", b"\x01\x00\x00\x05abc", True),  # retained HS_INIT
        (f"pstp/{rid}/{'ef' * 16}/i", b"\x01\xff\xff\xff", False),  # huge length header
        (f"pstp/{rid}/not-hex/i", b"\x01\x00\x00\x00", False),
        (f"pstp/{'0' * 32}/{sid}/i", b"\x01\x00\x00\x00", False),  # a key nobody holds
    ]
    for topic, payload, retain in junk:
        await asyncio.to_thread(spy.publish, topic, payload, retain=retain)
    await asyncio.sleep(0.3)
    assert device.server.unauthenticated <= 1  # at most the huge-length one, then dropped
    async with await connect(broker.url, pair_key=KEY, own_id=CLIENT) as session:
        assert await echo(session, b"still here") == b"STILL HERE"
    assert device.server.unauthenticated == 0
    # Clear the retained message for the next broker user.
    await asyncio.to_thread(spy.publish, f"pstp/{rid}/{'cd' * 16}/i", b"", retain=True)


async def test_a_wrong_key_meets_nobody(broker: Broker, device: Device) -> None:
    """Another key means another topic: no device answers, the client times out."""
    with pytest.raises(TimeoutError):
        await connect(broker.url, pair_key=bytes(32), own_id=CLIENT, timeout=1.0)


async def test_pairing_is_not_offered_through_a_broker(broker: Broker) -> None:
    """No pair key, no topic: say so rather than wait."""
    with pytest.raises(ValueError, match="needs a pair key"):
        await connect(broker.url, pake=PakeProver(b"12345678", "x"), own_id=CLIENT)


async def test_no_broker_is_a_connection_error(tmp_path: Path) -> None:
    """Nothing listening: ConnectionRefusedError (an OSError), quickly."""
    broker = Broker(tmp_path)  # not started
    with pytest.raises(OSError):
        await connect(broker.url, pair_key=KEY, own_id=CLIENT, timeout=TIMEOUT)


async def test_credentials_are_checked_by_the_broker(tmp_path: Path) -> None:
    """A broker with a password file: refused without the password, served with it."""
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "kettle", PASSWORD], check=True)
    with Broker(tmp_path, extra=f"allow_anonymous false\npassword_file {passwords}\n") as b:
        conf = b.conf.read_text().replace("allow_anonymous true\n", "")
        b.conf.write_text(conf)
        b.stop()
        b.start()
        with pytest.raises(BrokerError, match="refused: Not authorized"):
            await connect(b.url, pair_key=KEY, own_id=CLIENT)
        login = BrokerOptions(username="kettle", password=PASSWORD)
        ring = KeyRing()
        ring.add(CLIENT, KEY)
        server = await serve(
            None, "", 0, keyring=ring, own_id=DEVICE, mqtt=parse(b.url), broker=login
        )
        try:
            assert server.mqtt is not None
            await asyncio.wait_for(server.mqtt.ready.wait(), TIMEOUT)
            async with await connect(b.url, pair_key=KEY, own_id=CLIENT, broker=login) as s:
                assert s.peer_id == DEVICE
            assert PASSWORD not in repr(login)
        finally:
            await server.close()


async def test_records_fit_the_brokers_packet_limit(tmp_path: Path) -> None:
    """A broker announcing an 8 KiB Maximum Packet Size: records shrink to fit on both
    sides and 1 MiB crosses; a limit too small for any record is refused by name."""
    with Broker(tmp_path, extra="max_packet_size 8192\n") as b:
        async with echo_device(b.url):
            async with await connect(b.url, pair_key=KEY, own_id=CLIENT) as session:
                assert session.connection.config.max_record_size < 8192
                data = os.urandom(1 << 20)
                assert await echo(session, data) == data
    (tmp_path / "tiny").mkdir()
    with Broker(tmp_path / "tiny", extra="max_packet_size 1000\n") as tiny:
        with pytest.raises(ValueError, match=r"maximum packet size \(1000 bytes\) is too small"):
            await connect(tiny.url, pair_key=KEY, own_id=CLIENT)


async def test_a_stalled_broker_slows_the_sender(broker: Broker, device: Device) -> None:
    """The broker stopped (SIGSTOP): a channel's writer stops at the high-water mark
    instead of queueing; once it resumes, everything arrives, echoed."""
    async with await connect(broker.url, pair_key=KEY, own_id=CLIENT) as session:
        ch = await session.open_channel("echo")
        transport = session._protocol._transport
        assert transport is not None
        assert broker.proc is not None
        data = os.urandom(16 << 20)
        received = bytearray()

        async def produce() -> None:
            for at in range(0, len(data), 1 << 16):
                await ch.write(data[at : at + (1 << 16)])
            await ch.write_eof()

        async def consume() -> None:
            while chunk := await ch.read():
                received.extend(chunk)

        reading = asyncio.ensure_future(consume())
        await asyncio.sleep(0)
        broker.proc.send_signal(signal.SIGSTOP)
        try:
            sending = asyncio.ensure_future(produce())
            await asyncio.sleep(1.0)
            assert not sending.done()
            assert transport.get_write_buffer_size() <= HIGH_WATER + (140 << 10)
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        await asyncio.wait_for(asyncio.gather(sending, reading), TIMEOUT * 4)
        assert bytes(received) == data.upper()


async def test_the_device_comes_back_after_the_broker_restarts(
    broker: Broker, device: Device
) -> None:
    """Broker down: the session on it ends as truncated; broker up again: the device
    reconnects on its own and serves a new session."""
    session = await connect(broker.url, pair_key=KEY, own_id=CLIENT)
    assert await echo(session, b"before") == b"BEFORE"
    broker.stop()
    await asyncio.wait_for(session.wait_closed(), TIMEOUT)
    assert device.server.mqtt is not None
    start = time.monotonic()
    while device.server.mqtt.ready.is_set():
        assert time.monotonic() - start < TIMEOUT
        await asyncio.sleep(0.05)
    broker.start()
    await asyncio.wait_for(device.server.mqtt.ready.wait(), TIMEOUT * 2)
    async with await connect(broker.url, pair_key=KEY, own_id=CLIENT) as again:
        assert await echo(again, b"after") == b"AFTER"


async def test_keys_added_later_are_followed(broker: Broker) -> None:
    """A key added to the ring while serving (a pairing, a token) is subscribed to."""
    ring = KeyRing()
    server = await serve(None, "", 0, keyring=ring, own_id=DEVICE, mqtt=parse(broker.url))
    try:
        assert server.mqtt is not None
        await asyncio.wait_for(server.mqtt.ready.wait(), TIMEOUT)
        ring.add(CLIENT, KEY)
        server.mqtt.refresh()
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                session = await connect(broker.url, pair_key=KEY, own_id=CLIENT, timeout=1.0)
                break
            except TimeoutError:
                assert time.monotonic() < deadline
        await session.close()
        ring.remove(CLIENT)
        server.mqtt.refresh()
        await asyncio.sleep(0.5)
        with pytest.raises(TimeoutError):
            await connect(broker.url, pair_key=KEY, own_id=CLIENT, timeout=1.0)
    finally:
        await server.close()


async def test_through_two_bridged_brokers(tmp_path: Path) -> None:
    """Device on broker A, client on broker B, joined by a Mosquitto bridge: unchanged,
    and what a publisher on B replays, reversed and duplicated, is dropped on both ends."""
    with bridged(tmp_path) as (a, b):
        async with echo_device(a.url):
            spy = Spy(b)
            try:
                async with await connect(b.url, pair_key=KEY, own_id=CLIENT) as session:
                    data = os.urandom(2 << 20)
                    assert await echo(session, data) == data
                    await asyncio.sleep(0.2)
                    seen = spy.seen()
                    for topic, payload in [*reversed(seen), *seen]:
                        await asyncio.to_thread(spy.publish, topic, payload)
                    assert await echo(session, b"still one session") == b"still one session"
                    assert session.connection.dropped_records > 0
            finally:
                spy.close()


async def test_the_broker_connection_has_nagle_off(broker: Broker, device: Device) -> None:
    """TCP_NODELAY on the client's broker connection (paho leaves Nagle on, which holds a
    small QoS 1 message back until the previous one is acknowledged)."""
    import socket

    async with await connect(broker.url, pair_key=KEY, own_id=CLIENT) as session:
        transport = session._protocol._transport
        sock = transport._link._client.socket()  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


async def test_a_request_is_one_message_each_way(broker: Broker, device: Device, spy: Spy) -> None:
    """OPEN, data and EOF of a request leave in one flush and travel as one MQTT message
    (several whole frames in one message, §19.3); the reply likewise."""
    async with await connect(broker.url, pair_key=KEY, own_id=CLIENT) as session:
        assert await session.request("echo", b"kettle?") == b"KETTLE?"
        await asyncio.sleep(0.3)
        before = len(spy.seen())
        assert await session.request("echo", b"kettle!") == b"KETTLE!"
        await asyncio.sleep(0.3)
        during = spy.seen()[before:]
    up = [p for t, p in during if t.endswith("/i")]
    down = [p for t, p in during if t.endswith("/r")]
    assert len(up) == 1, [len(p) for p in up]
    assert len(down) <= 2, [len(p) for p in down]  # the reply, and at most a late WINDOW
