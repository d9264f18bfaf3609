"""Tests for pstp.exceptions: the hierarchy, wire codes and messages."""

from __future__ import annotations

import pytest

from pstp.exceptions import (
    ChannelError,
    ConnectionClosed,
    DaemonError,
    DecryptError,
    ErrorCode,
    ExecFailed,
    FrameTooLarge,
    HandshakeFailed,
    InvalidState,
    KeyExhausted,
    LocalProtocolError,
    PermissionDenied,
    ProtocolError,
    PstpError,
    RemoteProtocolError,
    ReplayError,
    TransferFailed,
)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ProtocolError, ErrorCode.PROTOCOL_ERROR),
        (LocalProtocolError, ErrorCode.INTERNAL_ERROR),
        (RemoteProtocolError, ErrorCode.PROTOCOL_ERROR),
        (HandshakeFailed, ErrorCode.HANDSHAKE_FAILED),
        (DecryptError, ErrorCode.DECRYPT_ERROR),
        (FrameTooLarge, ErrorCode.FRAME_TOO_LARGE),
        (ReplayError, ErrorCode.PROTOCOL_ERROR),
        (KeyExhausted, ErrorCode.KEY_EXHAUSTED),
    ],
)
def test_protocol_errors_carry_their_close_code(exc: type[ProtocolError], code: ErrorCode) -> None:
    """Each protocol error names the §9 code sent in CLOSE, on the class and on instances."""
    assert exc.code is code
    assert exc("detail").code is code


def test_every_peer_fault_is_a_remote_protocol_error() -> None:
    """Catching RemoteProtocolError catches every error a peer can cause, and no local one."""
    for exc in (HandshakeFailed, DecryptError, FrameTooLarge, ReplayError, KeyExhausted):
        assert issubclass(exc, RemoteProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    for daemon_exc in (PermissionDenied, ExecFailed, TransferFailed):
        assert issubclass(daemon_exc, DaemonError)
    for base in (ProtocolError, InvalidState, ConnectionClosed, ChannelError, DaemonError):
        assert issubclass(base, PstpError)


SPEC_CODES = {  # docs/protocol.md §9
    "NORMAL": 0x0000,
    "PROTOCOL_ERROR": 0x0001,
    "DECRYPT_ERROR": 0x0002,
    "FRAME_TOO_LARGE": 0x0003,
    "HANDSHAKE_FAILED": 0x0004,
    "TIMEOUT": 0x0005,
    "KEY_EXHAUSTED": 0x0006,
    "INTERNAL_ERROR": 0x0007,
    "REFUSED": 0x0008,
    "GOING_AWAY": 0x0009,
    "TRUNCATED": 0x000A,
    "UNSUPPORTED_VERSION": 0x000B,
}


def test_error_codes_are_the_wire_values() -> None:
    """The close codes are exactly the names and 16-bit values of docs/protocol.md §9."""
    assert {c.name: int(c) for c in ErrorCode} == SPEC_CODES


@pytest.mark.parametrize(
    ("code", "reason", "text"),
    [
        (ErrorCode.NORMAL, "", "connection closed (NORMAL)"),
        (ErrorCode.GOING_AWAY, "server restart", "connection closed (GOING_AWAY): server restart"),
        (2, "", "connection closed (DECRYPT_ERROR)"),
        (0x1234, "", "connection closed (code 4660)"),
        (0xFFFF, "bye", "connection closed (code 65535): bye"),
    ],
)
def test_connection_closed_describes_known_and_unknown_codes(
    code: int, reason: str, text: str
) -> None:
    """ConnectionClosed keeps code and reason and names the code when it is a known one."""
    exc = ConnectionClosed(code, reason)
    assert (exc.code, exc.reason, str(exc)) == (code, reason, text)


def test_connection_closed_reason_defaults_to_empty() -> None:
    """Without a reason, the reason is empty and the message has no trailing colon."""
    exc = ConnectionClosed(ErrorCode.TIMEOUT)
    assert exc.reason == ""
    assert str(exc) == "connection closed (TIMEOUT)"


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        ("", "channel 7 failed (code 3)"),
        ("no such service", "channel 7 failed (code 3): no such service"),
    ],
)
def test_channel_error_keeps_its_fields(reason: str, text: str) -> None:
    """ChannelError carries the channel id, code and reason, and says them in its message."""
    exc = ChannelError(7, 3, reason)
    assert (exc.channel_id, exc.code, exc.reason, str(exc)) == (7, 3, reason, text)


def test_too_much_data_is_a_channel_failure_and_a_value_error() -> None:
    """read_all's overflow closes a handler's channel with RESOURCE_LIMIT and says why."""
    from pstp.exceptions import ChannelFailure, TooMuchData

    exc = TooMuchData(5, 65536)
    assert isinstance(exc, ChannelFailure) and isinstance(exc, ValueError)
    assert (exc.code, exc.limit) == (3, 65536)
    assert exc.reason == "more than 65536 bytes on channel 5"
