"""put and get before a channel opens, and what pstp.client.files offers (docs/protocol.md §18.11).

Transfers themselves run against a real `pstp serve` in tests/daemon/test_files.py and
tests/cli/test_files.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import pstp.client.files
import pstp.files.client
import pstp.files.engine
from pstp.files.client import TransferSummary, get, put


def test_pstp_client_files_offers_the_engine_s_own_objects() -> None:
    """The client and the daemon share one engine; pstp.client.files re-exports it."""
    assert pstp.client.files.put is pstp.files.client.put
    assert pstp.client.files.get is pstp.files.client.get
    assert pstp.client.files.TransferResult is pstp.files.engine.TransferResult
    assert pstp.client.files.Progress is pstp.files.engine.Progress
    offered = "CHUNK_SIZE Progress ProgressCallback TransferResult TransferSummary get put"
    assert sorted(pstp.client.files.__all__) == offered.split()


class NoSession:
    """A session that must not be used: these calls fail before opening a channel."""

    async def open_channel(self, *args: object) -> None:
        """Never reached."""
        raise AssertionError("a channel was opened")


@pytest.mark.parametrize(
    ("sources", "remote", "kw", "error"),
    [
        ([], "/x", {}, "nothing to send"),
        (["a"], "x", {}, "must be absolute"),
        (["a"], "/x", {"chunk_size": 3 << 16}, "is not a power of two"),
        (["/"], "/x", {}, "cannot send '/' as a whole"),
    ],
    ids=["no-sources", "relative", "chunk-size", "root"],
)
def test_put_refuses_bad_arguments_before_opening_a_channel(
    sources: list[str], remote: str, kw: dict[str, int], error: str
) -> None:
    """Usage errors are ValueErrors raised before anything is sent."""
    with pytest.raises(ValueError, match=error):
        asyncio.run(put(NoSession(), sources, remote, **kw))  # type: ignore[arg-type]


def test_put_refuses_what_it_cannot_send(tmp_path: Path) -> None:
    """A FIFO, a top whose name is not UTF-8, or a missing path cannot be sent."""
    os.mkfifo(tmp_path / "fifo")
    bad = tmp_path / os.fsdecode(b"\xff")
    bad.write_text("x")
    for path, error in ((tmp_path / "fifo", "not a regular file"), (bad, "not valid UTF-8")):
        with pytest.raises(ValueError, match=error):
            asyncio.run(put(NoSession(), [str(path)], "/x"))  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        asyncio.run(put(NoSession(), [str(tmp_path / "gone")], "/x"))  # type: ignore[arg-type]


def test_get_refuses_bad_arguments_before_opening_a_channel(tmp_path: Path) -> None:
    """No sources, or a relative remote path."""
    for remotes, error in (([], "nothing to fetch"), (["rel"], "must be absolute")):
        with pytest.raises(ValueError, match=error):
            asyncio.run(get(NoSession(), remotes, str(tmp_path)))  # type: ignore[arg-type]


def test_a_summary_is_ok_only_without_failures_and_serialises_to_json_shape() -> None:
    """TransferSummary.ok and as_dict() (the --json output of §18.11)."""
    summary = TransferSummary(files=2, bytes_total=5, seconds=1.5)
    assert summary.ok and summary.as_dict()["ok"] is True
    summary.failed.append(("a", "refused"))
    out = summary.as_dict()
    assert not summary.ok and out["failed"] == [{"path": "a", "error": "refused"}]
    assert out["files"] == 2 and out["seconds"] == 1.5
