"""File transfer end to end: a real `pstp serve`, real files, the put/get library API."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pstp.asyncio.client import connect
from pstp.asyncio.connection import Session
from pstp.client.files import Progress, TransferSummary, get, put
from pstp.daemon.app import Daemon
from pstp.daemon.audit import AuditLog, AuditRow, audit_path
from pstp.daemon.files import file_handler
from pstp.exceptions import ChannelError, TransferFailed
from pstp.files import frames
from pstp.files.disk import PartMeta, boot_id, meta_bytes, part_names
from pstp.files.frames import (
    CHUNK_SIZE,
    MAX_LEFT_OUT,
    Entry,
    FrameType,
    Hello,
    file_digest,
)
from pstp.settings import add_peer, create, load
from pstp.wire.messages import ChannelCode
from tests.cli.test_pair import env_for, free_port
from tests.helpers import TIMEOUT

KEY = bytes(range(7, 39))
FORCE = "use --force to replace it"
MiB = 1 << 20

CONFIG = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[peers.phone]
key = "{key}"
[peers.phone.policy]
files = [ {{ root = "{rw}", write = true }}, {{ root = "{rw}/ro", write = false }},
          {{ root = "{ro}", write = false }}, {{ root = "{small}", write = true }} ]
"""


@dataclass
class Served:
    """A `pstp serve` process for "home", trusting "phone" with four file roots."""

    tmp: Path
    port: int
    proc: subprocess.Popen[str] | None = None

    @property
    def config(self) -> Path:
        return self.tmp / "home.toml"

    @property
    def rw(self) -> Path:
        return self.tmp / "rw"

    @property
    def ro(self) -> Path:
        return self.tmp / "ro"

    @property
    def small(self) -> Path:
        return self.tmp / "small"

    @property
    def client_config(self) -> Path:
        return self.tmp / "phone.toml"

    @classmethod
    def make(cls, tmp: Path) -> Served:
        """Write both configurations and the roots (``rw/ro`` is a read-only root inside)."""
        served = cls(tmp, free_port())
        for d in (served.rw / "ro", served.ro, served.small):
            d.mkdir(parents=True)
        served.config.write_text(
            CONFIG.format(
                port=served.port, key=KEY.hex(), rw=served.rw, ro=served.ro, small=served.small
            )
        )
        served.config.chmod(0o600)
        create(served.client_config, "phone", listen="127.0.0.1:1")
        add_peer(served.client_config, "home", KEY, address=f"127.0.0.1:{served.port}")
        return served

    def start(self) -> None:
        """Start the daemon and wait until it serves."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pstp", "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env_for(self.config),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "serving 1 peer(s)" in line, self.proc.stderr.read() if self.proc.stderr else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon with ``sig`` (SIGKILL: no clean-up at all) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(TIMEOUT)
        self.proc = None

    def audit(self, decision: str | None = None) -> list[AuditRow]:
        """The daemon's ``file`` audit rows (only ``decision`` ones if given)."""
        with AuditLog(self.tmp / "audit.sqlite") as log:
            rows = log.list(kind="file")
        return [r for r in rows if decision is None or r.decision == decision]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One daemon for the module's tests."""
    s = Served.make(tmp_path_factory.mktemp("files"))
    s.start()
    yield s
    s.stop()


def sha256(path: Path) -> str:
    """The SHA-256 of a file's content."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``top``: kind, content hash (files), permission bits and mtime."""
    out: dict[str, tuple[Any, ...]] = {}
    for path in [top, *sorted(top.rglob("*"))]:
        st = path.lstat()
        rel = path.relative_to(top).as_posix()
        if stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        else:
            out[rel] = ("f", sha256(path), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def make_tree(top: Path, big: int = 50 * MiB) -> Path:
    """A tree with empty files and dirs, a large file, unicode names and varied modes."""
    (top / "日本語" / "深い").mkdir(parents=True)
    (top / "empty dir").mkdir()
    (top / "empty.txt").write_bytes(b"")
    (top / "résumé ✓.txt").write_text("bonjour\n")
    (top / "日本語" / "ファイル.bin").write_bytes(os.urandom(3 * CHUNK_SIZE + 17))
    (top / "日本語" / "深い" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (top / "big.bin").write_bytes(os.urandom(big))
    (top / "日本語" / "深い" / "run.sh").chmod(0o750)
    (top / "empty.txt").chmod(0o600)
    (top / "日本語" / "深い").chmod(0o711)
    for i, path in enumerate(sorted(top.rglob("*"), reverse=True)):
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_123_456_789 + i))
    return top


async def session(served: Served) -> Session:
    """A PSTP-HS session to the daemon."""
    return await connect("127.0.0.1", served.port, pair_key=KEY, device_id="home", own_id="phone")


def run_put(served: Served, local: list[Path], remote: Path | str, **kw: Any) -> TransferSummary:
    """``put`` over a fresh session."""

    async def go() -> TransferSummary:
        async with await session(served) as s:
            return await put(s, [str(p) for p in local], str(remote), **kw)

    return asyncio.run(go())


def run_get(served: Served, remote: list[Path | str], local: Path, **kw: Any) -> TransferSummary:
    """``get`` over a fresh session."""

    async def go() -> TransferSummary:
        async with await session(served) as s:
            return await get(s, [str(p) for p in remote], str(local), **kw)

    return asyncio.run(go())


def interrupt_after(nbytes: int) -> Callable[[Progress], None]:
    """A progress callback that breaks the transfer once ``nbytes`` went through."""

    def cb(p: Progress) -> None:
        if p.done_bytes >= nbytes:
            raise KeyboardInterrupt

    return cb


# -- round trips ------------------------------------------------------------------------


def test_tree_round_trips_with_identical_content_modes_and_mtimes(
    served: Served, tmp_path: Path
) -> None:
    """A tree (empty files and dirs, 50 MiB, unicode names, modes, mtimes) goes and comes back."""
    src = make_tree(tmp_path / "tree")
    up = run_put(served, [src], f"{served.rw}/up/")
    assert up.ok, up.failed
    assert (up.files, up.dirs, up.skipped) == (5, 4, 0)
    assert (
        up.bytes_sent
        == up.bytes_total
        == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    )
    assert snapshot(served.rw / "up" / "tree") == snapshot(src)
    assert not list((served.rw / "up").rglob("*.pstp-*"))  # no parts or sidecars left
    down = run_get(served, [served.rw / "up" / "tree"], tmp_path / "back")
    assert down.ok and down.files == 5 and down.bytes_sent == up.bytes_total
    assert snapshot(tmp_path / "back") == snapshot(src)


def test_single_file_is_written_as_the_target_name_and_into_directories(
    served: Served, tmp_path: Path
) -> None:
    """put FILE PATH writes PATH; put FILE DIR writes DIR/FILE; get works the same way."""
    src = tmp_path / "a.txt"
    src.write_text("alpha")
    assert run_put(served, [src], served.rw / "renamed.txt").ok
    assert (served.rw / "renamed.txt").read_text() == "alpha"
    (served.rw / "box").mkdir()
    assert run_put(served, [src], served.rw / "box").ok
    assert (served.rw / "box" / "a.txt").read_text() == "alpha"
    assert run_get(served, [served.rw / "renamed.txt"], tmp_path / "copy.txt").ok
    assert (tmp_path / "copy.txt").read_text() == "alpha"
    two = run_get(served, [served.rw / "renamed.txt", served.rw / "box"], tmp_path / "both")
    assert two.ok and (tmp_path / "both" / "box" / "a.txt").read_text() == "alpha"


def test_identical_files_are_skipped_and_different_ones_need_force(
    served: Served, tmp_path: Path
) -> None:
    """Same digests: skipped, nothing sent; different content: refused without --force."""
    src = tmp_path / "s"
    src.mkdir()
    (src / "one.bin").write_bytes(os.urandom(2 * MiB))
    (src / "two.txt").write_text("two")
    assert run_put(served, [src], f"{served.rw}/skip/").files == 2
    again = run_put(served, [src], f"{served.rw}/skip/")
    assert (again.files, again.skipped, again.bytes_sent, again.ok) == (0, 2, 0, True)
    (src / "two.txt").write_text("TWO")
    refused = run_put(served, [src], f"{served.rw}/skip/")
    assert refused.failed == [("s/two.txt", f"exists with different content ({FORCE})")]
    assert (served.rw / "skip" / "s" / "two.txt").read_text() == "two"
    forced = run_put(served, [src], f"{served.rw}/skip/", force=True)
    assert (forced.files, forced.skipped, forced.ok) == (1, 1, True)
    assert (served.rw / "skip" / "s" / "two.txt").read_text() == "TWO"
    (tmp_path / "s2").mkdir()
    back = run_get(served, [served.rw / "skip" / "s"], tmp_path / "s2")
    assert back.files == 2
    again = run_get(served, [served.rw / "skip" / "s"], tmp_path / "s2")
    assert (again.files, again.skipped, again.bytes_sent) == (0, 2, 0)


# -- resume -----------------------------------------------------------------------------


def test_interrupted_put_resumes_from_the_last_verified_chunk(
    served: Served, tmp_path: Path
) -> None:
    """A broken put leaves a verified .part; the same put then sends only the rest."""
    src = tmp_path / "r.bin"
    src.write_bytes(os.urandom(24 * MiB + 5))
    with pytest.raises(KeyboardInterrupt):
        run_put(served, [src], served.rw / "r.bin", progress=interrupt_after(8 * MiB))
    part, meta = (served.rw / n for n in part_names("r.bin"))
    assert part.exists() and meta.exists() and not (served.rw / "r.bin").exists()
    again = run_put(served, [src], served.rw / "r.bin")
    size = src.stat().st_size
    assert again.ok and again.files == 1
    assert again.bytes_resumed >= 2 * MiB and again.bytes_resumed % CHUNK_SIZE == 0
    assert again.bytes_sent == size - again.bytes_resumed < size - 2 * MiB
    assert sha256(served.rw / "r.bin") == sha256(src)
    assert not part.exists() and not meta.exists()


def test_changed_source_restarts_cleanly(served: Served, tmp_path: Path) -> None:
    """A source changed since the break (same size and mtime) is sent again from its change."""
    src = tmp_path / "c.bin"
    src.write_bytes(os.urandom(12 * MiB))
    st = src.stat()
    with pytest.raises(KeyboardInterrupt):
        run_put(served, [src], served.rw / "c.bin", progress=interrupt_after(6 * MiB))
    data = bytearray(src.read_bytes())
    data[5] ^= 0xFF  # the first chunk changes, size and mtime do not
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = run_put(served, [src], served.rw / "c.bin")
    assert again.ok and again.bytes_resumed == 0 and again.bytes_sent == len(data)
    assert sha256(served.rw / "c.bin") == sha256(src)
    # A changed mtime alone restarts too (the sidecar no longer matches).
    with pytest.raises(KeyboardInterrupt):
        run_put(served, [src], served.rw / "c2.bin", progress=interrupt_after(6 * MiB))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    again = run_put(served, [src], served.rw / "c2.bin")
    assert again.ok, again.failed
    assert again.bytes_resumed == 0 and sha256(served.rw / "c2.bin") == sha256(src)


def test_interrupted_get_resumes_locally(served: Served, tmp_path: Path) -> None:
    """get writes a local .part too, and the same get resumes it."""
    (served.rw / "g.bin").write_bytes(os.urandom(16 * MiB))
    dst = tmp_path / "g.bin"
    with pytest.raises(KeyboardInterrupt):
        run_get(served, [served.rw / "g.bin"], dst, progress=interrupt_after(6 * MiB))
    assert not dst.exists() and (tmp_path / part_names("g.bin")[0]).exists()
    again = run_get(served, [served.rw / "g.bin"], dst)
    assert again.ok and again.bytes_resumed >= 5 * MiB and again.bytes_sent < 16 * MiB
    assert sha256(dst) == sha256(served.rw / "g.bin")


# -- atomicity --------------------------------------------------------------------------


def test_no_file_appears_under_its_final_name_before_it_is_complete(
    served: Served, tmp_path: Path
) -> None:
    """Polled all along a slow put, the final name is absent until it holds everything."""
    src = tmp_path / "slow.bin"
    src.write_bytes(os.urandom(6 * MiB))
    final = served.rw / "slow.bin"
    part = served.rw / part_names("slow.bin")[0]
    seen: list[tuple[bool, int]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.append((False, final.stat().st_size))
            with contextlib.suppress(FileNotFoundError):
                seen.append((True, part.stat().st_size))
            time.sleep(0.002)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        summary = run_put(served, [src], final, limit=8 * MiB)
    finally:
        done.set()
        poller.join()
    assert summary.ok
    sizes = [size for is_part, size in seen if not is_part]
    parts = [size for is_part, size in seen if is_part]
    assert len(parts) > 20 and 0 < max(parts) <= 6 * MiB  # the .part grew in the meantime
    assert all(size == 6 * MiB for size in sizes)  # the final name only ever held it all
    assert sha256(final) == sha256(src)


def test_a_part_replaced_during_the_transfer_never_gets_the_final_name(
    served: Served, tmp_path: Path
) -> None:
    """If the .part name is swapped for another file mid-transfer, the commit notices (it
    checks the inode it wrote) and refuses: the stranger's file is not renamed into place."""
    src = tmp_path / "swap.bin"
    src.write_bytes(os.urandom(4 * MiB))
    final = served.rw / "swap.bin"
    part = served.rw / part_names("swap.bin")[0]
    swapped = threading.Event()

    def swap() -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not swapped.is_set():
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_size > 0:
                    part.unlink()
                    part.write_bytes(b"not what was sent")
                    swapped.set()
            time.sleep(0.002)

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        summary = run_put(served, [src], final, limit=8 * MiB)
    finally:
        swapped.set()
        swapper.join()
    assert not summary.ok
    assert [(p, "replaced" in e) for p, e in summary.failed] == [("swap.bin", True)]
    assert not final.exists()
    assert part.read_bytes() == b"not what was sent"
    part.unlink()


def test_a_part_locked_by_another_transfer_is_not_removed_as_stale(
    served: Served, tmp_path: Path
) -> None:
    """Planning removes a stale .part only if no transfer holds its lock."""
    src = tmp_path / "busy.bin"
    src.write_bytes(b"new content")
    part, meta = (served.rw / n for n in part_names("busy.bin"))
    part.write_bytes(b"someone else's bytes")  # no sidecar: looks stale
    with part.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        summary = run_put(served, [src], served.rw / "busy.bin")
        assert summary.failed == [("busy.bin", "another transfer is writing this file")]
        assert part.read_bytes() == b"someone else's bytes"
    summary = run_put(served, [src], served.rw / "busy.bin")  # lock released: stale now
    assert summary.ok and (served.rw / "busy.bin").read_bytes() == b"new content"
    assert not part.exists() and not meta.exists()


def test_a_stale_part_of_a_transfer_that_is_ending_is_waited_for(
    served: Served, tmp_path: Path
) -> None:
    """Run again right after an interrupt, the old receiver may still hold the part's
    lock for a moment: planning waits for it instead of failing the entry."""
    src = tmp_path / "ending.bin"
    src.write_bytes(b"fresh")
    part = served.rw / part_names("ending.bin")[0]
    part.write_bytes(b"old")  # no sidecar: stale once its lock is free
    held = part.open("rb")
    fcntl.flock(held, fcntl.LOCK_EX)
    threading.Timer(0.5, held.close).start()  # the ending transfer lets go
    summary = run_put(served, [src], served.rw / "ending.bin")
    assert summary.ok, summary.failed
    assert (served.rw / "ending.bin").read_bytes() == b"fresh" and not part.exists()


@pytest.mark.parametrize("which", [0, 1], ids=["part", "sidecar"])
def test_a_fifo_under_a_part_or_sidecar_name_does_not_block_the_receiver(
    served: Served, tmp_path: Path, which: int
) -> None:
    """A FIFO planted where the .part or its sidecar go is removed, never opened blocking."""
    src = tmp_path / f"fifo{which}.bin"
    src.write_bytes(b"x" * 1000)
    planted = served.rw / part_names(src.name)[which]
    os.mkfifo(planted)
    summary = run_put(served, [src], served.rw / src.name)
    assert summary.ok, summary.failed
    assert (served.rw / src.name).read_bytes() == src.read_bytes()
    assert not planted.exists()


# -- confinement ------------------------------------------------------------------------


def test_dotdot_absolute_and_outside_paths_are_refused_and_audited(
    served: Served, tmp_path: Path
) -> None:
    """`..`, paths outside the roots and relative paths never reach the disk; refusals audited."""
    src = tmp_path / "x.txt"
    src.write_text("x")
    before = len(served.audit("deny"))
    for remote in (f"{served.rw}/../escape.txt", "/etc/pstp-test.txt", f"{served.ro}/x.txt"):
        with pytest.raises(ChannelError) as info:
            run_put(served, [src], remote)
        assert info.value.code == ChannelCode.REFUSED
    with pytest.raises(ChannelError):
        run_get(served, ["/etc/passwd"], tmp_path / "passwd")
    with pytest.raises(ValueError, match="absolute"):
        run_put(served, [src], "relative/x.txt")
    assert not (served.tmp / "escape.txt").exists() and not Path("/etc/pstp-test.txt").exists()
    denied = served.audit("deny")[before:]
    assert [r.args["path"] for r in denied] == [
        f"{served.rw}/../escape.txt",
        "/etc/pstp-test.txt",
        f"{served.ro}/x.txt",
        "/etc/passwd",
    ]


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt", "a//b"])
def test_manifest_paths_with_dotdot_or_absolute_are_refused_and_audited(
    served: Served, bad: str
) -> None:
    """A hand-made manifest naming `..` or an absolute path is refused (ERROR) and audited."""
    before = len(served.audit("deny"))

    async def go() -> bytes:
        async with await session(served) as s:
            params: dict[str, Any] = {"op": "put", "path": str(served.rw), "into": True}
            ch = await s.open_channel("file", params)
            enc = msgspec.msgpack.encode
            out = b""
            for ftype, msg in (
                (FrameType.HELLO, Hello(1, CHUNK_SIZE)),
                (FrameType.ENTRIES, [Entry("a", "d"), Entry(bad, "f", 4)]),
                (FrameType.ENTRIES_END, frames.EntriesEnd(2, 4)),
            ):
                payload = enc(msg)
                out += bytes([ftype]) + len(payload).to_bytes(4, "big") + payload
            await ch.write(out)
            reply = await ch.read_all()
            assert await ch.wait_closed() == 1
            return reply

    reply = asyncio.run(go())
    assert reply[0] == FrameType.ERROR and b"protocol error" in reply
    assert not (served.tmp / "evil.txt").exists() and not Path("/abs/evil.txt").exists()
    row = served.audit("deny")[before:][-1]
    assert "protocol error" in (row.detail or "") and "invalid entry path" in (row.detail or "")


def test_symlink_escapes_are_refused_and_audited(served: Served, tmp_path: Path) -> None:
    """Symlinks out of the root are never followed, for put, get, or inside a tree."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (served.rw / "link_out").symlink_to(outside)
    (served.rw / "abs_out").symlink_to("/etc")
    (served.rw / "tree").mkdir()
    (served.rw / "tree" / "ok.txt").write_text("ok")
    (served.rw / "tree" / "out").symlink_to(outside)
    (served.rw / "inside").symlink_to("tree")  # stays in the root: allowed
    src = tmp_path / "x.txt"
    src.write_text("x")
    before = len(served.audit("deny"))
    for remote in (served.rw / "link_out" / "x.txt", served.rw / "link_out"):
        with pytest.raises(TransferFailed, match="symlink leads outside the root"):
            run_put(served, [src], remote)
    with pytest.raises(TransferFailed, match="symlink leads outside the root"):
        run_get(served, [served.rw / "link_out" / "secret.txt"], tmp_path / "got")
    with pytest.raises(TransferFailed, match="symlink leads outside the root"):
        run_get(served, [served.rw / "abs_out" / "passwd"], tmp_path / "got")
    assert not (outside / "x.txt").exists() and not (tmp_path / "got").exists()
    # A tree holding a symlink: the link is not followed (nothing from outside arrives),
    # and the client is told what was left out.
    tree = run_get(served, [served.rw / "tree"], tmp_path / "t")
    assert tree.failed == [("tree/out", "left out: symlink (not followed)")]
    assert sorted(p.name for p in (tmp_path / "t").rglob("*")) == ["ok.txt"]
    # A put whose tree meets an existing symlink below the target: that part is refused.
    up = tmp_path / "tree"
    (up / "out").mkdir(parents=True)
    (up / "out" / "planted.txt").write_text("planted")
    (up / "fine.txt").write_text("fine")
    result = run_put(served, [up], served.rw)
    assert sorted(p for p, _ in result.failed) == ["tree/out", "tree/out/planted.txt"]
    assert not (outside / "planted.txt").exists() and (served.rw / "tree" / "fine.txt").exists()
    # In-root symlinks work.
    assert run_get(served, [served.rw / "inside" / "ok.txt"], tmp_path / "ok.txt").ok
    details = [r.detail or "" for r in served.audit("deny")[before:]]
    assert sum("symlink leads outside the root" in d for d in details) == 4


def test_writes_under_a_read_only_root_are_refused_entry_by_entry(
    served: Served, tmp_path: Path
) -> None:
    """A read-only root nested in a writable one stays read-only inside a put of a tree."""
    tree = tmp_path / "ro"
    tree.mkdir()
    (tree / "f.txt").write_text("f")
    before = len(served.audit("deny"))
    result = run_put(served, [tree], served.rw)  # lands on rw/ro, a read-only root
    assert not result.ok and {p for p, _ in result.failed} == {"ro", "ro/f.txt"}
    assert not (served.rw / "ro" / "f.txt").exists()
    denied = served.audit("deny")[before:]
    assert [r.args["path"] for r in denied] == [f"{served.rw}/ro"]  # its contents follow it


def test_a_symlink_into_a_read_only_root_is_judged_by_where_it_leads(
    served: Served, tmp_path: Path
) -> None:
    """Entries reached through an in-root symlink are checked at their real path; a flood
    of refusals is audited as the first 20 and a count."""
    (served.rw / "to-ro").symlink_to("ro")
    files = []
    for i in range(30):
        files.append(tmp_path / f"f{i:02}.txt")
        files[-1].write_text(str(i))
    before = len(served.audit("deny"))
    result = run_put(served, files, f"{served.rw}/to-ro/")
    assert result.files == 0 and len(result.failed) == 30
    assert all("read-only root" in error for _, error in result.failed)
    assert not list((served.rw / "ro").iterdir())
    denied = served.audit("deny")[before:]
    assert len(denied) == 21 and denied[0].args["path"] == f"{served.rw}/ro/f00.txt"
    assert denied[-1].detail == "10 more refusals not recorded"


def test_put_into_a_new_directory_under_a_read_only_root_creates_nothing(
    served: Served, tmp_path: Path
) -> None:
    """The directory `into` would create is checked like any write: through a symlink into
    a nested read-only root it is refused (audited) and never created."""
    (served.rw / "to-ro2").symlink_to("ro")  # the fixture is shared by the module
    src = tmp_path / "a.txt"
    src.write_text("a")
    before = len(served.audit("deny"))
    with pytest.raises(TransferFailed, match="read-only root"):
        run_put(served, [src], f"{served.rw}/to-ro2/new/")
    assert not (served.rw / "ro" / "new").exists()
    denied = served.audit("deny")[before:]
    assert [r.args["path"] for r in denied] == [f"{served.rw}/ro/new"]


def test_left_out_entries_are_listed_up_to_a_bound_then_counted(
    served: Served, tmp_path: Path
) -> None:
    """A tree of many symlinks: DONE names the first MAX_LEFT_OUT and counts the rest."""
    tree = served.rw / "links"
    tree.mkdir()
    for i in range(MAX_LEFT_OUT + 5):
        (tree / f"l{i:05}").symlink_to("nowhere")
    result = run_get(served, [tree], tmp_path / "links")
    assert len(result.failed) == MAX_LEFT_OUT + 1
    assert result.failed[0] == ("links/l00000", "left out: symlink (not followed)")
    assert result.failed[-1] == ("...", "5 more left out")
    assert list((tmp_path / "links").iterdir()) == []


def test_device_files_are_neither_read_nor_replaced(served: Served, tmp_path: Path) -> None:
    """A character device under a root: get refuses it, put --force will not replace it."""
    dev = served.rw / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(TransferFailed, match="not a regular file"):
        run_get(served, [dev], tmp_path / "null")
    src = tmp_path / "null"
    src.write_text("x")
    result = run_put(served, [src], served.rw, force=True)
    assert result.failed == [("null", "exists and is not a regular file")]
    assert stat.S_ISCHR(dev.lstat().st_mode)


# -- full disk --------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(served: Served) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted on the "small" root."""
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(served.small)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield served.small
    finally:
        subprocess.run(["umount", "-l", str(served.small)], check=False)


def test_full_disk_fails_clearly_keeps_the_part_and_never_corrupts_the_target(
    served: Served, tmp_path: Path, tiny_disk: Path
) -> None:
    """Too big: refused up front; the disk filling mid-way: clear error, .part kept, resumable."""
    target = tiny_disk / "t.bin"
    target.write_bytes(b"old content")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * MiB))
    with pytest.raises(TransferFailed, match="not enough space on the target"):
        run_put(served, [big], target, force=True)
    assert target.read_bytes() == b"old content"
    src = tmp_path / "t.bin"
    src.write_bytes(os.urandom(3 * MiB // 2))
    part = tiny_disk / part_names("t.bin")[0]
    filler = tiny_disk / "filler"
    stop = threading.Event()

    def fill_when_started() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_size >= 256 * 1024:
                    with contextlib.suppress(OSError):
                        filler.write_bytes(b"\0" * MiB)
                    return
            time.sleep(0.002)

    filling = threading.Thread(target=fill_when_started)
    filling.start()
    try:
        with pytest.raises(TransferFailed, match="no space left on the target device") as info:
            run_put(served, [src], target, force=True, limit=2 * MiB, chunk_size=64 * 1024)
    finally:
        stop.set()
        filling.join()
    assert "partial file is kept" in str(info.value)
    assert part.exists() and target.read_bytes() == b"old content"
    filler.unlink()
    again = run_put(served, [src], target, force=True, chunk_size=64 * 1024)
    assert again.ok and again.bytes_resumed > 0 and again.bytes_sent < src.stat().st_size
    assert sha256(target) == sha256(src) and not part.exists()


# -- a hand-made sender: tampering and truncation ---------------------------------------

SMALL_CHUNK = 1 << 16


def frame(ftype: int, payload: bytes | object) -> bytes:
    """One frame; non-bytes payloads are MessagePack-encoded."""
    if not isinstance(payload, bytes):
        payload = msgspec.msgpack.encode(payload)
    return bytes([ftype]) + len(payload).to_bytes(4, "big") + payload


def chunk(data: bytes, digest: bytes | None = None) -> bytes:
    """A CHUNK frame: data and its SHA-256 (or the given digest)."""
    return frame(FrameType.CHUNK, data + (digest or hashlib.sha256(data).digest()))


def raw_put(served: Served, name: str, size: int, body: bytes) -> tuple[bytes, int | None]:
    """Put one file named ``name`` by hand: the manifest, then ``body`` as is."""

    async def go() -> tuple[bytes, int | None]:
        async with await session(served) as s:
            params: dict[str, Any] = {"op": "put", "path": f"{served.rw}/raw", "into": True}
            ch = await s.open_channel("file", params)
            head = frame(FrameType.HELLO, Hello(1, SMALL_CHUNK))
            head += frame(FrameType.ENTRIES, [Entry(name, "f", size, 0o644, 1)])
            head += frame(FrameType.ENTRIES_END, frames.EntriesEnd(1, size))
            await ch.write(head + body)
            await ch.write_eof()
            reply = await ch.read_all()
            return reply, await ch.wait_closed()

    return asyncio.run(go())


A, B = os.urandom(SMALL_CHUNK), os.urandom(1000)
START = frame(FrameType.FILE, frames.FileStart(0, 0))
GOOD_END = frame(
    FrameType.FILE_END,
    frames.FileEnd(
        0,
        file_digest(
            len(A) + len(B), SMALL_CHUNK, [hashlib.sha256(A).digest(), hashlib.sha256(B).digest()]
        ),
    ),
)
DONE = frame(FrameType.DONE, frames.Done())


BAD_END = frame(FrameType.FILE_END, frames.FileEnd(0, b"x" * 32))
SHORT_END = frame(FrameType.FILE_END, [0, b"x" * 31])
TAMPERED = {
    "corrupt chunk": (START + chunk(A) + chunk(B, b"\0" * 32) + GOOD_END, "chunk 1 failed", True),
    "short digest": (START + chunk(A) + chunk(B) + SHORT_END, "malformed FILE_END", True),
    "wrong digest": (START + chunk(A) + chunk(B) + BAD_END, "file digest does not match", True),
    "reordered": (START + chunk(B) + chunk(A), "CHUNK of 1000 bytes at 0", True),
    "last chunk missing": (START + chunk(A) + DONE, "unexpected DONE inside a file", True),
    "truncated": (START + chunk(A), "ended inside a file", True),
    "foreign index": (frame(FrameType.FILE, frames.FileStart(3, 0)), "entry 3 of 1", False),
    "unoffered offset": (
        frame(FrameType.FILE, frames.FileStart(0, SMALL_CHUNK)),
        "was not offered",
        False,
    ),
    "file never sent": (DONE, "DONE without 'x.bin'", False),
    "garbage": (b"\x66" + os.urandom(64), "unknown file frame type 0x66", False),
}


def test_a_put_cut_after_a_whole_chunk_resumes_after_that_chunk(served: Served) -> None:
    """The device keeps the last chunk that arrived whole before the stream ended: the next
    put may resume after it (docs/protocol.md §18.8), not one chunk earlier."""
    target = served.rw / "raw" / "x.bin"
    for leftover in (served.rw / "raw").glob("*"):
        leftover.unlink()
    reply, status = raw_put(served, "x.bin", len(A) + len(B), START + chunk(A))
    assert status == 1 and b"ended inside a file" in reply
    rest = frame(FrameType.FILE, frames.FileStart(0, SMALL_CHUNK)) + chunk(B) + GOOD_END + DONE
    reply, status = raw_put(served, "x.bin", len(A) + len(B), rest)
    assert status == 0, reply[-200:]
    assert target.read_bytes() == A + B


@pytest.mark.parametrize(("body", "error", "part_kept"), TAMPERED.values(), ids=TAMPERED.keys())
def test_tampered_or_truncated_streams_are_refused_and_nothing_is_committed(
    served: Served, body: bytes, error: str, part_kept: bool
) -> None:
    """Bad digests, reordered, foreign, missing or truncated data: ERROR, no final file."""
    target = served.rw / "raw" / "x.bin"
    for leftover in (served.rw / "raw").glob("*"):
        leftover.unlink()
    reply, status = raw_put(served, "x.bin", len(A) + len(B), body)
    assert status == 1 and error.encode() in reply, reply[-200:]
    assert reply[-(len(reply) - reply.rindex(bytes([FrameType.ERROR]))) :][0] == FrameType.ERROR
    assert not target.exists()
    assert (target.parent / part_names("x.bin")[0]).exists() == part_kept
    # The daemon keeps serving: an honest put of the same file now completes.
    honest = START + chunk(A) + chunk(B) + GOOD_END + DONE
    _, status = raw_put(served, "x.bin", len(A) + len(B), honest)
    assert status == 0 and target.read_bytes() == A + B


# -- the manifest is bounded and checked as it arrives (issue 11, item 6) -------------------


def rss(pid: int) -> int:
    """A process's resident set size, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


def open_put_stream(served: Served, frames_out: Iterator[bytes], wait: float = 30.0) -> bytes:
    """Open a put into the writable root and write ``frames_out`` without ever ending the
    manifest; what the device answered (up to its CLOSE) within ``wait`` seconds."""

    async def go() -> bytes:
        async with await session(served) as s:
            params: dict[str, Any] = {"op": "put", "path": str(served.rw), "into": True}
            ch = await s.open_channel("file", params)

            async def write_all() -> None:
                with contextlib.suppress(ChannelError):
                    for out in frames_out:
                        await ch.write(out)

            writer = asyncio.create_task(write_all())
            try:
                return await asyncio.wait_for(ch.read_all(), wait)
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    return asyncio.run(go())


def test_a_mib_long_entry_path_is_refused_as_it_arrives_and_audited(served: Served) -> None:
    """The attack of issue 11 item 6: 1 MiB paths in a manifest that never ends.  The device
    answers ERROR after the first one (it used to hold them all until ENTRIES_END)."""
    assert served.proc is not None
    before, audited = rss(served.proc.pid), len(served.audit("deny"))
    long = frame(FrameType.ENTRIES, [Entry("x" * MiB, "f")])

    def flood() -> Iterator[bytes]:
        yield frame(FrameType.HELLO, Hello(1, CHUNK_SIZE))
        for _ in range(300):  # 300 MiB if nobody stops it
            yield long

    reply = open_put_stream(served, flood(), wait=20.0)
    assert reply[0] == FrameType.ERROR and b"entry path longer than 4096 bytes" in reply
    assert rss(served.proc.pid) - before < 64 * MiB
    row = served.audit("deny")[audited:][-1]
    assert "protocol error: entry path longer than 4096 bytes" in (row.detail or "")


def test_a_manifest_past_64_mib_is_refused_before_it_ends(served: Served) -> None:
    """Valid entries that never end: ERROR once the ENTRIES payloads pass 64 MiB, with the
    daemon's memory bounded meanwhile."""
    assert served.proc is not None
    before = rss(served.proc.pid)
    deep = "/".join(["t", *(f"{i:02}" + "d" * 248 for i in range(15))])
    dirs = [Entry("/".join(deep.split("/")[: k + 1]), "d") for k in range(16)]

    def flood() -> Iterator[bytes]:
        yield frame(FrameType.HELLO, Hello(1, CHUNK_SIZE))
        yield frame(FrameType.ENTRIES, dirs)
        for k in range(400):  # 400 frames of ~240 KiB: about 94 MiB if nobody stops it
            batch = [Entry(f"{deep}/{k:04}-{i:02}" + "f" * 240, "f", 1) for i in range(60)]
            yield frame(FrameType.ENTRIES, batch)

    reply = open_put_stream(served, flood(), wait=60.0)
    assert reply[0] == FrameType.ERROR, reply[:200]
    assert b"manifest larger than 67108864 bytes" in reply
    assert rss(served.proc.pid) - before < 200 * MiB
    assert not (served.rw / "t").exists()


# -- a hard link planted as the part (issue 11, item 13) ------------------------------------


def test_a_hard_link_planted_as_the_part_never_overwrites_a_file_outside_the_root(
    served: Served, tmp_path: Path
) -> None:
    """A local user plants `.x.pstp-part` in a writable root as a hard link to a file outside
    it, with a sidecar that makes it look resumable.  The device refuses the entry
    (st_nlink > 1) and the outside file keeps its content; once the link is gone the same
    put goes through."""
    src = tmp_path / "linked.bin"
    src.write_bytes(os.urandom(3 * MiB + 5))
    outside = served.tmp / "outside-the-root.txt"
    outside.write_bytes(b"must never change")
    part, meta = (served.rw / n for n in part_names(src.name))
    head = PartMeta(src.stat().st_size, src.stat().st_mtime_ns, CHUNK_SIZE, boot_id())
    meta.write_bytes(meta_bytes(head, []))
    os.link(outside, part)
    summary = run_put(served, [src], served.rw / src.name)
    assert not summary.ok
    ((path, error),) = summary.failed
    assert path == src.name and "has 2 links" in error, error
    assert outside.read_bytes() == b"must never change" and outside.stat().st_nlink == 2
    assert not (served.rw / src.name).exists()
    part.unlink()
    again = run_put(served, [src], served.rw / src.name)
    assert again.ok, again.failed
    assert sha256(served.rw / src.name) == sha256(src) and not meta.exists()


# -- the audit log's reserve on a device (issue 11, item 7, the put side) --------------------


class ReservingDaemon(Daemon):
    """The daemon, its ``file`` handler given the audit log's reserve (as app.py will pass
    it: ``file_handler(..., reserve=(audit path, margin))``)."""

    margin = 4 * MiB

    def handlers(self) -> dict[str, Any]:
        handlers = super().handlers()
        reserve = (audit_path(self.settings), self.margin)
        handlers["file"] = self._audited(
            "file", file_handler(lambda: self.policy, self._record, reserve=reserve)
        )
        return handlers


def test_puts_that_would_fill_the_audit_log_s_disk_are_refused_and_the_log_keeps_working(
    tmp_path: Path,
) -> None:
    """A device whose audit.sqlite shares an 8 MiB file system with a writable root keeps
    4 MiB for the log: a put that would leave less is refused with the reason, one that
    fits goes through, and the log keeps recording (the refusal's own row included)."""
    mnt = tmp_path / "dev"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        share = mnt / "share"
        share.mkdir()
        port = free_port()
        cfg = mnt / "home.toml"
        cfg.write_text(
            f'[device]\nid = "home"\nlisten = ["127.0.0.1:{port}"]\ndiscovery = false\n\n'
            f'[peers.phone]\nkey = "{KEY.hex()}"\n[peers.phone.policy]\n'
            f'files = [ {{ root = "{share}", write = true }} ]\n'
        )
        cfg.chmod(0o600)
        big, small = tmp_path / "big.bin", tmp_path / "small.bin"
        big.write_bytes(os.urandom(5 * MiB))
        small.write_bytes(os.urandom(MiB))

        async def go() -> tuple[BaseException | TransferSummary, TransferSummary]:
            daemon = ReservingDaemon(load(cfg), control=False)
            await daemon.start()
            try:

                async def one(local: Path) -> TransferSummary:
                    async with await connect(
                        "127.0.0.1", port, pair_key=KEY, device_id="home", own_id="phone"
                    ) as s:
                        return await put(s, [str(local)], f"{share}/")

                refused: BaseException | TransferSummary
                try:
                    refused = await one(big)
                except TransferFailed as exc:
                    refused = exc
                return refused, await one(small)
            finally:
                await daemon.close()

        refused, ok = asyncio.run(go())
        assert isinstance(refused, TransferFailed), refused
        assert f"refused: would leave less than 4 MiB free for the audit log on {mnt}" in str(
            refused
        )
        assert not (share / "big.bin").exists() and ok.ok and (share / "small.bin").exists()
        with AuditLog(mnt / "audit.sqlite") as log:
            rows = log.list(kind="file")
        decisions = [r.decision for r in rows]
        assert "fail" in decisions and decisions[-1] == "ok", decisions
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
