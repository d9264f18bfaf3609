"""Tests for pstp.protocol.record: the replay window and epochs under reordering."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pstp.exceptions import KeyExhausted, LocalProtocolError, RemoteProtocolError, ReplayError
from pstp.protocol.config import Config
from pstp.protocol.record import RecordReceiver, RecordSender, ReplayWindow, record_overhead
from pstp.wire.frames import InnerType

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


def test_unordered_receiver_survives_reordering_across_rekeys() -> None:
    """Shuffled records spanning several key epochs all open exactly once."""
    cfg = Config(ordered=False, rekey_after_records=8, reject_after_records=16, replay_window=64)
    tx = RecordSender("AESGCM", KEY, cfg, 0.0, 65536)
    frames = []
    for i in range(40):
        frames += _split(tx.seal(InnerType.DATA, i.to_bytes(2, "big"), 0.0))
    rng = random.Random(7)
    # Shuffle locally (within a small distance), as a broker might.
    for i in range(len(frames) - 1):
        j = min(len(frames) - 1, i + rng.randrange(3))
        frames[i], frames[j] = frames[j], frames[i]
    rx = RecordReceiver("AESGCM", KEY, cfg)
    got = []
    for f in frames + frames[-5:]:  # trailing duplicates
        try:
            inner, body = rx.open(f)
        except ReplayError:
            continue
        if inner == InnerType.DATA:
            got.append(int.from_bytes(body, "big"))
    assert sorted(got) == list(range(40))


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
