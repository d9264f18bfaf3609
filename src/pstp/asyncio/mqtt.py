"""PSTP/2 through an MQTT broker (docs/protocol.md §19.3): one frame per message.

Both ends connect *outbound* to a broker, so a device behind NAT, a carrier-grade
NAT or a firewall that lets nothing in is still reached.  The broker carries
ciphertext under topics derived from key material (:mod:`pstp.protocol.mqtt`);
it learns no device id, peer name or action, and cannot forge, replay or reorder
a record without the session noticing: records are received in window mode
(§6.3), so a duplicate (a QoS 1 redelivery, or a copy anyone republishes) is
dropped and the session goes on.

The MQTT client is Eclipse paho (``paho-mqtt`` 2, MQTT 5) driven on the running
asyncio loop through its external-loop hooks: its socket is watched by the
loop, nothing runs in a thread except the blocking connect.  ``TCP_NODELAY`` is
set on the broker connection (paho leaves Nagle on, which costs a QoS 1
request/reply tens of milliseconds).  Messages are QoS 1 and never retained.
The broker's acknowledgements pace the sender: a session with more than
:data:`HIGH_WATER` bytes unacknowledged stops writing (``pause_writing``) until
they drop below :data:`LOW_WATER`, so a slow broker slows the sender instead of
growing a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from paho.mqtt.client import Client, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from pstp.address import Address
from pstp.asyncio.connection import SessionProtocol
from pstp.crypto.kdf import random_bytes
from pstp.exceptions import ErrorCode
from pstp.protocol.config import Config
from pstp.protocol.handshake import KeyRing
from pstp.protocol.mqtt import (
    SessionTopics,
    join_frames,
    max_record_for,
    new_session_id,
    prefix_of,
    split_frames,
    split_topic,
)
from pstp.wire.frames import FRAME_HEADER_LEN, FrameType

__all__ = [
    "HIGH_WATER",
    "LOW_WATER",
    "BrokerLink",
    "BrokerOptions",
    "MqttListener",
    "MqttTransport",
    "open_session",
]

_log = logging.getLogger("pstp.mqtt")

#: Unacknowledged bytes a session may have at the broker before it stops writing.
HIGH_WATER = 1 << 20
#: ... and below which it writes again.
LOW_WATER = 256 << 10
#: Bytes received for a session while it does not read, at most (then it ends).
MAX_BUFFERED = 8 << 20
#: MQTT keepalive towards the broker, in seconds.
KEEPALIVE = 30
#: The device's first and last wait before connecting to its broker again.
RECONNECT_FIRST, RECONNECT_MAX = 1.0, 30.0
# A RECORD frame's size above its body: frame header and record overhead (§3, §6.1).
_FRAME_EXTRA = FRAME_HEADER_LEN + 26
# Linux's TCP_QUICKACK (absent elsewhere: delayed ACKs then stay as they are).
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
#: Topic filters per SUBSCRIBE packet.
_SUBSCRIBE_BATCH = 128
# The record layer's overhead above max_record_size, the frame header, and room
# for the PUBLISH header and the longest topic (a prefix of 8 levels of 64).
_RECEIVE_EXTRA = 26 + FRAME_HEADER_LEN + 10 + 2 + 8 * 65 + 70


@dataclass(frozen=True)
class BrokerOptions:
    """How to log in to a broker: credentials and TLS (never part of an address).

    Attributes:
        username: the MQTT user name, if the broker wants one.
        password: its password (kept out of ``repr``).
        ssl: the TLS context for ``mqtts://`` (default: the system trust store,
            host name checked); a client certificate is loaded into it.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: _ssl.SSLContext | None = None


class BrokerError(ConnectionError):
    """The broker refused the connection or a subscription (with its reason)."""


class BrokerLink:
    """One MQTT connection to a broker, driven on the running loop.

    ``on_message(topic, payload)`` receives every PUBLISH; ``on_lost(reason)``
    is called once when the connection ends for any reason but :meth:`close`.
    """

    def __init__(
        self,
        address: Address,
        options: BrokerOptions | None,
        *,
        on_message: Callable[[str, bytes], None],
        on_lost: Callable[[str], None],
        max_receive: int,
    ) -> None:
        self.address = address
        self.loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._on_message = on_message
        self._on_lost = on_lost
        self._max_receive = max_receive
        options = options or BrokerOptions()
        client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="pstp-" + random_bytes(8).hex(),  # nothing that names anyone
            protocol=MQTTv5,
            reconnect_on_failure=False,
        )
        if options.username is not None:
            client.username_pw_set(options.username, options.password)
        if address.scheme == "mqtts":
            client.tls_set_context(options.ssl or _ssl.create_default_context())
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        client.on_publish = self._published
        client.on_subscribe = self._subscribed
        client.on_unsubscribe = self._subscribed
        self._client = client
        self._sock: socket.socket | None = None
        # The TCP socket (under TLS too), for socket options.
        self._raw: socket.socket | None = None
        self._writing = False
        self._misc: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[int | None] = self.loop.create_future()
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._unacked: dict[int, tuple[MqttTransport, int]] = {}
        self._closed = False
        # paho's callbacks run inside loop_read/loop_write/loop_misc under a lock
        # that is not reentrant: nothing may call back into its I/O from there.
        self._busy = False
        #: The broker's Maximum Packet Size (CONNACK), or None if it set none.
        self.packet_limit: int | None = None

    # -- connecting ----------------------------------------------------------

    async def connect(self, timeout: float) -> None:
        """Connect, log in and wait for CONNACK.

        Raises:
            OSError: the broker could not be reached (or TLS failed).
            BrokerError: the broker refused us (bad credentials, not authorized).
            TimeoutError: no CONNACK in time.
        """
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0  # the MQTT session ends with the connection
        props.MaximumPacketSize = self._max_receive
        client = self._client
        client.connect_timeout = timeout
        host, port = self.address.host, self.address.port
        try:
            await self.loop.run_in_executor(
                None,
                lambda: client.connect(host, port, KEEPALIVE, clean_start=True, properties=props),
            )
        except _ssl.SSLCertVerificationError as exc:
            raise OSError(
                f"{self.address}: TLS certificate not trusted ({exc.verify_message})"
            ) from None
        except _ssl.SSLError as exc:
            raise OSError(f"{self.address}: TLS failed ({exc.reason})") from None
        self._misc = self.loop.call_later(1.0, self._tick)
        try:
            self.packet_limit = await asyncio.wait_for(asyncio.shield(self._connack), timeout)
        except BaseException:
            self.close()
            raise

    def _connected(
        self, _c: Client, _u: Any, _flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        if self._connack.done():
            return
        if reason.is_failure:
            self._connack.set_exception(BrokerError(f"{self.address}: broker refused: {reason}"))
            return
        if getattr(props, "MaximumQoS", 1) < 1:
            self._connack.set_exception(
                BrokerError(f"{self.address}: the broker allows QoS 0 only; PSTP needs QoS 1")
            )
            return
        self._connack.set_result(getattr(props, "MaximumPacketSize", None))

    # -- the socket on the loop ---------------------------------------------

    def _soon(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._thread:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    def _socket_open(self, _c: Client, _u: Any, sock: Any) -> None:
        raw = sock if isinstance(sock, socket.socket) else None
        if raw is not None and raw.family in (socket.AF_INET, socket.AF_INET6):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._raw = raw

        def watch() -> None:
            if self._closed:  # given up (a timeout) while the connect ran in its thread
                with contextlib.suppress(OSError):
                    sock.close()
                return
            self._sock = sock
            self.loop.add_reader(sock, self._readable)
            self._flush()

        self._soon(watch)

    def _socket_close(self, _c: Client, _u: Any, sock: Any) -> None:
        def unwatch() -> None:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
            self._writing = False
            self._sock = None
            self._raw = None

        self._soon(unwatch)

    def _readable(self) -> None:
        client = self._client
        self._busy = True
        try:
            rc = client.loop_read()
            sock = self._sock
            # TLS may hold decrypted bytes the socket no longer signals.
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and isinstance(sock, _ssl.SSLSocket):
                if not sock.pending():
                    break
                rc = client.loop_read()
        finally:
            self._busy = False
        if _QUICKACK is not None and self._raw is not None:
            # A broker with Nagle on (Mosquitto's default) holds its next small
            # packet until we acknowledge the last; a delayed ACK (40 ms) then
            # stalls every round trip.  The kernel clears TCP_QUICKACK as it
            # goes: set it again after each read.
            with contextlib.suppress(OSError):
                self._raw.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        self._flush()

    def _flush(self) -> None:
        # paho queues what it sends from inside its callbacks; write it now,
        # and watch for writability only while the socket is full.
        if self._busy:
            return  # _readable flushes when paho is done
        client = self._client
        if client.want_write():
            self._busy = True
            try:
                client.loop_write()
            finally:
                self._busy = False
        sock = self._sock
        if sock is None:
            return
        if client.want_write():
            if not self._writing:
                self._writing = True
                self.loop.add_writer(sock, self._flush)
        elif self._writing:
            self._writing = False
            self.loop.remove_writer(sock)

    def _tick(self) -> None:
        self._busy = True
        try:
            self._client.loop_misc()  # MQTT keepalive: PINGREQ, or a dead broker noticed
        finally:
            self._busy = False
        self._flush()
        if not self._closed:
            self._misc = self.loop.call_later(1.0, self._tick)

    def _disconnected(
        self, _c: Client, _u: Any, _flags: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        text = str(reason)
        if not self._connack.done():
            self._connack.set_exception(BrokerError(f"{self.address}: broker closed: {text}"))
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(BrokerError(f"{self.address}: broker connection lost"))
        self._acks.clear()
        self._unacked.clear()
        if not self._closed:
            self._shut()
            self._on_lost(text)

    # -- messages ------------------------------------------------------------

    def _message(self, _c: Client, _u: Any, msg: MQTTMessage) -> None:
        if msg.retain:  # a retained message is old news from anyone: never a record
            return
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            return
        self._on_message(topic, bytes(msg.payload))

    def publish(self, topic: str, payload: bytes, owner: MqttTransport | None) -> bool:
        """Publish one message (QoS 1, not retained); False if it could not be queued.

        ``owner.acked`` is called with its size when the broker acknowledges it.
        """
        info = self._client.publish(topic, payload, qos=1, retain=False)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        self._flush()
        if owner is not None:
            self._unacked[info.mid] = (owner, len(payload))
        return True

    def _published(
        self, _c: Client, _u: Any, mid: int, _reason: ReasonCode, _p: Properties | None
    ) -> None:
        owner = self._unacked.pop(mid, None)
        if owner is not None:
            owner[0].acked(owner[1])

    async def subscribe(self, filters: Iterable[str]) -> None:
        """Subscribe (QoS 1, no local echo) and wait for the broker's SUBACK.

        Raises:
            BrokerError: the broker refused a filter (an ACL), or went away.
        """
        # No Local: never our own messages back; Retain Handling 2: no retained
        # message at all (one would be ignored anyway).
        options = SubscribeOptions(qos=1, noLocal=True, retainHandling=2)
        pending = list(filters)
        for start in range(0, len(pending), _SUBSCRIBE_BATCH):
            batch = [(t, options) for t in pending[start : start + _SUBSCRIBE_BATCH]]
            await self._await_ack(self._client.subscribe(batch), "subscribe")

    async def unsubscribe(self, filters: Iterable[str]) -> None:
        """Unsubscribe and wait for UNSUBACK."""
        pending = list(filters)
        for start in range(0, len(pending), _SUBSCRIBE_BATCH):
            await self._await_ack(
                self._client.unsubscribe(pending[start : start + _SUBSCRIBE_BATCH]),
                "unsubscribe",
            )

    async def _await_ack(self, sent: tuple[MQTTErrorCode, int | None], what: str) -> None:
        rc, mid = sent
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"{self.address}: cannot {what}: not connected")
        fut = self._acks[mid] = self.loop.create_future()
        self._flush()
        await fut

    def _subscribed(
        self, _c: Client, _u: Any, mid: int, reasons: list[ReasonCode], _p: Properties | None
    ) -> None:
        fut = self._acks.pop(mid, None)
        if fut is None or fut.done():
            return
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            fut.set_exception(BrokerError(f"{self.address}: broker refused: {refused[0]}"))
        elif any(r.value == 0 for r in reasons if r.packetType == PacketTypes.SUBACK):
            # Granted QoS 0: messages could be lost without a word.
            fut.set_exception(BrokerError(f"{self.address}: the broker granted QoS 0 only"))
        else:
            fut.set_result(None)

    # -- closing -------------------------------------------------------------

    def _shut(self) -> None:
        self._closed = True
        if self._misc is not None:
            self._misc.cancel()
        sock = self._sock
        if sock is not None:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
            self._sock = None

    def close(self) -> None:
        """Say DISCONNECT (if connected) and close the connection."""
        if self._closed:
            return
        if self._busy:  # inside a paho callback: once it has returned
            self.loop.call_soon(self.close)
            return
        client = self._client
        client.on_disconnect = None
        if self._sock is not None:
            client.disconnect()
            self._flush()
        self._shut()
        if not self._connack.done():
            self._connack.cancel()
        client.on_socket_close = None
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class MqttTransport(asyncio.Transport):
    """The transport one session sees: each ``write`` one PUBLISH to its topic."""

    def __init__(
        self,
        link: BrokerLink,
        topic: str,
        protocol: SessionProtocol,
        *,
        source: str,
        on_close: Callable[[MqttTransport], None],
        max_payload: int,
        held: bool = False,
    ) -> None:
        super().__init__()
        self._link = link
        self._max_payload = max_payload
        # Writes wait for release() (the initiator's subscription, §19.3).
        self._held_writes = held
        self._topic = topic
        self._protocol = protocol
        self._source = source
        self._on_close = on_close
        self._closing = False
        self._paused = False
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self._unacked = 0
        self._write_paused = False
        self._pending: list[bytes] = []

    # -- asyncio.Transport ---------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # Frames written in one turn of the loop (a request's OPEN, data and EOF;
        # data and its WINDOW) leave together, several to a message (§19.3): one
        # MQTT message then costs what three did.
        if self._closing:
            return
        if not self._pending and not self._held_writes:
            self._link.loop.call_soon(self._publish)
        self._pending.append(bytes(data))
        self._unacked += len(data)
        if self._unacked > HIGH_WATER and not self._write_paused:
            self._write_paused = True
            self._protocol.pause_writing()

    def release(self) -> None:
        """Writes may go now: what was held is published."""
        self._held_writes = False
        if self._pending:
            self._publish()

    def _publish(self) -> None:
        pending, self._pending = self._pending, []
        if self._closing:  # lost meanwhile (close() publishes what it has first)
            self._unacked -= sum(map(len, pending))
            return
        # Never above what the peer's broker connection accepts: its max_record.
        limit = min(self._max_payload, self._protocol.conn.max_send_body + _FRAME_EXTRA)
        for message in join_frames(pending, limit):
            if not self._link.publish(self._topic, message, self):
                self.acked(len(message))  # not sent (the link is going): not owed

    def acked(self, size: int) -> None:
        """The broker acknowledged ``size`` bytes of ours."""
        self._unacked -= size
        if self._write_paused and self._unacked <= LOW_WATER:
            self._write_paused = False
            self._protocol.resume_writing()

    def get_write_buffer_size(self) -> int:
        return self._unacked

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        if self._pending and not self._held_writes:  # the last frames (a CLOSE) go first
            self._publish()
        self._closing = True
        self._on_close(self)
        self._link.loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self._unacked -= sum(map(len, self._pending))
        self._pending = []
        self.close()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        while self._held and not self._paused and not self._closing:
            message = self._held.popleft()
            self._held_bytes -= len(message)
            self._protocol.message_received(message)

    def is_reading(self) -> bool:
        return not self._paused

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "pstp_source":
            return self._source
        if name == "peername":
            return None
        return default

    # -- from the broker -----------------------------------------------------

    def feed(self, payload: bytes) -> None:
        """One message arrived on this session's topic: each of its frames in turn."""
        frames = split_frames(payload)
        if frames is None:  # not whole frames: the session judges it (§3 rule 2a)
            frames = [payload]
        for frame in frames:
            self._feed_frame(frame)

    def _feed_frame(self, payload: bytes) -> None:
        if self._closing:
            return
        if not self._paused:
            self._protocol.message_received(payload)
            return
        # The peer's windows bound what a conforming peer sends while we do not
        # read; past this, it is not conforming.
        self._held.append(payload)
        self._held_bytes += len(payload)
        if self._held_bytes > MAX_BUFFERED:
            self._held.clear()
            self._held_bytes = 0
            self._paused = False
            self._protocol.close(ErrorCode.PROTOCOL_ERROR, "sent past the flow-control windows")

    def lost(self, exc: Exception | None) -> None:
        """The broker connection (or this session's place on it) ended."""
        if self._closing:
            return
        self._closing = True
        self._on_close(self)
        self._protocol.connection_lost(exc)


def _receive_limit(config: Config) -> int:
    return config.max_record_size + _RECEIVE_EXTRA


async def open_session(
    address: Address,
    options: BrokerOptions | None,
    rid: str,
    make_protocol: Callable[[Config], SessionProtocol],
    config: Config,
    timeout: float,
) -> SessionProtocol:
    """The initiator's side: connect to the broker and start one session on it.

    The MQTT connection is this session's own; it closes with the session.

    Args:
        address: the ``mqtt://`` or ``mqtts://`` address (its path is the topic prefix).
        options: credentials and TLS for the broker.
        rid: the rendezvous id of the key (:func:`pstp.protocol.mqtt.rendezvous_id`).
        make_protocol: builds the session protocol for the session's config
            (window mode, and records that fit the broker's packet limit).
        config: the session's limits before fitting.
        timeout: seconds for connecting and subscribing.
    """
    topics = SessionTopics(prefix_of(address.path), rid, new_session_id())
    transport: MqttTransport | None = None

    def on_message(topic: str, payload: bytes) -> None:
        if topic == topics.down and transport is not None:
            transport.feed(payload)

    def on_lost(reason: str) -> None:
        if transport is not None:
            transport.lost(ConnectionResetError(f"broker connection lost: {reason}"))

    link = BrokerLink(
        address,
        options,
        on_message=on_message,
        on_lost=on_lost,
        max_receive=_receive_limit(config),
    )
    try:
        await link.connect(timeout)
        record = max_record_for(link.packet_limit, topics.up, config.max_record_size)
        subscribed = asyncio.ensure_future(link.subscribe([topics.down]))
    except BaseException:
        link.close()
        raise
    session_config = msgspec.structs.replace(config, ordered=False, max_record_size=record)
    protocol = make_protocol(session_config)
    protocol.peer_address = str(address)
    transport = MqttTransport(
        link,
        topics.up,
        protocol,
        source=str(address),
        on_close=lambda _t: link.close(),
        max_payload=session_config.max_record_size + _FRAME_EXTRA,
        held=True,
    )
    # HS_INIT is made while the SUBACK is on its way, and held until it is there (the
    # answer to it would be lost before the subscription exists).
    protocol.connection_made(transport)
    try:
        await subscribed
    except BaseException:
        subscribed.cancel()
        transport.abort()
        raise
    transport.release()
    return protocol


class MqttListener:
    """A device's presence on one broker: sessions for every key in its ring.

    It subscribes to the responder filter of every key in ``keyring`` (pair
    keys and tokens), follows the ring as it changes (:meth:`refresh`, and a
    check every second), and starts a session for each new session id whose
    first message is a handshake frame.  It reconnects with back-off when the
    broker goes away; the sessions on the lost connection end as truncated.
    """

    def __init__(
        self,
        address: Address,
        options: BrokerOptions | None,
        keyring: KeyRing,
        factory: Callable[[Config, KeyRing], SessionProtocol],
        config: Config,
    ) -> None:
        self.address = address
        self.prefix = prefix_of(address.path)
        self._options = options
        self._keyring = keyring
        self._factory = factory
        self._config = config
        self._session_config = config
        self._link: BrokerLink | None = None
        self._sessions: dict[tuple[str, str], MqttTransport] = {}
        self._subscribed: set[str] = set()
        self._wanted: set[str] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Set once connected and subscribed (again after each reconnection).
        self.ready = asyncio.Event()
        #: Why the last connection attempt failed, for status and logs.
        self.last_error: str | None = None

    def start(self) -> None:
        """Connect (and keep reconnecting) in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def refresh(self) -> None:
        """The key ring changed: follow it with the subscriptions."""
        self._changed.set()

    @property
    def sessions(self) -> int:
        """Sessions open on this broker now."""
        return len(self._sessions)

    def _filters(self) -> set[str]:
        return {SessionTopics.responder_filter(self.prefix, p.rid) for p in self._keyring}

    async def _run(self) -> None:
        delay = RECONNECT_FIRST
        while not self._closed:
            lost = asyncio.Event()
            try:
                await self._connect(lost)
            except (OSError, BrokerError, TimeoutError, ValueError) as exc:
                self._drop_link()
                if self.last_error != str(exc):
                    _log.warning("MQTT %s: %s (retrying)", self.address, exc)
                self.last_error = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_FIRST
            self.last_error = None
            _log.info("MQTT %s: connected", self.address)
            await self._follow(lost)
            self._drop_link()

    async def _connect(self, lost: asyncio.Event) -> None:
        def on_lost(reason: str) -> None:
            self.last_error = f"connection lost: {reason}"
            _log.warning("MQTT %s: %s", self.address, self.last_error)
            lost.set()
            self._changed.set()

        link = BrokerLink(
            self.address,
            self._options,
            on_message=self._message,
            on_lost=on_lost,
            max_receive=_receive_limit(self._config),
        )
        self._link = link
        await link.connect(self._config.handshake_timeout)
        longest = SessionTopics(self.prefix, "0" * 32, "0" * 32).down
        record = max_record_for(link.packet_limit, longest, self._config.max_record_size)
        self._session_config = msgspec.structs.replace(
            self._config, ordered=False, max_record_size=record
        )
        self._subscribed = set()
        await self._sync()
        self.ready.set()

    async def _sync(self) -> None:
        link = self._link
        assert link is not None
        wanted = self._filters()
        new, gone = wanted - self._subscribed, self._subscribed - wanted
        if new:
            await link.subscribe(sorted(new))
        if gone:
            await link.unsubscribe(sorted(gone))
        self._subscribed = wanted

    async def _follow(self, lost: asyncio.Event) -> None:
        while not lost.is_set() and not self._closed:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 1.0)
            if lost.is_set() or self._closed:
                return
            if self._filters() != self._subscribed:
                try:
                    await self._sync()
                except BrokerError as exc:
                    _log.warning("MQTT %s: %s", self.address, exc)
                    return

    def _drop_link(self) -> None:
        self.ready.clear()
        link, self._link = self._link, None
        if link is not None:
            link.close()
        for transport in list(self._sessions.values()):
            transport.lost(ConnectionResetError("broker connection lost"))
        self._sessions.clear()

    def _message(self, topic: str, payload: bytes) -> None:
        ids = split_topic(self.prefix, topic)
        if ids is None:
            return
        transport = self._sessions.get(ids)
        if transport is not None:
            transport.feed(payload)
            return
        link = self._link
        # A new session starts only with a handshake frame, for a key we hold.
        if (
            link is None
            or self._closed
            or not payload
            or payload[0] != FrameType.HS_INIT
            or SessionTopics.responder_filter(self.prefix, ids[0]) not in self._subscribed
        ):
            return
        topics = SessionTopics(self.prefix, ids[0], ids[1])
        # Only the keys of the topic's RID are tried (§19.3): the topic is bound to
        # the key, and trial matching costs one key instead of the whole ring.
        protocol = self._factory(self._session_config, self._keyring.subset(ids[0]))
        protocol.peer_address = f"{self.address} {ids[1][:8]}"
        transport = MqttTransport(
            link,
            topics.down,
            protocol,
            source=f"mqtt:{ids[0]}",
            on_close=lambda t: self._forget(ids, t),
            max_payload=self._session_config.max_record_size + _FRAME_EXTRA,
        )
        self._sessions[ids] = transport
        protocol.connection_made(transport)
        transport.feed(payload)

    def _forget(self, ids: tuple[str, str], transport: MqttTransport) -> None:
        if self._sessions.get(ids) is transport:
            del self._sessions[ids]

    # -- the part of asyncio.Server that pstp.asyncio.server.Server uses ------

    @property
    def sockets(self) -> list[socket.socket]:
        """No listening socket: the device connects out to its broker."""
        return []

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        await asyncio.Event().wait()

    def close(self) -> None:
        """Stop taking sessions; :meth:`wait_closed` then disconnects from the broker.

        Sessions still open can say CLOSE in between (``Server.close``).
        """
        self._closed = True
        self._changed.set()
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        """Disconnect from the broker (the sessions still on it end)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._drop_link()
