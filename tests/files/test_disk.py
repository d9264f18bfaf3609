"""The disk side: part names, sidecars, locks, directories, tree walks (docs/protocol.md §18.8)."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pstp.files.disk import (
    Dirs,
    PartMeta,
    RefusedError,
    Tree,
    boot_id,
    hash_chunks,
    human,
    is_utf8,
    lock,
    meta_bytes,
    part_names,
    read_meta,
    remove_stale,
    store_chunk,
)
from pstp.files.frames import Entry

C = 1 << 16
BAD_NAME = os.fsdecode(b"\xff.bin")  # not valid UTF-8


@pytest.fixture
def base(tmp_path: Path) -> Iterator[int]:
    """A descriptor of the test's directory."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_part_names_stay_within_name_max_and_are_hidden() -> None:
    """Parts sit beside the target under a hidden name, hashed when the name is long."""
    assert part_names("a.txt") == (".a.txt.pstp-part", ".a.txt.pstp-meta")
    long_part, long_meta = part_names("é" * 127)
    digest = hashlib.sha256(("é" * 127).encode()).hexdigest()[:32]
    assert (long_part, long_meta) == (f".pstp-{digest}.pstp-part", f".pstp-{digest}.pstp-meta")
    assert len(long_part.encode()) <= 255


def test_a_sidecar_round_trips_and_a_damaged_one_reads_as_none(tmp_path: Path, base: int) -> None:
    """meta_bytes then read_meta gives the header and the whole digests back; a torn digest
    is dropped; a bad magic, a bad header, a directory or a FIFO read as no sidecar."""
    meta = PartMeta(3 * C, 17, C, boot_id())
    digests = [bytes([i]) * 32 for i in range(3)]
    (tmp_path / "m").write_bytes(meta_bytes(meta, digests) + b"\x01" * 31)
    assert read_meta(base, "m") == (meta, digests)
    (tmp_path / "bad").write_bytes(b"NOTMETA!" + meta_bytes(meta, digests)[8:])
    (tmp_path / "hdr").write_bytes(b"PSTPMETA\x00\x02\x91\x01")
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    for name in ("bad", "hdr", "dir", "fifo", "missing"):
        assert read_meta(base, name) is None, name


def test_chunks_are_stored_and_hashed_back(tmp_path: Path) -> None:
    """store_chunk writes the pieces at their offset and returns their digest; hash_chunks
    hashes whole chunks only."""
    path = tmp_path / "p"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        a, b = os.urandom(C), os.urandom(100)
        assert store_chunk(fd, [memoryview(a[:10]), memoryview(a[10:])], 0) == (
            hashlib.sha256(a).digest()
        )
        store_chunk(fd, [memoryview(b)], C)
        assert path.read_bytes() == a + b
        assert hash_chunks(fd, C + 100, C, 5) == [
            hashlib.sha256(a).digest(),
            hashlib.sha256(b).digest(),
        ]
        assert hash_chunks(fd, 3 * C, C, 3) == [hashlib.sha256(a).digest()]  # shorter
    finally:
        os.close(fd)


def test_a_stale_part_is_removed_unless_another_transfer_holds_its_lock(
    tmp_path: Path, base: int
) -> None:
    """remove_stale takes the lock first: a held lock refuses (it is not stale)."""
    part, meta = part_names("f")
    (tmp_path / part).write_bytes(b"x")
    (tmp_path / meta).write_bytes(b"y")
    holder = os.open(tmp_path / part, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(RefusedError, match="another transfer is writing this file"):
            remove_stale(base, part, meta, wait=0)
        assert (tmp_path / part).exists()
    finally:
        os.close(holder)
    remove_stale(base, part, meta, wait=0)
    assert not (tmp_path / part).exists() and not (tmp_path / meta).exists()
    (tmp_path / meta).write_bytes(b"y")  # a sidecar without its part goes too
    remove_stale(base, part, meta, wait=0)
    assert not (tmp_path / meta).exists()
    (tmp_path / part).symlink_to("elsewhere")  # not ours: removed, never followed
    remove_stale(base, part, meta, wait=0)
    assert not (tmp_path / part).is_symlink()


def test_lock_waits_for_a_holder_then_gives_up(tmp_path: Path) -> None:
    """lock() takes a free lock at once and refuses one held past its wait."""
    (tmp_path / "p").write_bytes(b"")
    mine = os.open(tmp_path / "p", os.O_RDONLY)
    theirs = os.open(tmp_path / "p", os.O_RDONLY)
    try:
        asyncio.run(lock(mine, wait=0))
        with pytest.raises(RefusedError, match="another transfer"):
            asyncio.run(lock(theirs, wait=0))
    finally:
        os.close(mine)
        os.close(theirs)


def test_dirs_are_opened_without_following_symlinks(tmp_path: Path, base: int) -> None:
    """Dirs creates what it is asked to, refuses a symlink, a file and a missing directory."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "file").write_text("f")
    dirs = Dirs(base)
    try:
        assert dirs.get(()) == base
        dirs.get(("new",), create_mode=0o700)
        assert (tmp_path / "new").is_dir()
        assert dirs.get(("real",)) == dirs.get(("real",))  # cached
        for parts, error in (
            (("link",), "link: a symlink or not a directory (not followed)"),
            (("file",), "file: a symlink or not a directory (not followed)"),
            (("gone", "x"), "gone: no such directory"),
        ):
            with pytest.raises(RefusedError, match=re.escape(error)):
                dirs.get(parts)
    finally:
        dirs.close()


def test_a_tree_walk_lists_parents_first_and_reports_what_it_leaves_out(tmp_path: Path) -> None:
    """Directories before their contents, names in order; symlinks, FIFOs and names that
    are not UTF-8 are left out with a reason."""
    top = tmp_path / "t"
    (top / "b").mkdir(parents=True)
    (top / "b" / "z.txt").write_text("z")
    (top / "a.txt").write_text("a")
    (top / "ln").symlink_to("a.txt")
    os.mkfifo(top / "fifo")
    (top / BAD_NAME).write_text("?")
    tree = Tree(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY), "t", "top")
    try:
        listed: list[tuple[Entry, Tree, tuple[str, ...]]] = []
        skipped: list[tuple[str, str]] = []
        tree.walk(listed, skipped)
        assert [(e.path, e.kind) for e, _, _ in listed] == [
            ("top", "d"),
            ("top/a.txt", "f"),
            ("top/b", "d"),
            ("top/b/z.txt", "f"),
        ]
        assert sorted(skipped) == sorted(
            [
                ("top/fifo", "not a regular file or directory"),
                ("top/ln", "symlink (not followed)"),
                ("top/" + BAD_NAME, "name is not valid UTF-8"),
            ]
        )
        fd = tree.open_file(("t", "a.txt"))
        os.close(fd)
        with pytest.raises(RefusedError, match="not a regular file"):
            tree.open_file(("t", "fifo"))
    finally:
        tree.close()


def test_small_helpers() -> None:
    """human() sizes, is_utf8() on surrogate-escaped names."""
    assert [human(n) for n in (5, 1536, 3 << 20, 5 << 40)] == [
        "5 B",
        "1.5 KiB",
        "3.0 MiB",
        "5120.0 GiB",
    ]
    assert is_utf8("ü") and not is_utf8(os.fsdecode(b"\xff"))


# -- a part is ours only if it is a regular file with one link (issue 11, item 13) ----------


def test_open_part_refuses_a_hard_link_a_symlink_and_a_non_file(tmp_path: Path, base: int) -> None:
    """open_part creates or opens a lone regular file; a hard link, a symlink or a FIFO
    under the part's name is refused and nothing is written to what it leads to."""
    from pstp.files.disk import check_part, create_meta, open_part

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.link(victim, tmp_path / "linked.part")
    with pytest.raises(RefusedError, match="has 2 links"):
        open_part(base, "linked.part")
    os.symlink(victim, tmp_path / "sym.part")
    with pytest.raises(RefusedError, match="symlink"):
        open_part(base, "sym.part")
    os.mkfifo(tmp_path / "fifo.part")
    with pytest.raises(RefusedError, match="not a regular file"):
        open_part(base, "fifo.part")
    assert victim.read_bytes() == b"precious" and victim.stat().st_nlink == 2
    fd = open_part(base, "new.part")
    try:
        check_part(fd, "new.part")
        os.link(tmp_path / "new.part", tmp_path / "later")  # linked once opened
        with pytest.raises(RefusedError, match="has 2 links"):
            check_part(fd, "new.part")
    finally:
        os.close(fd)
    # A sidecar is created afresh: a hard link under its name is unlinked, not truncated.
    os.link(victim, tmp_path / "x.meta")
    meta = create_meta(base, "x.meta")
    try:
        os.write(meta, b"sidecar")
    finally:
        os.close(meta)
    assert victim.read_bytes() == b"precious" and (tmp_path / "x.meta").read_bytes() == b"sidecar"
