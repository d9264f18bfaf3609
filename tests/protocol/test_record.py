"""Tests for pstp.protocol.record: the replay window and epochs under reordering."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pstp.exceptions import (
    DecryptError,
    KeyExhausted,
    LocalProtocolError,
    RecordGap,
    RemoteProtocolError,
    ReplayError,
)
from pstp.protocol.config import Config
from pstp.protocol.record import (
    RecordReceiver,
    RecordSender,
    ReplayWindow,
    cipher_for_suite,
    record_overhead,
)
from pstp.wire.frames import InnerType, Suite

KEY = b"\x11" * 32


@given(st.lists(st.integers(0, 3000), max_size=300), st.sampled_from([64, 128, 1024]))
def test_replay_window_matches_a_simple_model(seqs: list[int], size: int) -> None:
    """The bitmap window accepts exactly what a set-based model of RFC 6479 accepts."""
    w = ReplayWindow(size)
    seen: set[int] = set()
    top = -1
    for s in seqs:
        expect = s not in seen and (s > top or top - s < size)
        assert w.check(s) is expect
        if expect:
            w.update(s)
            seen.add(s)
            top = max(top, s)


def _split(frames: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(frames):
        end = pos + 4 + int.from_bytes(frames[pos + 1 : pos + 4], "big")
        out.append(frames[pos:end])
        pos = end
    return out


def test_window_receiver_drops_duplicates_across_rekeys() -> None:
    """Records spanning several key epochs, each delivered twice or more (QoS 1
    redelivery, a republished copy): every record opens once, in order."""
    cfg = Config(ordered=False, rekey_after_records=8, reject_after_records=16, replay_window=64)
    tx = RecordSender("AESGCM", KEY, cfg, 0.0, 65536)
    frames = []
    for i in range(40):
        frames += _split(tx.seal(InnerType.DATA, i.to_bytes(2, "big"), 0.0))
    rng = random.Random(7)
    delivered = []
    for i, frame in enumerate(frames):
        delivered.append(frame)
        # copies of this and of earlier frames, as a broker or a stranger might add
        delivered += [frames[rng.randrange(i + 1)] for _ in range(rng.randrange(3))]
    rx = RecordReceiver("AESGCM", KEY, cfg)
    got = []
    for f in delivered:
        try:
            inner, body = rx.open(f)
        except ReplayError:
            continue
        if inner == InnerType.DATA:
            got.append(int.from_bytes(body, "big"))
    assert got == list(range(40))


def test_window_receiver_ends_on_a_gap() -> None:
    """A genuine record after a missing one (lost, or overtaken) is a RecordGap: channels
    rely on order (§14.1), so a hole is never delivered."""
    cfg = Config(ordered=False)
    tx = RecordSender("AESGCM", KEY, cfg, 0.0, 65536)
    frames = [tx.seal(InnerType.DATA, bytes([i]), 0.0) for i in range(3)]
    rx = RecordReceiver("AESGCM", KEY, cfg)
    assert rx.open(frames[0]) == (InnerType.DATA, b"\x00")
    with pytest.raises(RecordGap, match="out of order"):
        rx.open(frames[2])


def test_window_receiver_ends_when_a_record_overtakes_key_update() -> None:
    """The next epoch's record before the KEY_UPDATE that announces it, or the previous
    epoch's record after it: both are gaps."""
    cfg = Config(ordered=False)
    tx = RecordSender("AESGCM", KEY, cfg, 0.0, 65536)
    update = tx.rekey(0.0)
    ahead = tx.seal(InnerType.DATA, b"epoch one", 0.0)
    rx = RecordReceiver("AESGCM", KEY, cfg)
    with pytest.raises(RecordGap):
        rx.open(ahead)
    tx2 = RecordSender("AESGCM", KEY, cfg, 0.0, 65536)
    first = tx2.seal(InnerType.DATA, b"a", 0.0)
    second = tx2.seal(InnerType.DATA, b"b", 0.0)
    update2 = tx2.rekey(0.0)
    rx2 = RecordReceiver("AESGCM", KEY, cfg)
    assert rx2.open(first) == (InnerType.DATA, b"a")
    with pytest.raises(RecordGap):  # the KEY_UPDATE overtook the second record
        rx2.open(update2)
    del update, second


def test_key_update_body_and_short_records_are_refused() -> None:
    """A KEY_UPDATE with a body, or a frame shorter than header + tag, is refused."""
    tx = RecordSender("AESGCM", KEY, Config(), 0.0, 65536)
    rx = RecordReceiver("AESGCM", KEY, Config())
    with pytest.raises(LocalProtocolError):
        tx.seal(InnerType.KEY_UPDATE, b"", 0.0)
    with pytest.raises(RemoteProtocolError):
        rx.open(tx._seal(InnerType.KEY_UPDATE, b"x"))
    with pytest.raises(RemoteProtocolError):
        RecordReceiver("AESGCM", KEY, Config()).open(b"\x17\x00\x00\x05abcde")


def test_sender_refuses_oversized_bodies() -> None:
    """A body above the peer's limit is a local error, not a silent split."""
    tx = RecordSender("AESGCM", KEY, Config(), 0.0, 1024)
    with pytest.raises(LocalProtocolError):
        tx.seal(InnerType.DATA, b"x" * 1025, 0.0)
    assert record_overhead() == 4 + 9 + 1 + 16


def test_receiver_enforces_the_byte_hard_limit() -> None:
    """More bytes under one key than reject_after_bytes ends the session."""
    loose = Config(rekey_after_bytes=1 << 20, reject_after_bytes=1 << 21)
    strict = Config(rekey_after_bytes=1024, reject_after_bytes=4096)
    tx = RecordSender("AESGCM", KEY, loose, 0.0, 65536)
    rx = RecordReceiver("AESGCM", KEY, strict)
    with pytest.raises(KeyExhausted):
        for _ in range(10):
            rx.open(tx.seal(InnerType.DATA, b"x" * 1000, 0.0))


def test_explicit_rekey_keeps_both_sides_in_step() -> None:
    """rekey() emits KEY_UPDATE under the old key; the receiver follows to the new epoch."""
    tx = RecordSender("ChaChaPoly", KEY, Config(), 0.0, 65536)
    rx = RecordReceiver("ChaChaPoly", KEY, Config())
    assert rx.open(tx.rekey(0.0)) == (InnerType.KEY_UPDATE, b"")
    assert rx.epoch == tx.epoch == 1
    assert rx.open(tx.seal(InnerType.DATA, b"after", 0.0)) == (InnerType.DATA, b"after")


def test_window_mode_hard_limit_is_fatal_not_a_silent_drop() -> None:
    """Past the byte hard limit a datagram-mode receiver raises KeyExhausted (fatal)."""
    loose = Config(ordered=False, rekey_after_bytes=1 << 20, reject_after_bytes=1 << 21)
    strict = Config(ordered=False, rekey_after_bytes=1024, reject_after_bytes=2048)
    tx = RecordSender("AESGCM", KEY, loose, 0.0, 65536)
    rx = RecordReceiver("AESGCM", KEY, strict)
    rx.open(tx.seal(InnerType.DATA, b"x" * 2000, 0.0))
    with pytest.raises(KeyExhausted):
        rx.open(tx.seal(InnerType.DATA, b"x" * 100, 0.0))


def _open_all(rx: RecordReceiver, frames: bytes) -> list[tuple[int, bytes]]:
    return [rx.open(f) for f in _split(frames)]


def test_refused_oversized_record_does_not_strand_the_peer() -> None:
    """A body refused while a rekey is due leaves the sender in step with the receiver."""
    tx = RecordSender("AESGCM", KEY, Config(), 0.0, 1024)
    rx = RecordReceiver("AESGCM", KEY, Config())
    later = Config().rekey_after_seconds + 1.0  # the key is now due for a time-based ratchet
    with pytest.raises(LocalProtocolError):
        tx.seal(InnerType.DATA, b"x" * 1025, later)
    assert _open_all(rx, tx.seal(InnerType.DATA, b"fits", later))[-1] == (InnerType.DATA, b"fits")


def test_body_above_the_byte_hard_limit_is_refused_without_ratcheting() -> None:
    """A body no key may carry is refused, and the next record still opens in order."""
    cfg = Config(rekey_after_bytes=512, reject_after_bytes=1000)
    tx = RecordSender("ChaChaPoly", KEY, cfg, 0.0, 65536)
    rx = RecordReceiver("ChaChaPoly", KEY, cfg)
    with pytest.raises(LocalProtocolError):
        tx.seal(InnerType.DATA, b"x" * 1001, 0.0)
    assert _open_all(rx, tx.seal(InnerType.DATA, b"y" * 1000, 0.0)) == [
        (InnerType.KEY_UPDATE, b""),
        (InnerType.DATA, b"y" * 1000),
    ]
    assert rx.epoch == tx.epoch == 1


def test_sender_ratchets_on_every_soft_limit() -> None:
    """Record count, byte volume and key age each trigger a KEY_UPDATE before the record."""
    cfg = Config(rekey_after_records=4, reject_after_records=8, rekey_after_bytes=3000)
    cases = [
        (b"r", 0.0, 3),  # the 4th record under a key is its KEY_UPDATE
        (b"b" * 1000, 0.0, 3),  # a 4th kilobyte would cross rekey_after_bytes
        (b"t", cfg.rekey_after_seconds, 0),  # the key is old
    ]
    for body, now, quiet in cases:
        tx = RecordSender("AESGCM", KEY, cfg, 0.0, 65536)
        rx = RecordReceiver("AESGCM", KEY, cfg)
        for _ in range(quiet):
            assert len(_open_all(rx, tx.seal(InnerType.DATA, body, 0.0))) == 1
        assert tx.epoch == 0
        opened = _open_all(rx, tx.seal(InnerType.DATA, body, now))
        assert opened == [(InnerType.KEY_UPDATE, b""), (InnerType.DATA, body)]
        assert rx.epoch == tx.epoch == 1


@given(st.lists(st.integers(0, 2000), min_size=1, max_size=60))
def test_nonces_never_repeat_across_rekeys(sizes: list[int]) -> None:
    """Every (epoch, seq) a sender uses is unique, and each epoch counts up from 0."""
    cfg = Config(rekey_after_records=5, reject_after_records=6, rekey_after_bytes=4000)
    tx = RecordSender("AESGCM", KEY, cfg, 0.0, 65536)
    tx.nonce_log = []
    frames = b"".join(tx.seal(InnerType.DATA, bytes(n), 0.0) for n in sizes)
    log = tx.nonce_log
    assert len(log) == len(set(log)) == len(_split(frames))
    for (e1, s1), (e2, s2) in itertools.pairwise(log):
        assert (e2, s2) in ((e1, s1 + 1), ((e1 + 1) & 0xFF, 0))


def test_cipher_for_suite() -> None:
    """Both suites map to their AEAD; an unknown suite is the peer's protocol error."""
    assert cipher_for_suite(Suite.AES_256_GCM) == "AESGCM"
    assert cipher_for_suite(Suite.CHACHA20_POLY1305) == "ChaChaPoly"
    with pytest.raises(RemoteProtocolError):
        cipher_for_suite(0x0003)


def test_ordered_receiver_refuses_replays_gaps_and_other_epochs() -> None:
    """In ordered mode a duplicate, a skipped record or a foreign epoch is a ReplayError."""
    tx = RecordSender("AESGCM", KEY, Config(), 0.0, 65536)
    first, second, third = (tx.seal(InnerType.DATA, b"%d" % i, 0.0) for i in range(3))
    rx = RecordReceiver("AESGCM", KEY, Config())
    assert rx.open(first) == (InnerType.DATA, b"0")
    for bad in (first, third, first[:4] + b"\x01" + first[5:]):
        with pytest.raises(ReplayError):
            rx.open(bad)
    assert rx.open(second) == (InnerType.DATA, b"1")
    assert rx.open(third) == (InnerType.DATA, b"2")


def test_receiver_cuts_off_a_key_used_past_the_record_hard_limit() -> None:
    """A sequence number at reject_after_records raises KeyExhausted before any decryption."""
    strict = Config(rekey_after_records=4, reject_after_records=5)
    tx = RecordSender("AESGCM", KEY, Config(), 0.0, 65536)
    rx = RecordReceiver("AESGCM", KEY, strict)
    for _ in range(5):
        rx.open(tx.seal(InnerType.DATA, b"ok", 0.0))
    with pytest.raises(KeyExhausted):
        rx.open(tx.seal(InnerType.DATA, b"one too many", 0.0))


def test_forged_next_epoch_record_does_not_disturb_the_receiver() -> None:
    """In window mode a forged next-epoch record fails, and the genuine stream still opens."""
    cfg = Config(ordered=False)
    tx = RecordSender("AESGCM", KEY, cfg, 0.0, 65536)
    rx = RecordReceiver("AESGCM", KEY, cfg)
    update = tx.rekey(0.0)
    genuine = tx.seal(InnerType.DATA, b"epoch one", 0.0)
    forged = genuine[:-1] + bytes([genuine[-1] ^ 1])
    for _ in range(2):  # the next epoch's key is derived once, then kept
        with pytest.raises(DecryptError):
            rx.open(forged)
    assert rx.epoch == 0
    assert rx.open(update) == (InnerType.KEY_UPDATE, b"")
    assert rx.epoch == 1
    assert rx.open(genuine) == (InnerType.DATA, b"epoch one")
    # A late copy of the old epoch's KEY_UPDATE is a duplicate: dropped, nothing moves.
    with pytest.raises(ReplayError):
        rx.open(update)
    assert rx.epoch == 1


def test_window_receiver_refuses_epochs_it_cannot_know() -> None:
    """Window mode accepts the previous, current and next epoch only."""
    cfg = Config(ordered=False)
    tx = RecordSender("AESGCM", KEY, cfg, 0.0, 65536)
    rx = RecordReceiver("AESGCM", KEY, cfg)
    tx.rekey(0.0)
    tx.rekey(0.0)
    with pytest.raises(ReplayError):
        rx.open(tx.seal(InnerType.DATA, b"epoch two", 0.0))
    assert rx.epoch == 0
