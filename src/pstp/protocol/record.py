"""The record layer: sealing and opening records, counters, replay windows, rekey.

docs/protocol.md §6.  One :class:`RecordSender` and one :class:`RecordReceiver`
per direction, each with its own key.  Nonces are the record's 64-bit sequence
number within its key epoch; a key is ratcheted (Noise ``REKEY``) before any
soft limit is crossed and never used past a hard one, so a (key, nonce) pair
never repeats.
"""

from __future__ import annotations

from pstp.crypto.aead import Aead, CipherName
from pstp.exceptions import (
    KeyExhausted,
    LocalProtocolError,
    RecordGap,
    RemoteProtocolError,
    ReplayError,
)
from pstp.protocol.config import Config
from pstp.wire.frames import (
    FRAME_HEADER_LEN,
    RECORD_HEADER_LEN,
    TAG_LEN,
    FrameType,
    InnerType,
    Suite,
)

__all__ = [
    "RecordReceiver",
    "RecordSender",
    "ReplayWindow",
    "cipher_for_suite",
    "record_overhead",
]

_RECORD = bytes((FrameType.RECORD,))


def cipher_for_suite(suite: int) -> CipherName:
    """Map a negotiated suite (§7) to the AEAD that implements it.

    Raises:
        RemoteProtocolError: the suite is unknown.
    """
    if suite == Suite.AES_256_GCM:
        return "AESGCM"
    if suite == Suite.CHACHA20_POLY1305:
        return "ChaChaPoly"
    raise RemoteProtocolError("unknown cipher suite")


def record_overhead() -> int:
    """Bytes a record adds to its application payload on the wire."""
    return FRAME_HEADER_LEN + RECORD_HEADER_LEN + 1 + TAG_LEN


class ReplayWindow:
    """An anti-replay sliding window with RFC 6479 semantics (§6.3).

    Sequence numbers above the highest seen are new; those within ``size``
    below it are new unless their bit is set; older ones are rejected.  The
    window only moves in :meth:`update`, which the caller invokes after the
    record decrypted successfully.

    Args:
        size: how many sequence numbers below the highest one are remembered.
    """

    __slots__ = ("_bits", "_mask", "size", "top")

    def __init__(self, size: int) -> None:
        self.size = size
        self.top = -1
        self._bits = 0
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> bool:
        """Return true if ``seq`` has not been seen and is not too old."""
        if seq > self.top:
            return True
        d = self.top - seq
        return d < self.size and not (self._bits >> d) & 1

    def update(self, seq: int) -> None:
        """Mark ``seq`` as received (call only after a successful decrypt)."""
        if seq > self.top:
            shift = seq - self.top
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        else:
            self._bits |= 1 << (self.top - seq)


class RecordSender:
    """Seals outgoing records for one direction.

    Args:
        cipher: the AEAD of the negotiated suite.
        key: the 32-byte epoch-0 key from the handshake.
        config: limits.
        now: the current time, starting the key's age.
        max_body: the largest record body the peer accepts (its ``max_record``).
    """

    def __init__(
        self, cipher: CipherName, key: bytes, config: Config, now: float, max_body: int
    ) -> None:
        self._cipher: CipherName = cipher
        self.max_body = max_body
        self._aead = Aead(cipher, key)
        self._config = config
        self.epoch = 0
        self.seq = 0
        self.bytes_sealed = 0
        self._epoch_started = now
        #: Every (epoch, seq) sealed when ``trace_nonces`` is set; for tests.
        self.nonce_log: list[tuple[int, int]] | None = None

    def rekey_due(self, now: float, upcoming: int = 0) -> bool:
        """True if sealing ``upcoming`` more bytes would cross a soft limit (§6.3)."""
        c = self._config
        return (
            self.seq >= c.rekey_after_records - 1
            or self.bytes_sealed + upcoming > c.rekey_after_bytes
            or now - self._epoch_started >= c.rekey_after_seconds
        )

    def seal(self, inner: InnerType, body: bytes, now: float) -> bytes:
        """Seal one record and return its frame.

        When the key is due for a ratchet, a KEY_UPDATE record under the old
        key precedes the record, which then goes out under the new key.

        Raises:
            LocalProtocolError: the body exceeds the largest record, or the
                key is past its hard limit.  A refused record changes nothing,
                so the sender stays usable.
        """
        if inner == InnerType.KEY_UPDATE:
            raise LocalProtocolError("KEY_UPDATE is sent by rekey(), not seal()")
        due = self.rekey_due(now, len(body))
        # Refuse before ratcheting: a KEY_UPDATE sealed for a record that is
        # then refused would be lost with it, leaving the peer an epoch behind.
        self._check(len(body), fresh_key=due)
        out = self.rekey(now) if due else b""
        return out + self._seal(inner, body)

    def rekey(self, now: float) -> bytes:
        """Ratchet the key now: returns the KEY_UPDATE frame sealed under the old key.

        Raises:
            LocalProtocolError: the old key is past its hard limit.
        """
        out = self._seal(InnerType.KEY_UPDATE, b"")
        self._aead = Aead(self._cipher, self._aead.rekey())
        self.epoch = (self.epoch + 1) & 0xFF
        self.seq = 0
        self.bytes_sealed = 0
        self._epoch_started = now
        return out

    def _check(self, size: int, *, fresh_key: bool = False) -> None:
        """Raise unless a ``size``-byte body may be sealed (under a fresh key if asked)."""
        c = self._config
        seq, sealed = (0, 0) if fresh_key else (self.seq, self.bytes_sealed)
        if seq >= c.reject_after_records or sealed + size > c.reject_after_bytes:
            raise LocalProtocolError("record key used past its hard limit")
        if size > self.max_body:
            raise LocalProtocolError("record too large")

    def _seal(self, inner: InnerType, body: bytes) -> bytes:
        self._check(len(body))
        seq = self.seq
        aad = (
            _RECORD
            + (RECORD_HEADER_LEN + 1 + len(body) + TAG_LEN).to_bytes(3, "big")
            + bytes((self.epoch,))
            + seq.to_bytes(8, "big")
        )
        ct = self._aead.seal(seq, aad, bytes((inner,)) + body)
        self.seq = seq + 1
        self.bytes_sealed += len(body)
        if self.nonce_log is not None:
            self.nonce_log.append((self.epoch, seq))
        return aad + ct


class _EpochKey:
    __slots__ = ("aead", "bytes_opened", "epoch", "next_seq", "window")

    def __init__(self, aead: Aead, epoch: int, window: ReplayWindow | None) -> None:
        self.aead = aead
        self.epoch = epoch
        self.next_seq = 0
        self.window = window
        self.bytes_opened = 0


class RecordReceiver:
    """Opens incoming records for one direction.

    In ordered mode (``config.ordered``) every record must carry exactly the
    next sequence number of the current epoch, and anything else is a
    ReplayError.  In window mode a sliding window per epoch (previous, current
    and next) tells duplicates, replays and forgeries (ReplayError,
    DecryptError: the caller drops them) from genuine records, which must still
    come in order: a genuine record after a gap is a RecordGap.

    Args:
        cipher: the AEAD of the negotiated suite.
        key: the 32-byte epoch-0 key from the handshake.
        config: limits and mode.
    """

    def __init__(self, cipher: CipherName, key: bytes, config: Config) -> None:
        self._cipher: CipherName = cipher
        self._config = config
        self._cur = self._new_epoch(Aead(cipher, key), 0)
        self._prev: _EpochKey | None = None
        self._next: _EpochKey | None = None

    @property
    def epoch(self) -> int:
        """The current receive epoch (mod 256)."""
        return self._cur.epoch

    def _new_epoch(self, aead: Aead, epoch: int) -> _EpochKey:
        window = None if self._config.ordered else ReplayWindow(self._config.replay_window)
        return _EpochKey(aead, epoch & 0xFF, window)

    def _ratchet(self) -> None:
        nxt = self._next or self._new_epoch(
            Aead(self._cipher, self._cur.aead.rekey()), self._cur.epoch + 1
        )
        self._prev, self._cur, self._next = self._cur, nxt, None

    def open(self, frame: bytes | memoryview) -> tuple[int, bytes]:
        """Verify and decrypt one whole RECORD frame (header included).

        Returns:
            The inner type byte and the record body.

        Raises:
            ReplayError: duplicate, out of order, too old, or wrong epoch.
            RecordGap: window mode: it verified but is not the next record (one
                before it was lost or overtaken).
            KeyExhausted: the sequence number or volume passed a hard limit.
            DecryptError: the tag did not verify.
            RemoteProtocolError: the plaintext is empty, or KEY_UPDATE has a body.
        """
        view = memoryview(frame)
        hdr_end = FRAME_HEADER_LEN + RECORD_HEADER_LEN
        if len(view) < hdr_end + 1 + TAG_LEN:
            raise RemoteProtocolError("record too short")
        aad = bytes(view[:hdr_end])
        epoch = aad[FRAME_HEADER_LEN]
        seq = int.from_bytes(aad[FRAME_HEADER_LEN + 1 : hdr_end], "big")
        if seq >= self._config.reject_after_records:
            raise KeyExhausted("record sequence number past the hard limit")
        key = self._select(epoch, seq)
        plain = key.aead.open(seq, aad, view[hdr_end:])  # no copy: AESGCM reads the view
        # Only a record that verified may move the window (§6.3).
        if key.window is not None:
            key.window.update(seq)
            if key is not self._cur or seq != key.next_seq:
                # The transport keeps each publisher's order (§19.3): a genuine
                # record after a gap means one was lost or overtaken, and channels
                # rely on order (§14.1).  End rather than deliver a hole.
                raise RecordGap(
                    f"record {epoch}/{seq} arrived out of order (expected "
                    f"{self._cur.epoch}/{self._cur.next_seq}): a record was lost on the way"
                )
        key.next_seq = seq + 1
        key.bytes_opened += len(plain) - 1
        if key.bytes_opened > self._config.reject_after_bytes:
            raise KeyExhausted("record key protected more than the hard limit")
        inner, body = plain[0], plain[1:]
        if inner == InnerType.KEY_UPDATE:  # only the current key gets this far
            if body:
                raise RemoteProtocolError("KEY_UPDATE with a body")
            self._ratchet()
        return inner, body

    def _select(self, epoch: int, seq: int) -> _EpochKey:
        cur = self._cur
        if self._config.ordered:
            if epoch != cur.epoch or seq != cur.next_seq:
                raise ReplayError("record out of order")
            return cur
        if epoch == cur.epoch:
            key = cur
        elif self._prev is not None and epoch == self._prev.epoch:
            key = self._prev
        elif epoch == (cur.epoch + 1) & 0xFF:
            if self._next is None:
                self._next = self._new_epoch(Aead(self._cipher, cur.aead.rekey()), epoch)
            key = self._next
        else:
            raise ReplayError("record from an unknown key epoch")
        assert key.window is not None
        if not key.window.check(seq):
            raise ReplayError("record replayed or too old")
        return key
