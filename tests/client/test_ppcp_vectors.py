"""docs/test-vectors/ppcp.json: message framing on the session-level stream (protocol.md §6.6)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from pstp.client.ppcp import MAX_MESSAGE_SIZE, PpcpSession
from pstp.exceptions import ConnectionClosed, ErrorCode, RemoteProtocolError
from tests.helpers import OUR_VECTORS, TIMEOUT
from tests.sync.test_connection import sync_pair

VECTORS = json.loads((OUR_VECTORS / "ppcp.json").read_text())
CASES = VECTORS["cases"]


def test_default_limit_matches() -> None:
    """The file's default limit is the implementation's."""
    assert VECTORS["default_limit"] == MAX_MESSAGE_SIZE


@pytest.mark.parametrize("case", [c for c in CASES if "error" not in c], ids=lambda c: c["name"])
def test_framing_is_a_length_then_the_bytes(case: dict[str, Any]) -> None:
    """The stream is, independently of the code, u32 length + message for each message."""
    stream = b"".join(bytes.fromhex(r) for r in case["records"])
    expected = b"".join(
        struct.pack(">I", len(m)) + m for m in (bytes.fromhex(h) for h in case["messages"])
    )
    assert stream == expected


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_receiver_against_the_vectors(case: dict[str, Any]) -> None:
    """Records sent as session DATA come out of PpcpSession.recv as the listed messages."""
    sender, receiver = sync_pair()
    with sender, receiver:
        ppcp = PpcpSession(receiver, "phone", max_message_size=case.get("limit", MAX_MESSAGE_SIZE))
        for record in case["records"]:
            sender.send(bytes.fromhex(record))
        if "error" in case:
            with pytest.raises(RemoteProtocolError):
                ppcp.recv(TIMEOUT)
            with pytest.raises(ConnectionClosed) as info:
                sender.recv(TIMEOUT)
            assert info.value.code == ErrorCode[case["error"]]
        else:
            got = [ppcp.recv(TIMEOUT).hex() for _ in case["messages"]]
            assert got == case["messages"]


@pytest.mark.parametrize("case", [c for c in CASES if "error" not in c], ids=lambda c: c["name"])
def test_sender_against_the_vectors(case: dict[str, Any]) -> None:
    """PpcpSession.send produces the same stream the vectors list."""
    sender, receiver = sync_pair()
    with sender, receiver:
        out = PpcpSession(sender, "home")
        for message in case["messages"]:
            out.send(bytes.fromhex(message))
        want = b"".join(bytes.fromhex(r) for r in case["records"])
        got = b""
        while len(got) < len(want):
            got += receiver.recv(TIMEOUT)
        assert got == want
