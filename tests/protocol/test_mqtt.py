"""The MQTT mapping's pure parts (docs/protocol.md §19.3) against docs/test-vectors/mqtt.json.

Rendezvous ids are recomputed with pyca/cryptography's HKDF and HMAC, topics and
record sizes from the text of §19.3, and each is checked against the file and
against :mod:`pstp.protocol.mqtt`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pstp.protocol.handshake import KeyRing, PeerKey
from pstp.protocol.mqtt import (
    DEFAULT_PREFIX,
    LABEL_TOPIC,
    SessionTopics,
    join_frames,
    max_record_for,
    new_session_id,
    prefix_of,
    rendezvous_id,
    split_frames,
    split_topic,
)
from tests.helpers import OUR_VECTORS

VECTORS: dict[str, Any] = json.loads((OUR_VECTORS / "mqtt.json").read_text())
HEX32 = re.compile(r"[0-9a-f]{32}")
# The cheap hypothesis profile: the machine running the suite is loaded.
CHEAP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

levels = st.text("ABCXYZabcxyz0189_.-", min_size=1, max_size=64)
prefixes = st.lists(levels, min_size=1, max_size=8).map("/".join)
hex32 = st.binary(min_size=16, max_size=16).map(bytes.hex)


# -- the label and the rendezvous id ---------------------------------------------------------------


def test_the_label_is_the_one_of_the_label_table() -> None:
    """§5.2: "PSTP/2 mqtt topic", 17 bytes; pstp is the default prefix."""
    assert LABEL_TOPIC == VECTORS["label"].encode() == b"PSTP/2 mqtt topic"
    assert len(LABEL_TOPIC) == 17
    assert DEFAULT_PREFIX == VECTORS["default_prefix"] == "pstp"


@pytest.mark.parametrize("case", VECTORS["rendezvous"], ids=lambda c: c["note"])
def test_rendezvous_vectors_recomputed_with_pyca(case: dict[str, Any]) -> None:
    """RID = HKDF(K, label, 32)[0..16] in lower-case hex: extract with 32 zero bytes, expand."""
    key = bytes.fromhex(case["key"])
    extract = hmac.HMAC(bytes(32), hashes.SHA256())
    extract.update(key)
    prk = extract.finalize()
    assert prk.hex() == case["prk"]
    okm = HKDFExpand(hashes.SHA256(), 32, LABEL_TOPIC).derive(prk)
    assert okm.hex() == case["okm"]
    assert HKDF(hashes.SHA256(), 32, None, LABEL_TOPIC).derive(key) == okm
    assert okm[:16].hex() == case["rid"]
    assert HEX32.fullmatch(case["rid"])


@pytest.mark.parametrize("case", VECTORS["rendezvous"], ids=lambda c: c["note"])
def test_rendezvous_vectors_with_the_module(case: dict[str, Any]) -> None:
    """pstp.protocol.mqtt.rendezvous_id gives the file's RID."""
    assert rendezvous_id(bytes.fromhex(case["key"])) == case["rid"]


def test_the_rendezvous_vectors_name_their_sources() -> None:
    """The pair key of pstp-hs.json and the token secret of tokens.json are the ones used."""
    keys = {case["note"]: case["key"] for case in VECTORS["rendezvous"]}
    hs = json.loads((OUR_VECTORS / "pstp-hs.json").read_text())
    tokens = json.loads((OUR_VECTORS / "tokens.json").read_text())
    assert keys["pstp-hs.json's pair key, 0x00..0x1f"] == hs["cases"][0]["inputs"]["pair_key"]
    assert keys["tokens.json's token secret"] == tokens["secret"]
    assert keys["0x01..0x20"] == bytes(range(1, 33)).hex()
    assert keys["32 bytes of 0x00"] == bytes(32).hex()


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_key_that_is_not_32_bytes_is_refused(size: int) -> None:
    """A pair key or token secret is exactly 32 bytes."""
    with pytest.raises(ValueError, match="32 bytes"):
        rendezvous_id(bytes(size))


@CHEAP
@given(st.binary(min_size=32, max_size=32))
def test_any_key_gives_32_lowercase_hex_digits(key: bytes) -> None:
    """The same as pyca's HKDF for every key."""
    rid = rendezvous_id(key)
    assert HEX32.fullmatch(rid)
    assert rid == HKDF(hashes.SHA256(), 32, None, LABEL_TOPIC).derive(key)[:16].hex()


def test_a_peer_key_carries_the_rid_of_its_pair_key() -> None:
    """PeerKey.rid, for pair keys and tokens alike, is the key's rendezvous id (§19.3)."""
    case = VECTORS["rendezvous"][1]
    key = bytes.fromhex(case["key"])
    assert PeerKey.from_pair_key("phone", key).rid == case["rid"]
    ring = KeyRing()
    ring.add("phone", key)
    token = VECTORS["rendezvous"][3]
    ring.add_token("tok_abcdefghijkl", "phone", bytes.fromhex(token["key"]))
    assert {p.rid for p in ring} == {case["rid"], token["rid"]}


# -- session ids and topics ------------------------------------------------------------------------


def test_session_ids_are_16_fresh_random_bytes_in_hex() -> None:
    """32 lower-case hex digits, different every time."""
    sids = {new_session_id() for _ in range(64)}
    assert len(sids) == 64
    assert all(HEX32.fullmatch(sid) for sid in sids)


@pytest.mark.parametrize("case", VECTORS["topics"], ids=lambda c: c["prefix"][:16])
def test_topic_vectors(case: dict[str, Any]) -> None:
    """PREFIX/RID/SID/i up, PREFIX/RID/SID/r down, PREFIX/RID/+/i the responder's filter."""
    prefix, rid, sid = case["prefix"], case["rid"], case["sid"]
    assert case["up"] == f"{prefix}/{rid}/{sid}/i"
    assert case["down"] == f"{prefix}/{rid}/{sid}/r"
    assert case["responder_filter"] == f"{prefix}/{rid}/+/i"
    topics = SessionTopics(prefix, rid, sid)
    assert (topics.prefix, topics.rid, topics.sid) == (prefix, rid, sid)
    assert (topics.up, topics.down) == (case["up"], case["down"])
    assert SessionTopics.responder_filter(prefix, rid) == case["responder_filter"]
    assert split_topic(prefix, topics.up) == (rid, sid)
    assert split_topic(prefix, topics.down) is None


def test_the_longest_topic_fits_the_receive_allowance() -> None:
    """8 levels of 64 characters: the longest topic of a session is 587 bytes."""
    longest = VECTORS["topics"][2]
    assert prefix_of("/" + longest["prefix"]) == longest["prefix"]
    assert len(longest["up"]) == len(longest["down"]) == 8 * 65 - 1 + 68 == 587


@pytest.mark.parametrize("case", VECTORS["split"], ids=lambda c: c["topic"][-40:])
def test_split_vectors(case: dict[str, Any]) -> None:
    """Only PREFIX/RID/SID/i with two 32-digit lower-case hex ids is a session topic."""
    expected = None if case["rid"] is None else (case["rid"], case["sid"])
    assert split_topic(case["prefix"], case["topic"]) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "pstp",
        "pstp/",
        "pstp/i",
        "pstp//i",
        "pstp///i",
        "pstp/" + "0" * 32 + "/i",
        "pstp/" + "0" * 32 + "/" + "0" * 32,
        "pstp/" + "0" * 32 + "/" + "0" * 32 + "/i/",
        "pstp/" + "0" * 32 + "/" + "0" * 33 + "/i",
        "pstp/" + "0" * 32 + "/" + "g" * 32 + "/i",
        "pstp/" + "0" * 32 + "/" + "0" * 32 + "/" + "0" * 32 + "/i",
        "pstpx/" + "0" * 32 + "/" + "0" * 32 + "/i",
        "/pstp/" + "0" * 32 + "/" + "0" * 32 + "/i",
        "$SYS/" + "0" * 32 + "/" + "0" * 32 + "/i",
    ],
)
def test_split_refuses_what_is_not_a_session_topic(topic: str) -> None:
    """Wrong prefix, wrong direction, wrong level count, not hex: None."""
    assert split_topic("pstp", topic) is None


@CHEAP
@given(prefix=st.text(max_size=20), topic=st.text(max_size=120))
def test_split_never_raises(prefix: str, topic: str) -> None:
    """Any text gives a pair of hex ids or None (a broker may deliver any topic)."""
    ids = split_topic(prefix, topic)
    assert ids is None or all(HEX32.fullmatch(part) for part in ids)


@CHEAP
@given(prefix=prefixes, rid=hex32, sid=hex32)
def test_topics_built_from_valid_parts_split_back(prefix: str, rid: str, sid: str) -> None:
    """split_topic(p, SessionTopics(p, r, s).up) == (r, s); the down topic never splits."""
    topics = SessionTopics(prefix, rid, sid)
    assert split_topic(prefix, topics.up) == (rid, sid)
    assert split_topic(prefix, topics.down) is None
    assert prefix_of("/" + prefix) == prefix


# -- prefixes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", VECTORS["prefixes"]["accepted"], ids=lambda c: c["path"][:20] or "empty"
)
def test_prefix_vectors(case: dict[str, str]) -> None:
    """The address path without its slashes, or pstp when there is none."""
    assert prefix_of(case["path"]) == case["prefix"]


@pytest.mark.parametrize("path", VECTORS["prefixes"]["refused"], ids=lambda p: p[:20])
def test_refused_prefix_vectors(path: str) -> None:
    """Empty levels, wildcards, $, other characters, 9 levels, 65-character levels."""
    with pytest.raises(ValueError, match="is not a topic prefix"):
        prefix_of(path)


@CHEAP
@given(st.text(max_size=80))
def test_prefix_of_any_text_is_a_prefix_or_value_error(path: str) -> None:
    """Whatever a configuration holds: a valid prefix, or ValueError."""
    try:
        prefix = prefix_of(path)
    except ValueError:
        return
    parts = prefix.split("/")
    assert 1 <= len(parts) <= 8
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", part) for part in parts)


# -- record sizes ----------------------------------------------------------------------------------


def _room(limit: int, topic: str) -> int:
    # §19.3: PUBLISH header (1 + 4 + 2 + 2 + 1), the topic, the RECORD frame's 30 bytes.
    return limit - 10 - len(topic.encode()) - 30


@pytest.mark.parametrize("case", VECTORS["max_record"]["cases"], ids=lambda c: c["note"])
def test_max_record_vectors(case: dict[str, Any]) -> None:
    """The largest body that fits the broker's Maximum Packet Size, at most the one wanted."""
    v = VECTORS["max_record"]
    assert (v["publish_overhead"], v["record_overhead"], v["minimum"]) == (10, 30, 1024)
    limit, topic, wanted = case["packet_limit"], case["topic"], case["wanted"]
    if case["max_record"] is None:
        assert _room(limit, topic) < 1024
        with pytest.raises(ValueError, match="too small for PSTP"):
            max_record_for(limit, topic, wanted)
        return
    expected = wanted if limit is None else min(wanted, _room(limit, topic))
    assert case["max_record"] == expected
    assert max_record_for(limit, topic, wanted) == expected


@CHEAP
@given(
    limit=st.integers(0, 1 << 28),
    topic=st.sampled_from([t[key] for t in VECTORS["topics"] for key in ("up", "down")]),
    wanted=st.integers(1024, (1 << 24) - 27),
)
def test_max_record_bounds(limit: int, topic: str, wanted: int) -> None:
    """Never above wanted, never below 1024, and the whole PUBLISH fits the limit."""
    try:
        record = max_record_for(limit, topic, wanted)
    except ValueError:
        assert _room(limit, topic) < 1024
        return
    assert 1024 <= record <= wanted
    assert 10 + len(topic) + 30 + record <= limit
    assert record == wanted or 10 + len(topic) + 30 + record == limit


def test_the_error_names_the_limit_and_what_is_needed() -> None:
    """The message tells the operator what the broker must allow."""
    topic = VECTORS["topics"][0]["up"]
    with pytest.raises(ValueError, match=r"\(1135 bytes\).*at least 1136 bytes"):
        max_record_for(1135, topic, 65536)


def test_a_keyring_subset_holds_the_keys_of_one_rid_with_their_guards() -> None:
    """KeyRing.subset(rid): only that RID's keys, the same objects (one replay guard)."""
    from pstp.protocol.handshake import KeyRing

    ring = KeyRing()
    ring.add("a", bytes(32))
    ring.add("b", bytes(range(32)))
    sub = ring.subset(rendezvous_id(bytes(range(32))))
    assert [p.device_id for p in sub] == ["b"]
    assert sub.get("b") is ring.get("b")
    assert len(ring.subset("0" * 32)) == 0


# -- several whole frames in one message (§19.3) ----------------------------------------------

_frame = st.builds(
    lambda t, body: bytes([t]) + len(body).to_bytes(3, "big") + body,
    st.sampled_from([0x01, 0x02, 0x17, 0x42]),
    st.binary(max_size=300),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(st.lists(_frame, max_size=12), st.integers(min_value=1, max_value=2000))
def test_frames_joined_split_back_in_order(frames: list[bytes], limit: int) -> None:
    """join_frames packs whole frames up to the limit (a longer one alone); split_frames
    gives the same frames back, in order, from each message."""
    messages = join_frames(frames, limit)
    assert all(len(m) <= limit or len(split_frames(m) or ()) == 1 for m in messages)
    back = [f for m in messages for f in split_frames(m) or [b"?"]]
    assert back == frames


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(st.lists(_frame, min_size=1, max_size=6), st.binary(min_size=1, max_size=8))
def test_a_message_that_is_not_whole_frames_splits_to_none(
    frames: list[bytes], extra: bytes
) -> None:
    """Cut anywhere inside a frame, or with bytes after the last frame: None (the session
    judges it whole); cut at a frame boundary: the frames before it."""
    message = b"".join(frames)
    bounds = {0}
    for f in frames:
        bounds.add(max(bounds) + len(f))
    for cut in range(1, len(message)):
        got = split_frames(message[:cut])
        assert (got is not None) == (cut in bounds)
    trailing = split_frames(message + extra)
    assert trailing is None or trailing[: len(frames)] == frames


def test_one_frame_comes_back_as_itself_and_empty_is_none() -> None:
    """The common case costs no copy; an empty message holds no frame."""
    frame = b"\x17\x00\x00\x03abc"
    assert split_frames(frame)[0] is frame  # type: ignore[index]
    assert split_frames(b"") is None
    assert join_frames([], 100) == []
    assert join_frames([frame], 1) == [frame]
