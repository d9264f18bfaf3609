"""The client side of file transfer: :func:`put` and :func:`get` over a ``file`` channel
(docs/protocol.md §18.11).

Example::

    async with await connect_peer(settings, "home") as session:
        summary = await put(session, ["photos"], "/srv/share/", progress=print)
        summary = await get(session, ["/srv/share/notes.txt"], ".")

What a local path may be, where the sources land and what is left out is
§18.11; what :func:`get` writes goes through the receiver of §18.8.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pstp.asyncio.connection import Channel, Session
from pstp.exceptions import ChannelError, ConnectionClosed
from pstp.files.disk import DIR_FLAGS, Tree, is_utf8, part_names, read_meta
from pstp.files.engine import Progress, ProgressCallback, Receiver, Sender, TransferResult
from pstp.files.frames import CHUNK_SIZE, valid_chunk_size
from pstp.wire.messages import ChannelCode, ParamValue

__all__ = ["TransferState", "TransferSummary", "get", "put"]


@dataclass
class TransferSummary(TransferResult):
    """What a :func:`put` or :func:`get` did (see :class:`TransferResult`), and how long it took.

    Attributes:
        seconds: wall time from opening the first channel to the last close.
    """

    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True if every entry went through."""
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (``failed`` as ``[{"path", "error"}]``)."""
        out = asdict(self)
        out["failed"] = [{"path": p, "error": e} for p, e in self.failed]
        out["ok"] = self.ok
        return out


@dataclass
class TransferState:
    """Where a running :func:`put` or :func:`get` stands, kept up to date as it goes.

    Pass one as ``state=``: if the transfer is interrupted (Ctrl-C cancels it, so it
    returns no summary), this still says what was kept, as ``pstp put`` and ``pstp
    get`` report it.

    Attributes:
        last: the latest progress report (None before the first one).
        local_dir: for :func:`get`, the local directory entries are written under.
        local_rename: for :func:`get`, the local name the single source takes, if not its own.
    """

    last: Progress | None = None
    local_dir: str | None = None
    local_rename: str | None = None
    _results: list[TransferResult] = field(default_factory=list)

    @property
    def files(self) -> int:
        """Files complete under their final names (for :func:`put`: confirmed by the peer)."""
        return sum(r.files for r in self._results)

    @property
    def skipped(self) -> int:
        """Files the receiver already had with the same digests."""
        return sum(r.skipped for r in self._results)

    @property
    def partial(self) -> Progress | None:
        """The latest report if it is of a file under way (some of it in place, not all)."""
        last = self.last
        if last is None or not 0 < last.file_bytes < last.file_size:
            return None
        return last

    def local_part(self) -> str | None:
        """For :func:`get`: the hidden partial file of the file under way, on this machine."""
        names = self._local_names()
        return None if names is None else os.path.join(names[0], names[1])

    def local_kept(self) -> int | None:
        """For :func:`get`: the bytes of the partial file that a rerun resumes from.

        Read from its sidecar (the digests of the chunks verified and written,
        §18.8), not from the last progress report, which lags behind the disk.
        """
        names = self._local_names()
        if names is None:
            return None
        directory, _, sidecar = names
        try:
            dir_fd = os.open(directory, DIR_FLAGS)
        except OSError:
            return None
        try:
            found = read_meta(dir_fd, sidecar)
        finally:
            os.close(dir_fd)
        if found is None:
            return None
        meta, digests = found
        return min(meta.size, meta.chunk_size * len(digests))

    def _local_names(self) -> tuple[str, str, str] | None:
        """The directory, partial file and sidecar names of the file a get has under way."""
        last = self.partial
        if last is None or self.local_dir is None:
            return None
        parts = last.path.split("/")
        if self.local_rename is not None:
            parts[0] = self.local_rename
        part, sidecar = part_names(parts[-1])
        return os.path.join(self.local_dir, *parts[:-1]), part, sidecar

    def _watch(self, progress: ProgressCallback | None) -> ProgressCallback:
        def report(p: Progress) -> None:
            self.last = p
            if progress is not None:
                progress(p)

        return report


def _local_tree(path: str) -> Tree:
    """A local path to send: followed if it is a symlink, named as given.

    Raises:
        FileNotFoundError: it does not exist.
        ValueError: it is ``/``, or neither a regular file nor a directory.
    """
    given = os.path.abspath(path)
    top = os.path.basename(given.rstrip("/"))
    real = os.path.realpath(given)
    st = os.stat(real)
    if not top or real == "/":
        raise ValueError(f"cannot send {path!r} as a whole; name what is in it")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ValueError(f"{path}: not a regular file or directory")
    if not is_utf8(top):
        raise ValueError(f"{path}: the name is not valid UTF-8")
    parent = os.open(os.path.dirname(real), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return Tree(parent, os.path.basename(real), top)


async def _transfer(
    session: Session,
    params: dict[str, ParamValue],
    side: Callable[[Channel], Sender | Receiver],
    state: TransferState | None,
) -> TransferResult:
    """Open a ``file`` channel, run one side of the transfer on it and wait for the
    device's CLOSE; a client that stops closes with CANCELLED (§18.1, §18.9)."""
    ch = await session.open_channel("file", params)
    try:
        running = side(ch)
        if state is not None:
            state._results.append(running.result)
        result = await running.run()
        await ch.wait_closed()
        return result
    except BaseException:
        with contextlib.suppress(ChannelError, ConnectionClosed):
            await ch.close(code=ChannelCode.CANCELLED)
        raise


async def put(
    session: Session,
    local_paths: Sequence[str],
    remote: str,
    *,
    progress: ProgressCallback | None = None,
    force: bool = False,
    reason: str | None = None,
    limit: float | None = None,
    chunk_size: int = CHUNK_SIZE,
    state: TransferState | None = None,
) -> TransferSummary:
    """Send local files and directories (recursively, with modes and mtimes) to the peer.

    As with ``cp``: with several sources, a ``remote`` ending in ``/``, or a
    ``remote`` that is a directory, each source lands under ``remote`` by its
    name; otherwise the single source is written as ``remote``.  Running the
    same put again after an interruption resumes where the peer's verified
    ``.part`` files end, and skips files it already has with the same digests.

    Args:
        session: an established session to the peer.
        local_paths: files or directories to send.
        remote: an absolute path on the peer, under one of its file roots.
        progress: called with a :class:`Progress` after each chunk.
        force: replace files that exist on the peer with different content.
        reason: why, for the peer's policy and audit log.
        limit: at most this many bytes per second.
        chunk_size: bytes per verified chunk (a power of two, 64 KiB to 4 MiB).
        state: kept up to date as the put goes (what was kept, if it is interrupted).

    Returns:
        What was sent, skipped, resumed and refused (``failed``).

    Raises:
        ValueError: no sources, a relative ``remote``, or a source that cannot be sent.
        FileNotFoundError: a source does not exist.
        ChannelError: the peer's policy refused the transfer (code REFUSED).
        TransferFailed: the transfer could not go on (the message says why,
            for example not enough space); run it again to resume.
        ConnectionClosed: the session ended (run it again to resume).
        RemoteProtocolError: the peer broke the file protocol.
    """
    if not local_paths:
        raise ValueError("nothing to send")
    if not remote.startswith("/"):
        raise ValueError(f"the remote path {remote!r} must be absolute")
    if not valid_chunk_size(chunk_size):
        raise ValueError(f"chunk size {chunk_size} is not a power of two in 64 KiB..4 MiB")
    trees: list[Tree] = []
    started = time.monotonic()
    if state is not None:
        progress = state._watch(progress)
    try:
        for path in local_paths:
            trees.append(_local_tree(path))
        into = len(local_paths) > 1 or remote.endswith("/")
        params: dict[str, ParamValue] = {
            "op": "put",
            "path": remote,
            "force": force,
            "into": into,
            "reason": reason,
        }
        result = await _transfer(
            session,
            params,
            lambda ch: Sender(ch, trees, chunk_size=chunk_size, progress=progress, limit=limit),
            state,
        )
    finally:
        for tree in trees:
            tree.close()
    summary = TransferSummary(**vars(result), seconds=time.monotonic() - started)
    return summary


async def get(
    session: Session,
    remote_paths: Sequence[str],
    local: str,
    *,
    force: bool = False,
    progress: ProgressCallback | None = None,
    reason: str | None = None,
    limit: float | None = None,
    state: TransferState | None = None,
) -> TransferSummary:
    """Fetch files and directories from the peer (recursively, with modes and mtimes).

    As with ``cp``: with several sources, a ``local`` ending in ``/`` (created
    if missing) or a ``local`` directory, each source lands under ``local`` by
    its name; otherwise the single source is written as ``local``.  Files are
    written to a ``.part`` beside their target, verified, and renamed when
    complete; an interrupted get resumes when run again.

    Args:
        session: an established session to the peer.
        remote_paths: absolute paths on the peer, under its file roots.
        local: where to write.
        force: replace local files that exist with different content.
        progress: called with a :class:`Progress` after each chunk.
        reason: why, for the peer's policy and audit log.
        limit: at most this many bytes per second.
        state: kept up to date as the get goes (what was kept, if it is interrupted).

    Returns:
        What was received, skipped, resumed and refused (``failed``).

    Raises:
        ValueError: no sources, or a relative remote path.
        OSError: ``local`` (or its parent) is missing or not a directory.
        ChannelError: the peer's policy refused a source (code REFUSED).
        TransferFailed, ConnectionClosed, RemoteProtocolError: as for :func:`put`.
    """
    if not remote_paths:
        raise ValueError("nothing to fetch")
    for remote in remote_paths:
        if not remote.startswith("/"):
            raise ValueError(f"the remote path {remote!r} must be absolute")
    into = len(remote_paths) > 1 or local.endswith("/") or os.path.isdir(local)
    if into and not os.path.isdir(local):
        os.mkdir(local)
    target = os.path.abspath(local)
    directory, rename = (target, None) if into else os.path.split(target)
    if state is not None:
        state.local_dir, state.local_rename = directory, rename
        progress = state._watch(progress)
    summary = TransferSummary()
    started = time.monotonic()
    for remote in remote_paths:
        base = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            params: dict[str, ParamValue] = {"op": "get", "path": remote, "reason": reason}
            result = await _transfer(
                session,
                params,
                functools.partial(
                    Receiver,
                    base_fd=base,
                    rename_top=rename,
                    force=force,
                    progress=progress,
                    limit=limit,
                ),
                state,
            )
        finally:
            os.close(base)
        summary.add(result)
    summary.seconds = time.monotonic() - started
    return summary
