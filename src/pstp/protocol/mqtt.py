"""The MQTT mapping's pure parts (docs/protocol.md §19.3): topics and sizes.

A device and its peers meet at a broker under topics derived from the pair key
(or token secret) they share, never from a name:

``PREFIX/RID/SID/i``
    initiator to responder (HS_INIT first, then its records);
``PREFIX/RID/SID/r``
    responder to initiator.

``RID`` is ``HKDF(K, "PSTP/2 mqtt topic", 32)[0..16]`` in lower-case hex, the
same for every session under that key; ``SID`` is 16 fresh random bytes per
session, also in hex.  ``PREFIX`` is the path of the ``mqtt://`` address
(``pstp`` by default), so a broker's access rules can confine PSTP to a subtree.
No I/O here: the asyncio driver is :mod:`pstp.asyncio.mqtt`.
"""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_PREFIX",
    "LABEL_TOPIC",
    "SessionTopics",
    "join_frames",
    "max_record_for",
    "new_session_id",
    "prefix_of",
    "rendezvous_id",
    "split_frames",
    "split_topic",
]

#: The HKDF label of the rendezvous id (§5.2 table, §19.3).
LABEL_TOPIC = b"PSTP/2 mqtt topic"
#: The topic prefix when an ``mqtt://`` address has no path.
DEFAULT_PREFIX = "pstp"
#: Topic levels of a prefix: letters, digits and ``_ . -`` (no wildcards, no ``$``).
_LEVEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
# MQTT PUBLISH overhead around the payload: fixed header (1 + up to 4 length
# bytes), topic length (2), packet id (2), properties length (1).
_PUBLISH_EXTRA = 10
# The record layer's overhead above max_record_size, and the frame header.
_RECORD_FRAME_EXTRA = 26 + 4


def rendezvous_id(key: bytes) -> str:
    """The rendezvous id of a pair key or token secret: 32 lower-case hex digits.

    Raises:
        ValueError: the key is not 32 bytes.
    """
    # Imported here: pstp.address reads prefixes through this module, and every
    # command imports that; cryptography costs start-up the others do not need.
    from pstp.crypto.kdf import hkdf_sha256

    if len(key) != 32:
        raise ValueError("a pair key is exactly 32 bytes")
    return hkdf_sha256(key, salt=None, info=LABEL_TOPIC, length=32)[:16].hex()


def new_session_id() -> str:
    """A fresh session id: 16 random bytes in hex."""
    from pstp.crypto.kdf import random_bytes  # see rendezvous_id

    return random_bytes(16).hex()


def prefix_of(path: str) -> str:
    """The topic prefix of an ``mqtt://`` address's path (``""`` or ``/``: ``pstp``).

    Raises:
        ValueError: a level is empty, too long, or holds a wildcard, ``$`` or
            another character outside ``A-Z a-z 0-9 _ . -``.
    """
    text = path.strip("/")
    if not text:
        return DEFAULT_PREFIX
    levels = text.split("/")
    if len(levels) > 8 or not all(_LEVEL.fullmatch(level) for level in levels):
        raise ValueError(
            f"{path!r} is not a topic prefix (at most 8 levels of letters, digits, '_', '.', '-')"
        )
    return text


class SessionTopics:
    """The two topics of one session, and the filter a responder subscribes to."""

    __slots__ = ("down", "prefix", "rid", "sid", "up")

    def __init__(self, prefix: str, rid: str, sid: str) -> None:
        self.prefix = prefix
        self.rid = rid
        self.sid = sid
        #: Initiator to responder.
        self.up = f"{prefix}/{rid}/{sid}/i"
        #: Responder to initiator.
        self.down = f"{prefix}/{rid}/{sid}/r"

    @staticmethod
    def responder_filter(prefix: str, rid: str) -> str:
        """What a responder subscribes to for one key: every session's ``i`` topic."""
        return f"{prefix}/{rid}/+/i"


def split_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """``(rid, sid)`` of an initiator-to-responder topic under ``prefix``, else ``None``."""
    head = prefix + "/"
    if not topic.startswith(head) or not topic.endswith("/i"):
        return None
    parts = topic[len(head) : -2].split("/")
    if len(parts) != 2 or not all(_HEX32.fullmatch(p) for p in parts):
        return None
    return parts[0], parts[1]


def max_record_for(packet_limit: int | None, topic: str, wanted: int) -> int:
    """The largest record body that fits a broker's packet limit (at most ``wanted``).

    Args:
        packet_limit: the broker's Maximum Packet Size (MQTT 5 CONNACK), or
            ``None`` when it sets none.
        topic: the longest topic the session publishes to.
        wanted: the configured ``max_record_size``.

    Raises:
        ValueError: the limit cannot carry a 1 024-byte record.
    """
    if packet_limit is None:
        return wanted
    extra = _PUBLISH_EXTRA + len(topic.encode()) + _RECORD_FRAME_EXTRA
    if packet_limit - extra < 1024:
        raise ValueError(
            f"the broker's maximum packet size ({packet_limit} bytes) is too small for PSTP "
            f"(at least {1024 + extra} bytes)"
        )
    room = packet_limit - extra
    return min(wanted, room)


def join_frames(frames: list[bytes], limit: int) -> list[bytes]:
    """Whole frames packed into as few messages of at most ``limit`` bytes as order allows.

    A frame longer than ``limit`` travels alone.  Frames keep their order, within and
    across messages (§19.3: a message carries one or more whole frames).
    """
    out: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for frame in frames:
        if batch and size + len(frame) > limit:
            out.append(batch[0] if len(batch) == 1 else b"".join(batch))
            batch, size = [], 0
        batch.append(frame)
        size += len(frame)
    if batch:
        out.append(batch[0] if len(batch) == 1 else b"".join(batch))
    return out


def split_frames(message: bytes) -> list[bytes] | None:
    """The whole frames a message holds, in order; ``None`` if it is not whole frames.

    Only the 4-byte headers are read (type and length, §3); each frame is then judged
    by the connection.  A message that is exactly one frame comes back as itself.
    """
    frames: list[bytes] = []
    pos, end = 0, len(message)
    while pos < end:
        if end - pos < 4:
            return None
        stop = pos + 4 + int.from_bytes(message[pos + 1 : pos + 4], "big")
        if stop > end:
            return None
        frames.append(message if (pos, stop) == (0, end) else message[pos:stop])
        pos = stop
    return frames or None
