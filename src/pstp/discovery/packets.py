"""Discovery datagrams: PING and PONG (docs/protocol.md §8).

A PING is broadcast on the service port; a device answers with a unicast
PONG.  A PING is always at least :data:`PING_MIN_LEN` bytes and a PONG at
most :data:`PONG_MAX_LEN`, so a PONG is never larger than the PING that caused
it (no amplification).  A PONG is a hint, never trusted: its exact bytes enter
the handshake prologue (§5.3), which is what defeats a spoofed one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Self

from pstp.exceptions import RemoteProtocolError
from pstp.wire.buffer import Reader, Writer

__all__ = [
    "DISCOVERY_VERSION",
    "MAGIC",
    "MDNS_SERVICE_TYPE",
    "PING_MAX_LEN",
    "PING_MIN_LEN",
    "PONG_MAX_LEN",
    "Caps",
    "DatagramType",
    "Ping",
    "Pong",
]

#: First four bytes of every discovery datagram.
MAGIC = b"PSTP"
#: Discovery datagrams carry the protocol version after the magic.
DISCOVERY_VERSION = 2
#: A PING is padded with zeros to at least this size (§8.1): larger than any PONG.
PING_MIN_LEN = 128
#: Longest PING accepted (room for future fields, still one small datagram).
PING_MAX_LEN = 512
#: Longest possible PONG: 29-byte fixed part plus a 64-byte device id.
PONG_MAX_LEN = 29 + 64
#: PING flag: a 16-byte discovery key id follows (stealth responders need it).
PING_FLAG_KID = 0x01
#: DNS-SD service type a device advertises on mDNS (§8.6); TXT: id, v, caps.
MDNS_SERVICE_TYPE = "_pstp._tcp.local."
_NONCE_LEN = 16
_KID_TAG_LEN = 16


class DatagramType(enum.IntEnum):
    """Byte 5 of a discovery datagram."""

    PING = 0x01
    PONG = 0x02


class Caps(enum.IntFlag):
    """Capabilities advertised in a PONG and wanted in a PING (§8.1)."""

    AES_256_GCM = 0x0001
    CHACHA20_POLY1305 = 0x0002
    PAIRING = 0x0004
    WEBSOCKET = 0x0008
    MQTT = 0x0010


def _header(r: Reader, expected: DatagramType) -> int:
    if r.take(4) != MAGIC:
        raise RemoteProtocolError("not a PSTP datagram")
    if r.u8() != DISCOVERY_VERSION:
        raise RemoteProtocolError("unsupported discovery version")
    if r.u8() != expected:
        raise RemoteProtocolError("unexpected datagram type")
    flags = r.u8()
    if r.u8() != 0:
        raise RemoteProtocolError("reserved byte not zero")
    return flags


@dataclass(frozen=True, slots=True)
class Ping:
    """A discovery query.

    Attributes:
        nonce: 16 random bytes, echoed in the PONG and bound into the handshake.
        wanted: capabilities the querier needs (0 = any).
        kid_tag: for stealth responders: HMAC proof that we hold a pair key (§8.2).
    """

    nonce: bytes
    wanted: int = 0
    kid_tag: bytes | None = None

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Decode a PING datagram.

        Raises:
            RemoteProtocolError: malformed, wrong size, or non-zero padding.
        """
        if not PING_MIN_LEN <= len(data) <= PING_MAX_LEN:
            raise RemoteProtocolError("PING size out of range")
        r = Reader(data)
        flags = _header(r, DatagramType.PING)
        if flags & ~PING_FLAG_KID:
            raise RemoteProtocolError("unknown PING flags")
        nonce = r.take(_NONCE_LEN)
        wanted = r.u16()
        tag = r.take(_KID_TAG_LEN) if flags & PING_FLAG_KID else None
        if any(r.rest()):
            raise RemoteProtocolError("PING padding not zero")
        return cls(nonce, wanted, tag)

    def serialize(self) -> bytes:
        """Encode, padded with zeros to PING_MIN_LEN."""
        if len(self.nonce) != _NONCE_LEN:
            raise ValueError("a PING nonce is 16 bytes")
        flags = PING_FLAG_KID if self.kid_tag is not None else 0
        w = Writer().raw(MAGIC).u8(DISCOVERY_VERSION).u8(DatagramType.PING).u8(flags).u8(0)
        w.raw(self.nonce).u16(self.wanted)
        if self.kid_tag is not None:
            if len(self.kid_tag) != _KID_TAG_LEN:
                raise ValueError("a discovery key id tag is 16 bytes")
            w.raw(self.kid_tag)
        raw = w.getvalue()
        return raw + bytes(PING_MIN_LEN - len(raw))


@dataclass(frozen=True, slots=True)
class Pong:
    """A device's answer to a PING.

    Attributes:
        nonce: the PING's nonce.
        port: the TCP port the device serves PSTP/2 on.
        caps: the device's capabilities.
        device_id: the device's id (a hint until the handshake confirms it).
    """

    nonce: bytes
    port: int
    caps: int
    device_id: str

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Decode a PONG datagram.

        Raises:
            RemoteProtocolError: malformed or trailing bytes.
        """
        if len(data) > PONG_MAX_LEN:
            raise RemoteProtocolError("PONG too large")
        r = Reader(data)
        if _header(r, DatagramType.PONG) != 0:
            raise RemoteProtocolError("unknown PONG flags")
        nonce = r.take(_NONCE_LEN)
        port, caps = r.u16(), r.u16()
        device_id = r.text8()
        r.expect_end()
        if not device_id or port == 0:
            raise RemoteProtocolError("PONG without device id or port")
        return cls(nonce, port, caps, device_id)

    def serialize(self) -> bytes:
        """Encode.

        Raises:
            ValueError: the nonce is not 16 bytes, the port is not 1 to 65535,
                or the device id is empty or longer than 64 bytes.
        """
        # Refuse what parse() refuses: a browser drops such a PONG (§8.1).
        if len(self.nonce) != _NONCE_LEN:
            raise ValueError("a PONG nonce is 16 bytes")
        if not 0 < self.port <= 0xFFFF:
            raise ValueError("a PONG port is 1 to 65535")
        rid = self.device_id.encode("utf-8")
        if not 0 < len(rid) <= 64:
            raise ValueError("a device id is 1 to 64 bytes of UTF-8")
        w = Writer().raw(MAGIC).u8(DISCOVERY_VERSION).u8(DatagramType.PONG).u8(0).u8(0)
        return w.raw(self.nonce).u16(self.port).u16(self.caps).vec8(rid).getvalue()
