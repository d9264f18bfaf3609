"""File transfer: the ``file`` channel (put and get), streamed, resumable, verified, atomic.

Channel ``file``
================

The client opens a ``file`` channel with these OPEN params:

========== ============== ===================================================
Param      Type           Meaning
========== ============== ===================================================
``op``     str            ``"put"`` (client sends) or ``"get"`` (daemon sends)
``path``   str            absolute path on the daemon: the target of a put,
                          the source of a get
``force``  bool           put: replace files that exist (default false)
``into``   bool           put: ``path`` is a directory to put the sources
                          into (several sources, or a trailing ``/``)
``reason`` str | nil      why (policy, audit)
========== ============== ===================================================

The policy decides the OPEN as a ``FileRequest(path, write=op == "put")``
(:mod:`pstp.daemon.policy`: lexical checks, the most specific root wins).
Then one side is the **sender** (the client for put, the daemon for get)
and the other the **receiver**; the protocol below is the same both ways.

Frames
------

Both directions of the channel carry frames back to back (a frame may span
CHANNEL_DATA messages and one message may hold several)::

    type u8 | length u32 (big-endian) | payload (length bytes)

Every payload is a MessagePack array (a ``msgspec`` struct encoded
``array_like``, fields in the order listed) except CHUNK's.  Control
payloads are at most 4 MiB (:data:`MAX_CONTROL`); a receiver checks type and
length from the 5-byte header before buffering anything.

Sender → receiver:

===== ============ ===========================================================
Type  Name         Payload
===== ============ ===========================================================
0x01  HELLO        ``[version=1, chunk_size]``: chunk_size a power of two,
                   64 KiB .. 4 MiB (1 MiB by default)
0x02  ENTRIES      ``[[path, kind, size, mode, mtime_ns], ...]``: the next
                   entries of the manifest (indexes count on from 0)
0x03  ENTRIES_END  ``[count, total]``: the manifest is complete (``count``
                   entries, ``total`` bytes of files)
0x04  FILE         ``[index, offset]``: the data of file ``index`` follows,
                   starting at ``offset``
0x05  CHUNK        raw bytes: ``data || SHA-256(data)``; ``length`` counts
                   both, so data is ``length - 32`` bytes
0x06  FILE_END     ``[index, digest]``: the file digest (below)
0x07  FILE_ABORT   ``[index, error]``: the sender gives up on file ``index``
                   (inside it, or between files: it will not be sent)
0x08  DONE         ``[]``: no more files
===== ============ ===========================================================

Receiver → sender:

===== ============ ===========================================================
Type  Name         Payload
===== ============ ===========================================================
0x11  PLAN         ``[[action, offset, digests, have, replace, error], ...]``:
                   one offer per manifest entry, in order
0x12  PLAN_END     ``[need]``: all offers sent; ``need`` bytes will be written
0x13  FILE_OK      ``[index]``: file ``index`` is complete under its final name
0x14  FILE_FAILED  ``[index, error]``: file ``index`` could not be committed
0x15  SUMMARY      ``[files, failed, bytes]``: the receiver is done
0x1F  ERROR        ``[error]``: fatal; the channel closes after it
===== ============ ===========================================================

ERROR may also go from the sender to the receiver, and either side may send
it at any point (for example in place of PLAN or HELLO).  Error texts are
for people and at most 1000 characters.

Manifest entries
----------------

``path`` is relative and ``/``-separated; its first component is the name
of the source (a put into an existing directory lands under it).  No
component may be empty, ``.`` or ``..``, or longer than 255 bytes; the
whole path is at most 4096 bytes; an entry's parent must be a directory
entry listed before it; paths are unique.  ``kind`` is ``"f"`` (regular
file) or ``"d"`` (directory); ``mode`` is the permission bits (the receiver
applies ``mode & 0o777``: never setuid, setgid or sticky); ``mtime_ns`` is
applied to files on commit and to directories at the end.  Symlinks,
devices, FIFOs and sockets are never listed (the sender reports them as
skipped), and the sender never follows a symlink below the source it was
given.  At most 2**20 entries.

Offers
------

``action`` is 0 SEND, 1 FAIL (``error`` says why: exists, refused by
policy, not a regular file, ...) or 2 DIR (directory created or present).
For a file, ``offset`` is where a resumable ``.part`` ends (a multiple of
chunk_size, or the size) and ``digests`` the SHA-256 of each of its chunks
(at most 65 536: longer prefixes are offered shorter).  ``have`` is set
when a file of the same size already exists under the final name: the
digests of all its chunks.  ``replace`` says whether the receiver may
replace an existing file (``force``).

The sender then, for each SEND offer:

* with ``have``: hashes its file; equal digests → the file is skipped (no
  FILE); different and not ``replace`` → a failure, not sent;
* with ``offset > 0``: hashes its first chunks and resumes after the
  longest prefix whose digests match (so a changed source restarts from
  its first changed chunk, or from 0);
* sends FILE ``[index, offset]`` (``offset`` ≤ the offered one, a multiple of
  chunk_size or the size), the CHUNKs from there (every chunk is exactly
  chunk_size bytes but the file's last), then FILE_END.

Every SEND offer is answered, before DONE, by FILE or FILE_ABORT, except a
skip (which needs ``have``).  A source that cannot be opened, that exists
with different content on the receiver without ``replace``, or whose size
or mtime changed since it was listed, gets FILE_ABORT instead of FILE; one
that changes while being read is ended with FILE_ABORT (the receiver then
removes its ``.part``).

Digests
-------

Chunk digest: ``SHA-256(data)``.  File digest::

    SHA-256("PSTP file v1" || size u64 || chunk_size u32 || d_0 || d_1 || ... || d_n-1)

over the digests of all the file's chunks (a hash list, as Dropbox's
content hash: every byte is hashed once on each side, and a resumed file's
digest needs no second pass over the part already there).  The receiver
checks each chunk's digest before it counts as verified and the file
digest before the commit; any mismatch is fatal (ERROR), and running the
transfer again resumes from the last verified chunk.

Receiving: atomic, resumable, confined
--------------------------------------

A file is written to ``.NAME.pstp-part`` in its target directory (locked
with ``flock``; long names use ``.pstp-<hash>.pstp-part``), beside a sidecar
``.NAME.pstp-meta``::

    "PSTPMETA" | length u16 | [size, mtime_ns, chunk_size, boot_id] | d_0 | d_1 | ...

to which each chunk's digest is appended once the chunk is written and
verified.  Each chunk's writeback starts as soon as it is written
(``POSIX_FADV_DONTNEED`` on dirty pages), so the disk works during the
transfer rather than all at the final ``fsync``.  Completion: ``fsync`` the
part, set mode and mtime, rename it to the final name (without ``force``:
``link`` + ``unlink``, so an existing file is never replaced), remove the
sidecar, and ``fsync`` each directory touched before SUMMARY.  A file never
appears under its final name incomplete.

On the next transfer of the same entry the receiver offers the verified
prefix if the sidecar's size, mtime and chunk size match the new entry;
otherwise it restarts.  If the machine rebooted since (the sidecar's
``boot_id`` differs: page cache lost) the prefix is hashed again first.
Before writing, the receiver checks the free space (``need`` bytes, and
again before each file) and fails with a clear error; a write that still
fails (ENOSPC) keeps the ``.part`` for a later resume and leaves any
existing file untouched.

Below the target directory every path is opened relative to a directory
descriptor with ``O_NOFOLLOW``: a symlink there is refused, never followed.
The daemon resolves the OPEN path itself inside its policy root: symlinks
are followed only while they stay inside that root (each component opened
with ``O_NOFOLLOW``, link targets resolved by hand and compared with the
root), device files, FIFOs and sockets are refused, and each entry of a
put is checked against the policy again (a read-only root nested in a
writable one stays read-only).  Refusals are written to the audit log.

Order and end
-------------

The sender sends no FILE before PLAN_END, and the receiver no PLAN before
ENTRIES_END; FILE_OK and FILE_FAILED may come while later files are being
sent.  A sender reports success only after SUMMARY; the daemon then ends
the channel with CLOSE and its exit status: 0 when every entry went
through, 1 otherwise (some entries failed, or ERROR ended the transfer).
"""

from __future__ import annotations

import collections
import logging
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Protocol

from pstp.asyncio.connection import Channel, ChannelHandler
from pstp.daemon.policy import FileRequest, FileRoot, Policy
from pstp.exceptions import RemoteProtocolError, TransferFailed
from pstp.transfer import (
    _DIR_FLAGS,
    CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_CONTROL,
    MAX_ENTRIES,
    MIN_CHUNK_SIZE,
    VERSION,
    Entry,
    FrameType,
    Offer,
    OfferAction,
    Progress,
    TransferResult,
    _Frames,
    _in_thread,
    _Receiver,
    _Refused,
    _Sender,
    _Tree,
    file_digest,
    part_names,
    split_path,
)

__all__ = [
    "CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_CONTROL",
    "MAX_ENTRIES",
    "MIN_CHUNK_SIZE",
    "VERSION",
    "Entry",
    "FrameType",
    "Offer",
    "OfferAction",
    "Progress",
    "Recorder",
    "TransferResult",
    "file_digest",
    "file_handler",
    "part_names",
    "split_path",
]

_log = logging.getLogger("pstp.daemon.files")


class Recorder(Protocol):
    """Writes an audit row (the signature of ``Daemon._record``)."""

    def __call__(self, kind: str, peer: str, decision: str, **kw: Any) -> None: ...


class _Jail:
    """Resolves paths below one policy root; symlinks are followed only inside it.

    Every component is opened relative to its parent's descriptor with
    ``O_NOFOLLOW``; a symlink's target is read and resolved by hand against
    the root (lexically, over directories already known to be real), so a
    path never leaves the root, whatever the links say or however they change.
    """

    #: Symlinks followed in one resolution at most (as Linux's SYMLOOP_MAX).
    MAX_HOPS = 40

    def __init__(self, root: PurePosixPath) -> None:
        self.root = root
        self.real_root = PurePosixPath(os.path.realpath(root))

    def _open_root(self) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _Refused(f"the root {self.root} cannot be opened: {exc.strerror}") from None

    def _link(self, done: list[str], target: str) -> list[str]:
        """The components below the root that a symlink in ``done`` leads to."""
        if target.startswith("/"):
            path = PurePosixPath(target)
            for base in (self.real_root, self.root):
                if path.is_relative_to(base):
                    parts = list(path.relative_to(base).parts)
                    break
            else:
                raise _Refused(f"a symlink leads outside the root ({target})")
        else:
            parts = [*done, *PurePosixPath(target).parts]
        out: list[str] = []
        for part in parts:
            if part == "..":
                if not out:
                    raise _Refused(f"a symlink leads outside the root ({target})")
                out.pop()
            elif part not in ("", "."):
                out.append(part)
        return out

    def resolve(self, parts: Sequence[str]) -> tuple[int, str | None, PurePosixPath]:
        """Open the directory holding ``parts`` below the root, following in-root symlinks.

        Args:
            parts: path components below the root (lexically clean).

        Returns:
            ``(dir_fd, name, real)``: the open parent directory (the caller
            closes it), the last component's name in it (None for the root
            itself; it may not exist), and the real path resolved to.

        Raises:
            _Refused: a symlink leads outside the root, a directory is missing
                or is not one, or there are too many symlinks.
        """
        todo = collections.deque(parts)
        done: list[str] = []
        hops = 0
        fd = self._open_root()
        try:
            while todo:
                name = todo.popleft()
                where = self.root.joinpath(*done, name)
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not todo:
                        return fd, name, where
                    raise _Refused(f"{where}: no such directory") from None
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > self.MAX_HOPS:
                        raise _Refused(f"{where}: too many levels of symbolic links")
                    todo.extendleft(reversed(self._link(done, os.readlink(name, dir_fd=fd))))
                    done = []
                    os.close(fd)
                    fd = self._open_root()
                    continue
                if not todo:
                    return fd, name, where
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    raise _Refused(f"{where}: not a directory") from None
                os.close(fd)
                fd = child
                done.append(name)
            return fd, None, self.root.joinpath(*done)
        except BaseException:
            os.close(fd)
            raise


#: Refusals of one transfer written to the audit log one by one; the rest are counted
#: in one more row (a manifest may list 2**20 entries under a read-only root).
_AUDITED_REFUSALS = 20


def _root_for(roots: Sequence[FileRoot], path: PurePosixPath) -> FileRoot | None:
    """The most specific root holding ``path`` (as the policy judges it)."""
    best: FileRoot | None = None
    for root in roots:
        if path.is_relative_to(root.root) and (
            best is None or len(root.root.parts) > len(best.root.parts)
        ):
            best = root
    return best


def _flag(params: Mapping[str, object], key: str) -> bool:
    return params.get(key) is True


class _Refusals:
    """Audit rows for the refusals of one transfer: the first ones, then a count."""

    def __init__(self, record: Recorder | None, peer: str, op: object, reason: str) -> None:
        self.record, self.peer, self.op, self.reason = record, peer, op, reason
        self.count = 0

    def add(self, message: str, where: str) -> None:
        """One refusal (audited if among the first :data:`_AUDITED_REFUSALS`)."""
        self.count += 1
        if self.count <= _AUDITED_REFUSALS:
            self._row(message, where)

    def close(self, where: str) -> None:
        """Record how many refusals were not audited one by one."""
        if self.count > _AUDITED_REFUSALS:
            self._row(f"{self.count - _AUDITED_REFUSALS} more refusals not recorded", where)

    def _row(self, message: str, where: str) -> None:
        if self.record is not None:
            self.record(
                "file",
                self.peer,
                "deny",
                reason=self.reason or None,
                args={"op": self.op, "path": where, "kind": "file"},
                detail=message,
            )


def file_handler(policy: Callable[[], Policy], record: Recorder | None = None) -> ChannelHandler:
    """The ``file`` channel handler: put and get, confined to the peer's file roots.

    Args:
        policy: returns the current policy (it may be reloaded meanwhile).
        record: writes audit rows for refusals found inside a transfer (a
            symlink leading out of the root, an entry under a read-only root).

    Returns:
        A handler whose exit status is 0 if every entry went through, else 1.
    """

    async def handle(ch: Channel) -> int:
        params = ch.params
        op, path = params.get("op"), params.get("path")
        reason = params.get("reason")
        reason = reason if isinstance(reason, str) else ""
        peer = ch.connection.peer_id or "?"
        frames = _Frames(ch)
        refusals = _Refusals(record, peer, op, reason)

        def allowed(where: PurePosixPath, write: bool) -> str | None:
            decision = policy().check(
                peer, FileRequest(str(where), write, reason), at=datetime.now().astimezone()
            )
            if decision.allowed:
                return None
            refusals.add(decision.reason, str(where))
            return f"refused: {decision.reason}"

        if op not in ("put", "get") or not isinstance(path, str):
            await frames.fail("bad params: op must be put or get, and path a string")
            return 1
        lexical = PurePosixPath(path)
        refusal = allowed(lexical, op == "put")  # again: the policy may have been reloaded
        peer_policy = policy().peer(peer)
        root = _root_for(peer_policy.files, lexical) if peer_policy is not None else None
        if refusal is not None or root is None:
            await frames.fail(refusal or "refused: outside the file roots")
            return 1
        jail = _Jail(PurePosixPath(root.root))
        rel = lexical.relative_to(root.root).parts
        try:
            if op == "get":
                result = await _serve_get(ch, jail, rel, lexical)
            else:
                result = await _serve_put(
                    ch,
                    jail,
                    rel,
                    force=_flag(params, "force"),
                    into=_flag(params, "into"),
                    allowed=lambda where: allowed(where, True),
                )
        except _Refused as exc:
            refusals.add(str(exc), path)
            await frames.fail(f"refused: {exc}")
            return 1
        except _PolicyRefused as exc:  # already audited by allowed()
            await frames.fail(str(exc))
            return 1
        except RemoteProtocolError as exc:  # e.g. a ".." or absolute entry path: audited
            refusals.add(f"protocol error: {exc}", path)
            return 1
        except TransferFailed as exc:
            _log.info("file %s of %s for %s failed: %s", op, path, peer, exc)
            return 1
        finally:
            refusals.close(path)
        _log.info(
            "file %s %s for %s: %d file(s), %d B sent, %d B resumed, %d skipped, %d failed",
            *(op, path, peer, result.files, result.bytes_sent, result.bytes_resumed),
            *(result.skipped, len(result.failed)),
        )
        return 1 if result.failed else 0

    return handle


async def _serve_get(
    ch: Channel, jail: _Jail, rel: tuple[str, ...], lexical: PurePosixPath
) -> TransferResult:
    """Send the file or directory at ``rel`` below the jail's root."""
    fd, name, real = await _in_thread(jail.resolve, rel)
    try:
        if name is None:  # the root itself: reach it from its parent
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd, name = parent, PurePosixPath(os.path.realpath(jail.root)).name
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise _Refused(f"{real}: no such file or directory") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise _Refused(f"{real}: not a regular file or directory")
    except BaseException:
        os.close(fd)
        raise
    tree = _Tree(fd, name, lexical.name or name)
    try:
        return await _Sender(ch, [tree]).run()
    finally:
        tree.close()


class _PolicyRefused(Exception):
    """The policy refused a path inside a transfer; the text is the FAIL/ERROR message."""


async def _serve_put(
    ch: Channel,
    jail: _Jail,
    rel: tuple[str, ...],
    *,
    force: bool,
    into: bool,
    allowed: Callable[[PurePosixPath], str | None],
) -> TransferResult:
    """Receive into (or as) the path ``rel`` below the jail's root.

    The target is a directory to receive into if it is one, or if ``into``
    (it is then created); otherwise the single source is written under the
    target's name in its parent directory.
    """
    fd, name, real = await _in_thread(jail.resolve, rel)
    try:
        base_path, rename = real, None
        if name is not None:
            try:
                st: os.stat_result | None = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                base = os.open(name, _DIR_FLAGS, dir_fd=fd)
            elif into:
                if st is not None:
                    raise _Refused(f"{real}: not a directory")
                # The directory is itself a write: the policy judges its real path
                # (a nested read-only root reached through a symlink stays untouched).
                refusal = allowed(real)
                if refusal is not None:
                    raise _PolicyRefused(refusal)
                os.mkdir(name, 0o755, dir_fd=fd)
                base = os.open(name, _DIR_FLAGS, dir_fd=fd)
            else:
                base, rename, base_path = os.dup(fd), name, real.parent
            os.close(fd)
            fd = base
        receiver = _Receiver(
            ch,
            fd,
            rename_top=rename,
            force=force,
            check=lambda parts: allowed(base_path.joinpath(*parts)),
        )
        return await receiver.run()
    finally:
        os.close(fd)
