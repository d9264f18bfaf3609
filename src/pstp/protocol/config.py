"""Limits, algorithms and timeouts of a connection (docs/protocol.md §10)."""

from __future__ import annotations

import msgspec

from pstp.wire.frames import MAX_FRAME_BODY, RECORD_HEADER_LEN, TAG_LEN, VERSION, Suite
from pstp.wire.messages import INITIAL_WINDOW, MAX_WINDOW

__all__ = ["Config"]


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """Settings shared by both roles.  Every limit is checked before allocating.

    Attributes:
        versions: protocol versions we speak, highest preferred (§11).
        suites: record suites we offer or accept, in preference order (§7).
        max_record_size: largest record plaintext we accept (application bytes).
        max_handshake_size: largest handshake frame body we accept.
        handshake_timeout: seconds from start until the handshake must be done.
        keepalive_interval: seconds of silence before we send a PING; ``None`` disables.
        keepalive_count_max: unanswered PINGs after which the peer is declared dead.
        ping_burst: PINGs from the peer answered at once; more than that, beyond
            ``ping_rate`` a second, ends the session (a heartbeat flood, §6.5).
        ping_rate: PINGs from the peer answered per second after the burst.
        rekey_after_records: records under one key before the sender ratchets it.
        rekey_after_bytes: plaintext bytes under one key before the sender ratchets it.
        rekey_after_seconds: age of a key before the sender ratchets it.
        reject_after_records: hard limit: a key is never used for more records.
        reject_after_bytes: hard limit: a key never protects more bytes.
        ordered: the transport delivers bytes in order, once (TCP, WebSocket); when
            false, records are checked against a sliding window instead (MQTT).
        replay_window: size in records of that sliding window.
        service: the service an initiator asks for in HS_INIT.
        channel_window: the receive window we grant each channel, in bytes.
        max_channels: channels the peer may have open at once.
    """

    versions: tuple[int, ...] = (VERSION,)
    suites: tuple[Suite, ...] = (Suite.AES_256_GCM, Suite.CHACHA20_POLY1305)
    max_record_size: int = 65536
    max_handshake_size: int = 1024
    handshake_timeout: float = 10.0
    keepalive_interval: float | None = 15.0
    keepalive_count_max: int = 3
    ping_burst: int = 64
    ping_rate: float = 16.0
    rekey_after_records: int = 1 << 20
    rekey_after_bytes: int = 1 << 30
    rekey_after_seconds: float = 120.0
    reject_after_records: int = 1 << 22
    reject_after_bytes: int = 1 << 32
    ordered: bool = True
    replay_window: int = 1024
    service: str = "session"
    channel_window: int = 1 << 20
    max_channels: int = 1024

    def __post_init__(self) -> None:
        if VERSION not in self.versions:
            raise ValueError("versions must include PSTP/2")
        if Suite.AES_256_GCM not in self.suites:
            raise ValueError("AES-256-GCM is mandatory (docs/protocol.md §7)")
        limit = MAX_FRAME_BODY - RECORD_HEADER_LEN - TAG_LEN - 1
        if not 1024 <= self.max_record_size <= limit:
            raise ValueError(f"max_record_size must be in [1024, {limit}]")
        if not 0 < self.rekey_after_records < self.reject_after_records:
            raise ValueError("rekey_after_records must be below reject_after_records")
        if not 0 < self.rekey_after_bytes < self.reject_after_bytes:
            raise ValueError("rekey_after_bytes must be below reject_after_bytes")
        if not 256 <= self.max_handshake_size <= 65535:
            raise ValueError("max_handshake_size must be in [256, 65535]")
        if self.handshake_timeout <= 0 or self.rekey_after_seconds <= 0:
            raise ValueError("timeouts must be positive")
        if self.ping_burst < 1 or self.ping_rate <= 0:
            raise ValueError("ping_burst must be at least 1 and ping_rate positive")
        if self.keepalive_interval is not None and self.keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive (or None)")
        if self.reject_after_records >= 1 << 63:
            # Far below 2**64 - 1, the nonce Noise REKEY reserves (§6.3).
            raise ValueError("reject_after_records must be below 2**63")
        if not INITIAL_WINDOW <= self.channel_window <= MAX_WINDOW:
            raise ValueError(f"channel_window must be in [{INITIAL_WINDOW}, {MAX_WINDOW}]")
        if self.max_channels < 1:
            raise ValueError("max_channels must be at least 1")
        if self.keepalive_count_max < 1:
            raise ValueError("keepalive_count_max must be at least 1")
        if not 64 <= self.replay_window <= 1 << 16:
            raise ValueError("replay_window must be in [64, 65536]")
