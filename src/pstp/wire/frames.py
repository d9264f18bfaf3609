"""PSTP/2 frame codecs (docs/protocol.md §3-§6).

Every unit on a stream is a *frame*: a 4-byte header (type, 24-bit body
length) and a body.  Datagram transports carry one or more whole frames per
datagram.  This module is stateless: it turns bytes into immutable ``msgspec.Struct``
values (cheap to define at import and to create) and back, and checks every field.
"""

from __future__ import annotations

import enum
from typing import Self

import msgspec

from pstp.exceptions import RemoteProtocolError
from pstp.wire.buffer import Reader, Writer

__all__ = [
    "CONFIRM_LEN",
    "FRAME_HEADER_LEN",
    "HS_FLAG_DISCOVERY",
    "HS_FLAG_RESPONDER_ID",
    "KID_LEN",
    "NONCE_LEN",
    "P256_POINT_LEN",
    "PAIR_FLAG_PAIRING",
    "PAIR_NONCE_LEN",
    "RECORD_HEADER_LEN",
    "TAG_LEN",
    "VERSION",
    "ClosePayload",
    "FrameType",
    "HsInit",
    "HsResp",
    "InitPayload",
    "InnerType",
    "PairReq",
    "PairResp",
    "RecordHeader",
    "RespPayload",
    "Suite",
    "frame_header",
    "hs_init_header",
    "parse_frame_header",
]

#: The protocol version this implementation speaks (§1).
VERSION = 2
#: Frame header: type (1) and body length (3), §3.
FRAME_HEADER_LEN = 4
#: Largest body a 24-bit length can describe.
MAX_FRAME_BODY = 0xFFFFFF
#: Key id: 16 random bytes and a 16-byte truncated HMAC (§5.2).
KID_LEN = 32
#: Discovery nonce echoed from a PING (§5.1, §8).
NONCE_LEN = 16
#: SEC1 uncompressed P-256 point: 0x04 || X || Y (§2).
P256_POINT_LEN = 65
#: AEAD tag length of both record suites (§7).
TAG_LEN = 16
#: HMAC-SHA256 key confirmation value (§5.5).
CONFIRM_LEN = 32
#: Record header after the frame header: epoch (1) and sequence number (8), §6.
RECORD_HEADER_LEN = 9

#: HS_INIT flag: a 16-byte discovery nonce follows the key id (§5.1).
HS_FLAG_DISCOVERY = 0x01
#: HS_INIT flag: the prologue binds the responder id the initiator expects (§5.3).
HS_FLAG_RESPONDER_ID = 0x02
_HS_INIT_FLAGS = HS_FLAG_DISCOVERY | HS_FLAG_RESPONDER_ID

#: Longest device id or service name, in UTF-8 bytes (§2).
MAX_NAME_LEN = 64
#: Longest human-readable close reason, in UTF-8 bytes (§6.4).
MAX_REASON_LEN = 200


class FrameType(enum.IntEnum):
    """The first byte of every frame (§3)."""

    HS_INIT = 0x01
    HS_RESP = 0x02
    PAIR_REQ = 0x03
    PAIR_RESP = 0x04
    PAIR_SHARE_P = 0x05
    PAIR_SHARE_V = 0x06
    PAIR_CONFIRM_P = 0x07
    RECORD = 0x17


class InnerType(enum.IntEnum):
    """The first byte of every record's plaintext (§6.2)."""

    CONFIRM = 0x01
    DATA = 0x02
    PING = 0x03
    PONG = 0x04
    KEY_UPDATE = 0x05
    CLOSE = 0x06
    CHANNEL_CONTROL = 0x10
    CHANNEL_DATA = 0x11


class Suite(enum.IntEnum):
    """Record-layer cipher suites (§7).  AES-256-GCM is mandatory to implement."""

    AES_256_GCM = 0x0001
    CHACHA20_POLY1305 = 0x0002


def frame_header(ftype: FrameType, body_len: int) -> bytes:
    """Encode a frame header.

    Raises:
        ValueError: the body is longer than 2**24 - 1 bytes.
    """
    if not 0 <= body_len <= MAX_FRAME_BODY:
        raise ValueError("frame body too long")
    return bytes((ftype,)) + body_len.to_bytes(3, "big")


def parse_frame_header(header: bytes) -> tuple[int, int]:
    """Split a 4-byte frame header into (type byte, body length).

    The type is returned as a plain int: the caller decides what an unknown
    type means in its state.
    """
    return header[0], int.from_bytes(header[1:4], "big")


def _check_name(name: str, what: str) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > MAX_NAME_LEN:
        raise ValueError(f"{what} longer than {MAX_NAME_LEN} bytes")
    return raw


def hs_init_header(version: int, flags: int, kid: bytes, nonce: bytes | None) -> bytes:
    """HS_INIT's cleartext fields before ``e``: version, flags, kid, [nonce] (§5.1)."""
    return bytes((version, flags)) + kid + (nonce if nonce is not None else b"")


class HsInit(msgspec.Struct, frozen=True):
    """Handshake message 1, initiator to responder: ``psk, e`` (§5.1)."""

    version: int
    flags: int
    kid: bytes
    discovery_nonce: bytes | None
    ephemeral: bytes
    ciphertext: bytes

    @classmethod
    def parse(cls, body: bytes) -> Self:
        """Decode an HS_INIT body (without the frame header).

        Raises:
            RemoteProtocolError: malformed.
        """
        r = Reader(body)
        version = r.u8()
        flags = r.u8()
        if flags & ~_HS_INIT_FLAGS:
            raise RemoteProtocolError("unknown HS_INIT flags")
        kid = r.take(KID_LEN)
        nonce = r.take(NONCE_LEN) if flags & HS_FLAG_DISCOVERY else None
        eph = r.take(P256_POINT_LEN)
        ct = r.rest()
        msg = cls(version, flags, kid, nonce, eph, ct)
        msg.check()
        return msg

    def check(self) -> None:
        """Check field lengths and flag consistency.

        Raises:
            RemoteProtocolError: a field is out of range.
        """
        if len(self.kid) != KID_LEN or len(self.ephemeral) != P256_POINT_LEN:
            raise RemoteProtocolError("bad HS_INIT field length")
        if (self.discovery_nonce is not None) != bool(self.flags & HS_FLAG_DISCOVERY):
            raise RemoteProtocolError("HS_INIT discovery flag mismatch")
        if self.discovery_nonce is not None and len(self.discovery_nonce) != NONCE_LEN:
            raise RemoteProtocolError("bad discovery nonce length")
        if len(self.ciphertext) < TAG_LEN:
            raise RemoteProtocolError("HS_INIT payload too short")

    def header_bytes(self) -> bytes:
        """The cleartext fields before ``e``; the prologue binds them (§5.3)."""
        return hs_init_header(self.version, self.flags, self.kid, self.discovery_nonce)

    def serialize(self) -> bytes:
        """Encode as a whole frame, header included."""
        body = self.header_bytes() + self.ephemeral + self.ciphertext
        return frame_header(FrameType.HS_INIT, len(body)) + body


class HsResp(msgspec.Struct, frozen=True):
    """Handshake message 2, responder to initiator: ``e, ee`` and confirm_R (§5.4)."""

    version: int
    ephemeral: bytes
    ciphertext: bytes
    confirm: bytes

    @classmethod
    def parse(cls, body: bytes) -> Self:
        """Decode an HS_RESP body.

        Raises:
            RemoteProtocolError: malformed.
        """
        r = Reader(body)
        version = r.u8()
        if r.u8() != 0:
            raise RemoteProtocolError("unknown HS_RESP flags")
        eph = r.take(P256_POINT_LEN)
        if r.remaining < TAG_LEN + CONFIRM_LEN:
            raise RemoteProtocolError("HS_RESP too short")
        ct = r.take(r.remaining - CONFIRM_LEN)
        confirm = r.take(CONFIRM_LEN)
        return cls(version, eph, ct, confirm)

    def serialize(self) -> bytes:
        """Encode as a whole frame, header included."""
        body = bytes((self.version, 0)) + self.ephemeral + self.ciphertext + self.confirm
        return frame_header(FrameType.HS_RESP, len(body)) + body


class RecordHeader(msgspec.Struct, frozen=True):
    """The authenticated cleartext header of a record (§6.1)."""

    epoch: int
    seq: int

    @classmethod
    def parse(cls, body: bytes | memoryview) -> Self:
        """Decode the 9 bytes after the frame header.

        Raises:
            RemoteProtocolError: fewer than 9 bytes.
        """
        if len(body) < RECORD_HEADER_LEN:
            raise RemoteProtocolError("record too short")
        return cls(body[0], int.from_bytes(body[1:9], "big"))

    def serialize(self) -> bytes:
        """Encode the 9-byte header."""
        return bytes((self.epoch,)) + self.seq.to_bytes(8, "big")


class InitPayload(msgspec.Struct, frozen=True):
    """Plaintext of HS_INIT's AEAD payload (§5.1)."""

    timestamp: int
    versions: tuple[int, ...]
    suites: tuple[int, ...]
    max_record: int
    service: str
    initiator_id: str = ""

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Decode.

        Raises:
            RemoteProtocolError: malformed, empty lists, or trailing bytes.
        """
        r = Reader(data)
        ts = r.u64()
        versions = tuple(r.vec8())
        n_suites = r.u8()
        suites = tuple(r.u16() for _ in range(n_suites))
        max_record = r.u32()
        service = r.text8()
        initiator_id = r.text8()
        r.expect_end()
        if not versions or not suites:
            raise RemoteProtocolError("bad HS_INIT payload")
        if max(len(service.encode()), len(initiator_id.encode())) > MAX_NAME_LEN:
            raise RemoteProtocolError("name too long in HS_INIT payload")
        return cls(ts, versions, suites, max_record, service, initiator_id)

    def serialize(self) -> bytes:
        """Encode."""
        w = Writer().u64(self.timestamp).vec8(bytes(self.versions)).u8(len(self.suites))
        for s in self.suites:
            w.u16(s)
        w.u32(self.max_record).vec8(_check_name(self.service, "service"))
        return w.vec8(_check_name(self.initiator_id, "initiator id")).getvalue()


class RespPayload(msgspec.Struct, frozen=True):
    """Plaintext of HS_RESP's AEAD payload (§5.4)."""

    suite: int
    max_record: int
    keepalive_ms: int
    responder_id: str

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Decode.

        Raises:
            RemoteProtocolError: malformed or trailing bytes.
        """
        r = Reader(data)
        suite, max_record, keepalive = r.u16(), r.u32(), r.u32()
        rid = r.text8()
        r.expect_end()
        if len(rid.encode()) > MAX_NAME_LEN:
            raise RemoteProtocolError("responder id too long")
        return cls(suite, max_record, keepalive, rid)

    def serialize(self) -> bytes:
        """Encode."""
        return (
            Writer()
            .u16(self.suite)
            .u32(self.max_record)
            .u32(self.keepalive_ms)
            .vec8(_check_name(self.responder_id, "responder id"))
            .getvalue()
        )


class ClosePayload(msgspec.Struct, frozen=True):
    """Body of a CLOSE record (§6.4)."""

    code: int
    reason: str

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Decode.

        Raises:
            RemoteProtocolError: malformed or trailing bytes.
        """
        r = Reader(data)
        code = r.u16()
        reason = r.text8()
        r.expect_end()
        if len(reason.encode()) > MAX_REASON_LEN:
            raise RemoteProtocolError("close reason too long")
        return cls(code, reason)

    def serialize(self) -> bytes:
        """Encode; an over-long reason is cut at a character boundary."""
        raw = self.reason.encode("utf-8")[:MAX_REASON_LEN].decode("utf-8", "ignore").encode()
        return Writer().u16(self.code).vec8(raw).getvalue()


#: PAIR_REQ flag: install a pair key after pairing (else: a one-off session, §15.1).
PAIR_FLAG_PAIRING = 0x01
#: PAIR_REQ nonce length (§15.2).
PAIR_NONCE_LEN = 32


class PairReq(msgspec.Struct, frozen=True):
    """PSTP-PAKE message 1, prover to verifier (§15.2)."""

    version: int
    flags: int
    versions: tuple[int, ...]
    prover_id: str
    nonce: bytes
    suites: tuple[int, ...]
    max_record: int
    service: str

    @classmethod
    def parse(cls, body: bytes) -> Self:
        """Decode a PAIR_REQ body.

        Raises:
            RemoteProtocolError: malformed.
        """
        r = Reader(body)
        version, flags = r.u8(), r.u8()
        if flags & ~PAIR_FLAG_PAIRING:
            raise RemoteProtocolError("unknown PAIR_REQ flags")
        versions = tuple(r.vec8())
        prover_id = r.text8()
        nonce = r.take(PAIR_NONCE_LEN)
        suites = tuple(r.u16() for _ in range(r.u8()))
        max_record = r.u32()
        service = r.text8()
        r.expect_end()
        names = (len(prover_id.encode()), len(service.encode()))
        if not versions or not suites or not prover_id or max(names) > MAX_NAME_LEN:
            raise RemoteProtocolError("bad PAIR_REQ")
        return cls(version, flags, versions, prover_id, nonce, suites, max_record, service)

    def serialize(self) -> bytes:
        """Encode as a whole frame."""
        w = Writer().u8(self.version).u8(self.flags).vec8(bytes(self.versions))
        w.vec8(_check_name(self.prover_id, "prover id")).raw(self.nonce).u8(len(self.suites))
        for suite in self.suites:
            w.u16(suite)
        body = w.u32(self.max_record).vec8(_check_name(self.service, "service")).getvalue()
        return frame_header(FrameType.PAIR_REQ, len(body)) + body


class PairResp(msgspec.Struct, frozen=True):
    """PSTP-PAKE message 2, verifier to prover (§15.2)."""

    version: int
    verifier_id: str
    salt: bytes
    iterations: int
    suite: int
    max_record: int
    keepalive_ms: int

    @classmethod
    def parse(cls, body: bytes) -> Self:
        """Decode a PAIR_RESP body.

        Raises:
            RemoteProtocolError: malformed.
        """
        r = Reader(body)
        version = r.u8()
        verifier_id = r.text8()
        salt = r.vec8()
        iterations, suite, max_record, keepalive = r.u32(), r.u16(), r.u32(), r.u32()
        r.expect_end()
        if not verifier_id or len(verifier_id.encode()) > MAX_NAME_LEN:
            raise RemoteProtocolError("bad PAIR_RESP verifier id")
        return cls(version, verifier_id, salt, iterations, suite, max_record, keepalive)

    def serialize(self) -> bytes:
        """Encode as a whole frame."""
        body = (
            Writer()
            .u8(self.version)
            .vec8(_check_name(self.verifier_id, "verifier id"))
            .vec8(self.salt)
            .u32(self.iterations)
            .u16(self.suite)
            .u32(self.max_record)
            .u32(self.keepalive_ms)
            .getvalue()
        )
        return frame_header(FrameType.PAIR_RESP, len(body)) + body
