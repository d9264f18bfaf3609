"""A bounds-checked read cursor and a byte writer (docs/protocol.md §2).

Every integer on the wire is unsigned and big-endian.  A short read raises
:class:`~pstp.exceptions.RemoteProtocolError`: bytes from the peer are never
trusted to be long enough.
"""

from __future__ import annotations

from pstp.exceptions import RemoteProtocolError

__all__ = ["Reader", "Writer"]


class Reader:
    """A cursor over bytes received from the peer.

    Args:
        data: the bytes to read.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Number of bytes not yet read."""
        return len(self._data) - self._pos

    @property
    def position(self) -> int:
        """Offset of the next byte to read."""
        return self._pos

    def take(self, n: int) -> bytes:
        """Read exactly ``n`` bytes.

        Raises:
            RemoteProtocolError: fewer than ``n`` bytes remain.
        """
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise RemoteProtocolError("message truncated")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        """Read an unsigned 8-bit integer."""
        return self.take(1)[0]

    def u16(self) -> int:
        """Read an unsigned big-endian 16-bit integer."""
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        """Read an unsigned big-endian 32-bit integer."""
        return int.from_bytes(self.take(4), "big")

    def u64(self) -> int:
        """Read an unsigned big-endian 64-bit integer."""
        return int.from_bytes(self.take(8), "big")

    def vec8(self) -> bytes:
        """Read a byte string prefixed by its 8-bit length."""
        return self.take(self.u8())

    def text8(self) -> str:
        """Read a UTF-8 string prefixed by its 8-bit length.

        Raises:
            RemoteProtocolError: truncated, or not valid UTF-8.
        """
        raw = self.vec8()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError("invalid UTF-8 string") from exc

    def rest(self) -> bytes:
        """Read every remaining byte."""
        return self.take(self.remaining)

    def expect_end(self) -> None:
        """Check that nothing is left (docs/protocol.md §2: trailing bytes are an error).

        Raises:
            RemoteProtocolError: bytes remain.
        """
        if self._pos != len(self._data):
            raise RemoteProtocolError("trailing bytes after message")


class Writer:
    """Builds a message from big-endian fields."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> Writer:
        """Append bytes as they are."""
        self._parts.append(bytes(data))
        return self

    def u8(self, v: int) -> Writer:
        """Append an unsigned 8-bit integer."""
        self._parts.append(v.to_bytes(1, "big"))
        return self

    def u16(self, v: int) -> Writer:
        """Append an unsigned big-endian 16-bit integer."""
        self._parts.append(v.to_bytes(2, "big"))
        return self

    def u32(self, v: int) -> Writer:
        """Append an unsigned big-endian 32-bit integer."""
        self._parts.append(v.to_bytes(4, "big"))
        return self

    def u64(self, v: int) -> Writer:
        """Append an unsigned big-endian 64-bit integer."""
        self._parts.append(v.to_bytes(8, "big"))
        return self

    def vec8(self, data: bytes) -> Writer:
        """Append a byte string with an 8-bit length prefix.

        Raises:
            ValueError: longer than 255 bytes.
        """
        if len(data) > 0xFF:
            raise ValueError("vec8 value longer than 255 bytes")
        return self.u8(len(data)).raw(data)

    def vec16(self, data: bytes) -> Writer:
        """Append a byte string with a 16-bit length prefix.

        Raises:
            ValueError: longer than 65535 bytes.
        """
        if len(data) > 0xFFFF:
            raise ValueError("vec16 value longer than 65535 bytes")
        return self.u16(len(data)).raw(data)

    def text8(self, s: str) -> Writer:
        """Append a UTF-8 string with an 8-bit length prefix."""
        return self.vec8(s.encode("utf-8"))

    def getvalue(self) -> bytes:
        """Return everything written so far."""
        return b"".join(self._parts)
