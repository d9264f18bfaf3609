"""The sans-I/O connection: the one object drivers talk to (docs/protocol.md §4-§6).

Bytes go in with :meth:`Connection.receive_data`; events come out of
:meth:`Connection.events_received`; bytes to send come out of
:meth:`Connection.data_to_send`.  The clock is passed in.  Bad input from the
peer never raises: the connection closes (silently while the responder has not
authenticated the initiator, otherwise with a CLOSE record) and reports
:class:`~pstp.protocol.events.ConnectionTerminated`, keeping the cause in
:attr:`Connection.close_exc`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable

from pstp.crypto.kdf import hkdf_expand_sha256
from pstp.exceptions import (
    ConnectionClosed,
    DecryptError,
    ErrorCode,
    FrameTooLarge,
    HandshakeFailed,
    InvalidState,
    LocalProtocolError,
    PeerFlood,
    ProtocolError,
    PstpError,
    RemoteProtocolError,
    ReplayError,
)
from pstp.protocol.channels import ChannelState, ChannelTable
from pstp.protocol.config import Config
from pstp.protocol.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    HandshakeCompleted,
    HeartbeatAcknowledged,
)
from pstp.protocol.handshake import (
    DiscoveryBinding,
    DiscoveryLookup,
    InitiatorHandshake,
    KeyRing,
    ResponderHandshake,
    SessionKeys,
)
from pstp.protocol.pake import PakeInitiator, PakeProver, PakeResponder, PakeVerifier
from pstp.protocol.record import RecordReceiver, RecordSender, cipher_for_suite
from pstp.wire.frames import (
    CONFIRM_LEN,
    FRAME_HEADER_LEN,
    RECORD_HEADER_LEN,
    TAG_LEN,
    ClosePayload,
    FrameType,
    InnerType,
)
from pstp.wire.messages import (
    CHANNEL_DATA_HEADER_LEN,
    ChannelCode,
    ControlMessage,
    Params,
    decode_channel_data,
    decode_control,
    encode_channel_data,
    encode_control,
)

__all__ = ["TRANSITIONS", "Connection", "ConnectionState", "Input", "Role"]

_log = logging.getLogger("pstp.protocol")


class Role(enum.Enum):
    """Which side of the handshake we play."""

    CLIENT = "initiator"
    SERVER = "responder"


class ConnectionState(enum.Enum):
    """Where a connection is; waiting states say what they wait for (§4)."""

    IDLE = enum.auto()
    CLIENT_EXPECT_RESPONSE = enum.auto()
    CLIENT_EXPECT_PAIR_RESP = enum.auto()
    CLIENT_EXPECT_SHARE_V = enum.auto()
    SERVER_EXPECT_INIT = enum.auto()
    SERVER_EXPECT_CONFIRM = enum.auto()
    SERVER_EXPECT_SHARE_P = enum.auto()
    SERVER_EXPECT_CONFIRM_P = enum.auto()
    ESTABLISHED = enum.auto()
    CLOSED = enum.auto()


class Input(enum.Enum):
    """What can arrive: a handshake frame or a record's inner type."""

    HS_INIT = enum.auto()
    HS_RESP = enum.auto()
    PAIR_REQ = enum.auto()
    PAIR_RESP = enum.auto()
    PAIR_SHARE_P = enum.auto()
    PAIR_SHARE_V = enum.auto()
    PAIR_CONFIRM_P = enum.auto()
    CONFIRM = enum.auto()
    DATA = enum.auto()
    PING = enum.auto()
    PONG = enum.auto()
    KEY_UPDATE = enum.auto()
    CLOSE = enum.auto()
    CHANNEL_CONTROL = enum.auto()
    CHANNEL_DATA = enum.auto()


_S = ConnectionState
#: The legal moves (§4, table 1).  Anything else ends the connection.
TRANSITIONS: dict[tuple[ConnectionState, Input], ConnectionState] = {
    (_S.SERVER_EXPECT_INIT, Input.HS_INIT): _S.SERVER_EXPECT_CONFIRM,
    (_S.CLIENT_EXPECT_RESPONSE, Input.HS_RESP): _S.ESTABLISHED,
    (_S.SERVER_EXPECT_CONFIRM, Input.CONFIRM): _S.ESTABLISHED,
    (_S.SERVER_EXPECT_INIT, Input.PAIR_REQ): _S.SERVER_EXPECT_SHARE_P,
    (_S.CLIENT_EXPECT_PAIR_RESP, Input.PAIR_RESP): _S.CLIENT_EXPECT_SHARE_V,
    (_S.SERVER_EXPECT_SHARE_P, Input.PAIR_SHARE_P): _S.SERVER_EXPECT_CONFIRM_P,
    (_S.CLIENT_EXPECT_SHARE_V, Input.PAIR_SHARE_V): _S.ESTABLISHED,
    (_S.SERVER_EXPECT_CONFIRM_P, Input.PAIR_CONFIRM_P): _S.ESTABLISHED,
    (_S.ESTABLISHED, Input.DATA): _S.ESTABLISHED,
    (_S.ESTABLISHED, Input.PING): _S.ESTABLISHED,
    (_S.ESTABLISHED, Input.PONG): _S.ESTABLISHED,
    (_S.ESTABLISHED, Input.KEY_UPDATE): _S.ESTABLISHED,
    (_S.ESTABLISHED, Input.CLOSE): _S.CLOSED,
    (_S.ESTABLISHED, Input.CHANNEL_CONTROL): _S.ESTABLISHED,
    (_S.ESTABLISHED, Input.CHANNEL_DATA): _S.ESTABLISHED,
}

_PAKE_INPUT = {
    FrameType.PAIR_REQ: Input.PAIR_REQ,
    FrameType.PAIR_RESP: Input.PAIR_RESP,
    FrameType.PAIR_SHARE_P: Input.PAIR_SHARE_P,
    FrameType.PAIR_SHARE_V: Input.PAIR_SHARE_V,
    FrameType.PAIR_CONFIRM_P: Input.PAIR_CONFIRM_P,
}

_INNER_INPUT = {
    InnerType.CONFIRM: Input.CONFIRM,
    InnerType.DATA: Input.DATA,
    InnerType.PING: Input.PING,
    InnerType.PONG: Input.PONG,
    InnerType.KEY_UPDATE: Input.KEY_UPDATE,
    InnerType.CLOSE: Input.CLOSE,
    InnerType.CHANNEL_CONTROL: Input.CHANNEL_CONTROL,
    InnerType.CHANNEL_DATA: Input.CHANNEL_DATA,
}

# A record frame body: record header, inner type, payload, tag (§6.1).
_RECORD_EXTRA = RECORD_HEADER_LEN + 1 + TAG_LEN
# Heartbeat body: an 8-byte counter echoed by PONG (§6.5).
_PING_LEN = 8
_PINGS_REMEMBERED = 16


class Connection:
    """One PSTP/2 session, either role, with no I/O of its own.

    Args:
        role: initiator (``Role.CLIENT``) or responder (``Role.SERVER``).
        config: limits and algorithms.
        pair_key: initiator only: the 32-byte pair key.
        timestamp: initiator only: wall-clock nanoseconds for HS_INIT (§5.1).
        responder_id: initiator only: the device id we expect, if known.
        discovery: initiator only: the (nonce, PING, PONG) that found the peer.
        keyring: responder only: the keys we accept.
        own_id: our device id (required for a responder; an initiator states it).
        discovery_lookup: responder only: PING/PONG exchanged under a nonce.
        pake: initiator: a :class:`PakeProver` (a human code or passphrase) instead
            of ``pair_key``; responder: a :class:`PakeVerifier` accepted besides
            the key ring (§15).
        logger: where debug lines go (``<`` received, ``>`` sent, ``=`` state).
        wall_clock: responder only: nanoseconds since the Unix epoch (``time.time_ns``);
            an HS_INIT timestamp more than 5 minutes ahead of it is refused (§5.1).
            ``None``: no such bound (this core reads no clock of its own).

    Raises:
        LocalProtocolError: a role-specific argument is missing.
    """

    def __init__(
        self,
        role: Role,
        config: Config | None = None,
        *,
        pair_key: bytes | None = None,
        timestamp: int | None = None,
        responder_id: str | None = None,
        discovery: DiscoveryBinding | None = None,
        keyring: KeyRing | None = None,
        own_id: str | None = None,
        discovery_lookup: DiscoveryLookup | None = None,
        pake: PakeProver | PakeVerifier | None = None,
        logger: logging.Logger | None = None,
        wall_clock: Callable[[], int] | None = None,
    ) -> None:
        self.role = role
        self.config = config or Config()
        self._log = logger or _log
        self.debug = self._log.isEnabledFor(logging.DEBUG)
        self._state = ConnectionState.IDLE
        self._initiator: InitiatorHandshake | None = None
        self._responder: ResponderHandshake | None = None
        self._pake_prover = pake if isinstance(pake, PakeProver) else None
        self._pake_verifier = pake if isinstance(pake, PakeVerifier) else None
        self._pake_initiator: PakeInitiator | None = None
        self._pake_responder: PakeResponder | None = None
        self._challenge_response: tuple[bytes, bytes] | None = None
        #: True when the session was keyed by PSTP-PAKE (a human code) rather than a pair key.
        self.via_pake = False
        if role is Role.CLIENT:
            if self._pake_verifier is not None:
                raise LocalProtocolError("an initiator takes a PakeProver, not a verifier")
            if self._pake_prover is None and (pair_key is None or timestamp is None):
                raise LocalProtocolError("an initiator needs pair_key and timestamp, or pake")
            self._client_args = (
                pair_key or b"",
                timestamp or 0,
                responder_id,
                discovery,
                own_id or "",
            )
        else:
            if self._pake_prover is not None:
                raise LocalProtocolError("a responder takes a PakeVerifier, not a prover")
            if keyring is None:
                keyring = KeyRing()
            if own_id is None:
                raise LocalProtocolError("a responder needs own_id")
            if self._pake_verifier is not None and self._pake_verifier.own_id != own_id:
                raise LocalProtocolError("the PAKE verifier belongs to another device id")
            keepalive = self.config.keepalive_interval
            self._responder = ResponderHandshake(
                keyring,
                self.config,
                own_id=own_id,
                discovery_lookup=discovery_lookup,
                keepalive_ms=int(keepalive * 1000) if keepalive else 0,
                wall_clock=wall_clock,
            )
        self._inbuf = bytearray()
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._sender: RecordSender | None = None
        self._receiver: RecordReceiver | None = None
        self._keys: SessionKeys | None = None
        self._now = 0.0
        self._handshake_deadline: float | None = None
        self._keepalive: float | None = self.config.keepalive_interval
        self._ping_tokens = float(self.config.ping_burst)
        self._ping_stamp = 0.0
        self._last_rx = 0.0
        self._pings_out = 0
        self._ping_sent_at: dict[int, float] = {}
        self._ping_counter = 0
        self.peer_id: str | None = None
        #: Responder only: the device id the initiator stated for itself in HS_INIT.
        self.peer_stated_id = ""
        #: Responder only: the token the initiator authenticated with (§20), if any.
        self.peer_token: str | None = None
        self.service: str | None = None
        self._channels = ChannelTable(
            initiator=role is Role.CLIENT,
            window=self.config.channel_window,
            max_channels=self.config.max_channels,
        )
        self.close_exc: PstpError | None = None
        #: The code the connection ended with (an ErrorCode value), once CLOSED.
        self.close_code: int | None = None
        self.dropped_records = 0

    # -- state ---------------------------------------------------------------

    def _is_open(self) -> bool:
        return self._state is not ConnectionState.CLOSED

    @property
    def pake_verifier(self) -> PakeVerifier | None:
        """The verifier whose code keyed this session (a PSTP-PAKE responder), else ``None``."""
        return self._pake_verifier if self.via_pake else None

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return self._state

    def _set_state(self, new: ConnectionState) -> None:
        if self.debug:
            self._log.debug("= %s %s -> %s", self.role.value, self._state.name, new.name)
        self._state = new
        if new is ConnectionState.CLOSED:
            # The session's channels end with it: none is open or writable any more.
            self._channels.close_all()
            if self._pake_responder is not None:
                # A pairing attempt that did not succeed counts against the code.
                self._pake_responder.release(success=False)

    def _next_state(self, inp: Input) -> ConnectionState:
        # Look the move up first; the state changes only once the input has
        # been fully checked, so a failed check leaves us where we were (§4).
        new = TRANSITIONS.get((self._state, inp))
        if new is None:
            raise RemoteProtocolError(f"unexpected {inp.name} in {self._state.name}")
        return new

    @property
    def session_id(self) -> bytes:
        """The final handshake hash, unique to this session.

        Still available after the session closed.

        Raises:
            InvalidState: the handshake never completed.
        """
        return self._session_keys(after_close=True).session_id

    @property
    def max_send_body(self) -> int:
        """The largest record body this side may send now (§10 ``max_record``).

        Once the keys are in, the smaller of both sides' ``max_record``; before,
        1 024, the least any peer accepts (a transport that packs frames into
        messages uses it as its bound, §19.3).
        """
        return self._sender.max_body if self._sender is not None else 1024

    @property
    def suite(self) -> int:
        """The negotiated record suite.

        Raises:
            InvalidState: the handshake never completed.
        """
        return self._session_keys(after_close=True).suite

    def _session_keys(self, *, after_close: bool = False) -> SessionKeys:
        # After close, only if the handshake had completed (its deadline is cleared then).
        usable = self._state is ConnectionState.ESTABLISHED or (
            after_close
            and self._state is ConnectionState.CLOSED
            and self._handshake_deadline is None
        )
        if self._keys is None or not usable:
            raise InvalidState("the handshake is not complete")
        return self._keys

    @property
    def challenge_response(self) -> tuple[bytes, bytes]:
        """Initiator only: (e_R, confirm_I), the challenge and response of §5.

        Raises:
            InvalidState: not an established initiator.
        """
        self._session_keys()
        if self._challenge_response is None:
            raise InvalidState(
                "only the initiator of a PSTP-HS session holds the challenge and response"
            )
        return self._challenge_response

    def export_secret(self, label: str, length: int = 32) -> bytes:
        """Derive a session-bound secret for ``label`` (§5.6), e.g. a resumption secret.

        Raises:
            InvalidState: the handshake is not complete.
        """
        prk = self._session_keys().exporter_secret
        return hkdf_expand_sha256(prk, b"PSTP/2 export " + label.encode("utf-8"), length)

    # -- verbs ---------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: the initiator queues HS_INIT; the responder starts waiting.

        Flush with `data_to_send()` afterwards.

        Raises:
            InvalidState: already started.
        """
        if self._state is not ConnectionState.IDLE:
            raise InvalidState("connection already started")
        self._now = now
        self._handshake_deadline = now + self.config.handshake_timeout
        if self.role is Role.CLIENT and self._pake_prover is not None:
            responder_id = self._client_args[2]
            self._pake_initiator = PakeInitiator(
                self._pake_prover, self.config, verifier_id=responder_id
            )
            self._out.append(self._pake_initiator.request_frame)
            self._set_state(ConnectionState.CLIENT_EXPECT_PAIR_RESP)
        elif self.role is Role.CLIENT:
            pair_key, timestamp, responder_id, discovery, own_id = self._client_args
            self._initiator = InitiatorHandshake(
                pair_key,
                self.config,
                timestamp=timestamp,
                responder_id=responder_id,
                discovery=discovery,
                initiator_id=own_id,
            )
            self._out.append(self._initiator.message.serialize())
            self._set_state(ConnectionState.CLIENT_EXPECT_RESPONSE)
        else:
            self._set_state(ConnectionState.SERVER_EXPECT_INIT)

    def send_data(self, data: bytes) -> None:
        """Queue application bytes, split into records of the peer's maximum size.

        Flush with `data_to_send()` afterwards.

        Raises:
            InvalidState: the connection is not established.
        """
        if self._state is not ConnectionState.ESTABLISHED:
            raise InvalidState(f"cannot send in state {self._state.name}")
        step = self._sender_or_raise().max_body
        view = memoryview(data)
        for off in range(0, len(view), step):
            self._seal(InnerType.DATA, bytes(view[off : off + step]))

    def _spend_ping(self) -> None:
        # Every PING costs an answer: a burst, then a steady rate (§6.5), so a key
        # holder cannot make us spend our CPU and our output on PONGs.
        config = self.config
        elapsed = max(0.0, self._now - self._ping_stamp)
        self._ping_tokens = min(
            float(config.ping_burst), self._ping_tokens + elapsed * config.ping_rate
        )
        self._ping_stamp = self._now
        if self._ping_tokens < 1.0:
            raise PeerFlood(
                f"heartbeat flood: more than {config.ping_burst} PINGs at once"
                f" or {config.ping_rate:g} a second"
            )
        self._ping_tokens -= 1.0

    def send_ping(self) -> None:
        """Send a heartbeat PING now (heartbeats are also automatic).

        Flush with `data_to_send()` afterwards.

        Raises:
            InvalidState: the connection is not established.
        """
        if self._state is not ConnectionState.ESTABLISHED:
            raise InvalidState(f"cannot ping in state {self._state.name}")
        self._ping_counter += 1
        self._ping_sent_at[self._ping_counter] = self._now
        # Remember only the latest few PINGs: unanswered ones must not pile up.
        while len(self._ping_sent_at) > _PINGS_REMEMBERED:
            del self._ping_sent_at[next(iter(self._ping_sent_at))]
        self._seal(InnerType.PING, self._ping_counter.to_bytes(_PING_LEN, "big"))

    def close(self, code: ErrorCode | int = ErrorCode.NORMAL, reason: str = "") -> None:
        """Close with an authenticated CLOSE record (silently before keys exist).

        Flush with `data_to_send()` afterwards.  Closing twice does nothing.
        """
        if self._state is ConnectionState.CLOSED:
            return
        self._terminate(int(code), reason, by_peer=False, exc=None)

    # -- channels (docs/protocol.md §14) ---------------------------------------

    def _established_or_raise(self) -> None:
        if self._state is not ConnectionState.ESTABLISHED:
            raise InvalidState(f"no channels in state {self._state.name}")

    def _control(self, msg: ControlMessage | None) -> None:
        if msg is not None:
            self._seal(InnerType.CHANNEL_CONTROL, encode_control(msg))

    def open_channel(self, kind: str, params: Params | None = None) -> int:
        """Open a channel of ``kind``; data may be sent at once, up to the send window.

        Flush with `data_to_send()` afterwards.

        Returns:
            The new channel's id.

        Raises:
            InvalidState: the connection is not established.
            LocalProtocolError: channel ids are exhausted.
        """
        self._established_or_raise()
        cid, msg = self._channels.open(kind, params)
        self._control(msg)
        return cid

    def accept_channel(self, channel_id: int) -> None:
        """Accept a channel the peer opened (after :class:`ChannelOpenRequested`).

        Flush with `data_to_send()` afterwards.

        Raises:
            InvalidState: not established, or the channel is not awaiting a decision.
        """
        self._established_or_raise()
        self._control(self._channels.accept(channel_id))

    def reject_channel(
        self, channel_id: int, code: int = ChannelCode.REFUSED, reason: str = ""
    ) -> None:
        """Refuse a channel the peer opened.

        Flush with `data_to_send()` afterwards.

        Raises:
            InvalidState: not established, or the channel is not awaiting a decision.
        """
        self._established_or_raise()
        self._control(self._channels.reject(channel_id, code, reason))

    def channel_send_window(self, channel_id: int) -> int:
        """Bytes we may send on the channel right now (0 once it is closed)."""
        return self._channels.send_window(channel_id)

    def channel_state(self, channel_id: int) -> ChannelState:
        """The channel's state (CLOSED once it is gone)."""
        return self._channels.state(channel_id)

    def send_channel_data(self, channel_id: int, data: bytes | memoryview) -> None:
        """Send bytes on a channel; at most :meth:`channel_send_window` bytes.

        Flush with `data_to_send()` afterwards.

        Raises:
            InvalidState: not established, or the channel cannot send.
            LocalProtocolError: ``data`` is larger than the send window.
        """
        self._established_or_raise()
        self._channels.send_data(channel_id, len(data))
        step = self._sender_or_raise().max_body - CHANNEL_DATA_HEADER_LEN
        view = memoryview(data)
        for off in range(0, max(len(view), 1), step):
            self._seal(
                InnerType.CHANNEL_DATA, encode_channel_data(channel_id, view[off : off + step])
            )

    def send_channel_eof(self, channel_id: int) -> None:
        """Half-close the channel: we send no more data.

        Flush with `data_to_send()` afterwards.

        Raises:
            InvalidState: not established, or the channel cannot send.
        """
        self._established_or_raise()
        self._control(self._channels.eof(channel_id))

    def close_channel(
        self,
        channel_id: int,
        code: int = ChannelCode.OK,
        exit_status: int | None = None,
        reason: str = "",
    ) -> None:
        """Close a channel, with the exit status of what ran on it if any.

        Closing a closed channel does nothing.  Flush with `data_to_send()` afterwards.

        Raises:
            InvalidState: the channel is awaiting our decision (reject it instead).
        """
        if self._state is not ConnectionState.ESTABLISHED:
            return
        self._control(self._channels.close(channel_id, code, exit_status, reason))

    def acknowledge_channel_data(self, channel_id: int, size: int) -> None:
        """Tell the core the application consumed ``size`` bytes of the channel.

        This is what reopens the peer's window: a reader that does not
        acknowledge stops the writer.  Flush with `data_to_send()` afterwards.
        """
        if self._state is ConnectionState.ESTABLISHED:
            self._control(self._channels.acknowledge(channel_id, size))

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the transport.  Never raises for bad peer input.

        Flush with `data_to_send()` afterwards.
        """
        self._now = now
        if self._state is ConnectionState.CLOSED or not data:
            return
        if self._state is ConnectionState.IDLE:
            raise InvalidState("receive_data before start")
        buf = self._inbuf
        buf += data
        try:
            pos = 0
            # A record is opened straight from the buffer (no copy); the view is
            # released before the buffer is trimmed.
            with memoryview(buf) as view:
                while self._is_open():
                    if len(buf) - pos < FRAME_HEADER_LEN:
                        break
                    ftype = buf[pos]
                    length = int.from_bytes(buf[pos + 1 : pos + 4], "big")
                    self._check_frame_size(ftype, length)
                    end = pos + FRAME_HEADER_LEN + length
                    if len(buf) < end:
                        break
                    if ftype == FrameType.RECORD:
                        self._on_record(view[pos:end])
                    else:
                        self._handle_frame(ftype, bytes(view[pos:end]))
                    pos = end
            del buf[:pos]
        except ProtocolError as exc:
            self._fail(exc)

    def receive_message(self, message: bytes, now: float) -> None:
        """Feed one message of a message transport (one frame).  Never raises for bad peer input.

        A transport of discrete messages (docs/protocol.md §6.3, window mode)
        carries one frame per message.  A message that is not exactly one
        frame ends the session, except in window mode once established, where
        it is dropped like any record that fails its checks (anyone who can
        publish to the transport can send it).  Flush with `data_to_send()`
        or `messages_to_send()` afterwards.
        """
        self._now = now
        if self._state is ConnectionState.CLOSED:
            return
        if self._state is ConnectionState.IDLE:
            raise InvalidState("receive_message before start")
        try:
            length = int.from_bytes(message[1:FRAME_HEADER_LEN], "big")
            if not self.config.ordered and self._state is ConnectionState.ESTABLISHED:
                # Window mode (§3 rule 2a, §6.3): anyone who can publish to the
                # transport can send any message; all that is not a well-formed
                # record is dropped, like a record that fails its checks.
                if (
                    len(message) != FRAME_HEADER_LEN + length
                    or message[0] != FrameType.RECORD
                    or not _RECORD_EXTRA <= length <= self.config.max_record_size + _RECORD_EXTRA
                ):
                    self.dropped_records += 1
                    return
            elif len(message) != FRAME_HEADER_LEN + length:
                raise RemoteProtocolError("a message must hold exactly one frame")
            self._check_frame_size(message[0], length)
            self._handle_frame(message[0], bytes(message))
        except ProtocolError as exc:
            self._fail(exc)

    def receive_eof(self, now: float) -> None:
        """The transport ended.  Without a CLOSE record first, that is truncation.

        Flush with `data_to_send()` afterwards (nothing will be queued).
        """
        self._now = now
        if self._state is ConnectionState.CLOSED:
            return
        exc: ProtocolError
        if self._handshake_deadline is not None:
            # A responder that rejects us stays silent and hangs up (§5.1).
            exc = HandshakeFailed("the peer hung up during the handshake (wrong key or id?)")
        else:
            exc = RemoteProtocolError("connection ended without a CLOSE record")
        self.close_exc = exc
        self._out.clear()
        self._set_state(ConnectionState.CLOSED)
        code = (
            ErrorCode.HANDSHAKE_FAILED if isinstance(exc, HandshakeFailed) else ErrorCode.TRUNCATED
        )
        self.close_code = code
        self._events.append(ConnectionTerminated(code=code, reason=str(exc), by_peer=False))

    def _check_frame_size(self, ftype: int, length: int) -> None:
        # Checked from the header alone, before any body is buffered (§6.1, §10).
        if ftype == FrameType.RECORD:
            if self._receiver is None:  # no keys yet: judged before its body is kept
                raise RemoteProtocolError("record before the handshake")
            limit = self.config.max_record_size + _RECORD_EXTRA
        elif FrameType.HS_INIT <= ftype <= FrameType.PAIR_CONFIRM_P:
            limit = self.config.max_handshake_size
        else:
            raise RemoteProtocolError(f"unknown frame type 0x{ftype:02x}")
        if length > limit:
            raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {limit}")

    def _handle_frame(self, ftype: int, frame: bytes) -> None:
        if ftype == FrameType.RECORD:  # the hot path first, with no extra copy
            self._on_record(frame)  # _check_frame_size saw the keys
            return
        body = frame[FRAME_HEADER_LEN:]
        if ftype == FrameType.HS_INIT:
            if self.debug:
                self._log.debug("< HS_INIT %d bytes", len(frame))
            new = self._next_state(Input.HS_INIT)
            self._on_hs_init(body)
            self._set_state(new)
        elif ftype == FrameType.HS_RESP:
            if self.debug:
                self._log.debug("< HS_RESP %d bytes", len(frame))
            new = self._next_state(Input.HS_RESP)
            self._on_hs_resp(body)
            self._set_state(new)
            self._established()
        else:
            self._on_pake_frame(FrameType(ftype), frame, body)

    def _on_pake_frame(self, ftype: FrameType, frame: bytes, body: bytes) -> None:
        # PSTP-PAKE (§15): each frame moves the state by the table, only after
        # it was fully checked; the answer goes out at once.
        inp = _PAKE_INPUT[ftype]
        if self.debug:
            self._log.debug("< %s %d bytes", ftype.name, len(frame))
        new = self._next_state(inp)
        if inp is Input.PAIR_REQ:
            if self._pake_verifier is None:
                raise HandshakeFailed("pairing is not open on this device")
            keepalive = self.config.keepalive_interval
            self._pake_responder = PakeResponder(
                self._pake_verifier,
                self.config,
                keepalive_ms=int(keepalive * 1000) if keepalive else 0,
            )
            self._out.append(self._pake_responder.read_request(body, self._now))
            assert self._pake_responder.request is not None
            self.peer_id = self._pake_responder.request.prover_id
            self.peer_stated_id = self.peer_id
            self.service = self._pake_responder.request.service
        elif inp is Input.PAIR_RESP:
            assert self._pake_initiator is not None
            self._out.append(self._pake_initiator.read_response(body))
        elif inp is Input.PAIR_SHARE_P:
            assert self._pake_responder is not None
            self._out.append(self._pake_responder.read_share_p(body))
        elif inp is Input.PAIR_SHARE_V:
            assert self._pake_initiator is not None
            confirm, keys = self._pake_initiator.read_share_v(body)
            self._out.append(confirm)
            self.peer_id = keys.responder_id
            self.service = self.config.service
            if keys.keepalive_ms and self._keepalive:
                self._keepalive = min(self._keepalive, keys.keepalive_ms / 1000)
            self._install_keys(keys, send_key=keys.i2r_key, recv_key=keys.r2i_key)
        else:
            assert self._pake_responder is not None
            keys = self._pake_responder.read_confirm_p(body)
            self._install_keys(keys, send_key=keys.r2i_key, recv_key=keys.i2r_key)
            self._pake_responder.release(success=True)
        self._set_state(new)
        if new is ConnectionState.ESTABLISHED:
            self.via_pake = True
            self._established()

    def _on_hs_init(self, body: bytes) -> None:
        assert self._responder is not None
        self._responder.read_init(body)
        frame, keys = self._responder.write_response()
        assert self._responder.peer is not None
        self.peer_id = self._responder.peer.device_id
        self.peer_token = self._responder.peer.token
        self.peer_stated_id = self._responder.initiator_id
        self.service = self._responder.service
        self._install_keys(keys, send_key=keys.r2i_key, recv_key=keys.i2r_key)
        self._out.append(frame)

    def _on_hs_resp(self, body: bytes) -> None:
        assert self._initiator is not None
        keys = self._initiator.read_response(body)
        self.peer_id = keys.responder_id
        self.service = self.config.service
        if keys.keepalive_ms and self._keepalive:
            self._keepalive = min(self._keepalive, keys.keepalive_ms / 1000)
        self._install_keys(keys, send_key=keys.i2r_key, recv_key=keys.r2i_key)
        self._seal(InnerType.CONFIRM, self._initiator.confirm)

    def _install_keys(self, keys: SessionKeys, *, send_key: bytes, recv_key: bytes) -> None:
        cipher = cipher_for_suite(keys.suite)
        max_body = min(keys.peer_max_record, self.config.max_record_size)
        self._keys = keys
        self._sender = RecordSender(cipher, send_key, self.config, self._now, max_body)
        self._receiver = RecordReceiver(cipher, recv_key, self.config)

    def _established(self) -> None:
        assert self._keys is not None
        self._handshake_deadline = None
        self._last_rx = self._now
        if self._initiator is not None:
            self._challenge_response = (self._initiator.challenge, self._initiator.confirm)
        # The handshake is over: drop its state (ephemeral keys, Noise state, the
        # pair key the initiator was given).  An idle session keeps only what the
        # record layer needs, which is what bounds RSS per idle session (docs/benchmarks.md).
        self._initiator = self._responder = None
        self._pake_initiator = self._pake_responder = None
        self._client_args = (b"", 0, None, None, "")
        self._events.append(
            HandshakeCompleted(
                peer_id=self.peer_id or "",
                suite=self._keys.suite,
                session_id=self._keys.session_id,
                service=self.service or "",
            )
        )

    def _on_record(self, frame: bytes | memoryview) -> None:
        assert self._receiver is not None
        try:
            inner, body = self._receiver.open(frame)
        except (ReplayError, DecryptError):
            # On a transport that may duplicate or reorder (§6.3), a duplicate
            # or forged record is dropped and the session goes on; on a stream,
            # or before the handshake completes, it is fatal.
            if self.config.ordered or self._state is not ConnectionState.ESTABLISHED:
                raise
            self.dropped_records += 1
            return
        try:
            inp = _INNER_INPUT[InnerType(inner)]
        except ValueError as exc:
            raise RemoteProtocolError(f"unknown record type 0x{inner:02x}") from exc
        if self.debug:
            self._log.debug("< %s %d bytes", inp.name, len(body))
        new = self._next_state(inp)
        self._last_rx = self._now
        self._pings_out = 0
        if inp is Input.CHANNEL_DATA:
            cid, data = decode_channel_data(body)
            self._events += self._channels.receive_data(cid, data)
        elif inp is Input.CHANNEL_CONTROL:
            events, replies = self._channels.receive_control(decode_control(body))
            self._events += events
            for reply in replies:
                self._seal(InnerType.CHANNEL_CONTROL, encode_control(reply))
        elif inp is Input.DATA:
            self._events.append(DataReceived(data=body))
        elif inp is Input.CONFIRM:
            assert self._responder is not None
            if len(body) != CONFIRM_LEN:
                raise HandshakeFailed("bad confirm length")
            self._responder.check_confirm(body)
            self._set_state(new)
            self._established()
        elif inp is Input.PING:
            if len(body) != _PING_LEN:
                raise RemoteProtocolError("bad PING length")
            self._spend_ping()
            self._seal(InnerType.PONG, body)
        elif inp is Input.PONG:
            if len(body) != _PING_LEN:
                raise RemoteProtocolError("bad PONG length")
            sent = self._ping_sent_at.pop(int.from_bytes(body, "big"), None)
            if sent is not None:
                self._events.append(HeartbeatAcknowledged(rtt=self._now - sent))
        elif inp is Input.CLOSE:
            msg = ClosePayload.parse(body)
            self.close_exc = ConnectionClosed(msg.code, msg.reason)
            self.close_code = msg.code
            self._out.clear()
            self._set_state(new)
            self._events.append(
                ConnectionTerminated(code=msg.code, reason=msg.reason, by_peer=True)
            )
        # KEY_UPDATE needs nothing here: the receiver already ratcheted.

    # -- output --------------------------------------------------------------

    def _sender_or_raise(self) -> RecordSender:
        # Every caller first checks ESTABLISHED (or has just installed keys), and
        # ESTABLISHED is reached only after _install_keys: the sender always exists.
        assert self._sender is not None, "no keys yet"
        return self._sender

    def _seal(self, inner: InnerType, body: bytes) -> None:
        if self.debug:
            self._log.debug("> %s %d bytes", inner.name, len(body))
        self._out.append(self._sender_or_raise().seal(inner, body, self._now))

    def data_to_send(self) -> bytes:
        """Return and forget the bytes queued for the transport (``b""`` when idle)."""
        if not self._out:
            return b""
        out = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return out

    def messages_to_send(self) -> list[bytes]:
        """Return and forget the frames queued for a message transport, one per message."""
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        """Return and forget the events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # -- timers --------------------------------------------------------------

    @property
    def silence_limit(self) -> float | None:
        """Seconds of silence after which the peer is declared dead (``None``: no heartbeats).

        The heartbeat interval times one more than ``keepalive_count_max``
        (60 s with the defaults, docs/protocol.md §6.5).
        """
        if not self._keepalive:
            return None
        return self._keepalive * (self.config.keepalive_count_max + 1)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or ``None``."""
        if self._state is ConnectionState.CLOSED:
            return None
        if self._handshake_deadline is not None:
            return self._handshake_deadline
        if self._state is ConnectionState.ESTABLISHED and self._keepalive:
            return self._last_rx + self._keepalive * (self._pings_out + 1)
        return None

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``: handshake timeout, heartbeats, dead peer.

        Flush with `data_to_send()` afterwards.
        """
        self._now = now
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return
        if self._handshake_deadline is not None:
            self._fail(HandshakeFailed("handshake timed out"), ErrorCode.TIMEOUT)
        elif self._pings_out >= self.config.keepalive_count_max:
            self._fail(
                RemoteProtocolError(f"peer silent after {self._pings_out} heartbeats"),
                ErrorCode.TIMEOUT,
            )
        else:
            self._pings_out += 1
            self.send_ping()

    # -- ending --------------------------------------------------------------

    def _fail(self, exc: ProtocolError, code: ErrorCode | None = None) -> None:
        if self.debug:
            self._log.debug("= %s error: %s", self.role.value, exc)
        if code is None:
            # Before the handshake completes every failure reads the same (§5.1):
            # an unknown key id and a bad tag must not be told apart, even in logs.
            code = ErrorCode.HANDSHAKE_FAILED if self._handshake_deadline else exc.code
        self._terminate(int(code), str(exc), False, exc)

    def _terminate(self, code: int, reason: str, by_peer: bool, exc: ProtocolError | None) -> None:
        # Before the responder has verified confirm_I, nothing is sent: an
        # unauthenticated peer learns nothing from our reaction (§5.1, §12).
        may_speak = self._state is ConnectionState.ESTABLISHED and self._sender is not None
        if may_speak:
            wire_reason = reason if exc is None else ""  # never send error text (§9)
            # A key past its hard limit cannot carry CLOSE; the peer then sees truncation.
            with contextlib.suppress(LocalProtocolError):
                self._seal(InnerType.CLOSE, ClosePayload(code, wire_reason).serialize())
        self.close_exc = exc if exc is not None else ConnectionClosed(code, reason)
        self.close_code = code
        self._set_state(ConnectionState.CLOSED)
        self._events.append(ConnectionTerminated(code=code, reason=reason, by_peer=by_peer))
