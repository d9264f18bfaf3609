"""The device's side of the ``file`` channel: confinement to the peer's roots, policy and
audit (docs/protocol.md §18.10), around the engine of :mod:`pstp.files.engine`.

The OPEN params are §18.1; the frames, messages and the end of a transfer
(DONE included) are §18.2 to §18.9.
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
from pstp.files.disk import DIR_FLAGS, RefusedError, Reserve, Tree
from pstp.files.engine import FrameStream, Receiver, Sender, TransferResult, in_thread

__all__ = ["AUDIT_RESERVE", "Recorder", "file_handler"]

_log = logging.getLogger("pstp.daemon.files")

#: The free space the daemon keeps for its audit log (``reserve=(audit path, AUDIT_RESERVE)``).
AUDIT_RESERVE = 64 << 20


class Recorder(Protocol):
    """Writes an audit row (the signature of ``Daemon._record``; what it returns, such as
    whether the row was written, is not used here)."""

    def __call__(self, kind: str, peer: str, decision: str, **kw: Any) -> object: ...


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
            raise RefusedError(f"the root {self.root} cannot be opened: {exc.strerror}") from None

    def _link(self, done: list[str], target: str) -> list[str]:
        """The components below the root that a symlink in ``done`` leads to."""
        if target.startswith("/"):
            path = PurePosixPath(target)
            for base in (self.real_root, self.root):
                if path.is_relative_to(base):
                    parts = list(path.relative_to(base).parts)
                    break
            else:
                raise RefusedError(f"a symlink leads outside the root ({target})")
        else:
            parts = [*done, *PurePosixPath(target).parts]
        out: list[str] = []
        for part in parts:
            if part == "..":
                if not out:
                    raise RefusedError(f"a symlink leads outside the root ({target})")
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
            RefusedError: a symlink leads outside the root, a directory is missing
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
                    raise RefusedError(f"{where}: no such directory") from None
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > self.MAX_HOPS:
                        raise RefusedError(f"{where}: too many levels of symbolic links")
                    todo.extendleft(reversed(self._link(done, os.readlink(name, dir_fd=fd))))
                    done = []
                    os.close(fd)
                    fd = self._open_root()
                    continue
                if not todo:
                    return fd, name, where
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    raise RefusedError(f"{where}: not a directory") from None
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


def file_handler(
    policy: Callable[[], Policy],
    record: Recorder | None = None,
    *,
    reserve: tuple[str | os.PathLike[str], int] | None = None,
) -> ChannelHandler:
    """The ``file`` channel handler: put and get, confined to the peer's file roots.

    Args:
        policy: returns the current policy (it may be reloaded meanwhile).
        record: writes audit rows for refusals found inside a transfer (a
            symlink leading out of the root, an entry under a read-only root).
        reserve: ``(path, margin_bytes)``: the audit database's path and the
            free space to keep on its file system (the daemon passes
            :data:`AUDIT_RESERVE`, 64 MiB).  A put into that file system whose
            announced sizes would leave less than the margin free is refused
            before it writes (ERROR ``refused: would leave less than 64 MiB free
            for the audit log on MOUNT ...``), and one whose writes cross it is
            stopped (checked every 4 MiB written).  None: no check.

    Returns:
        A handler whose exit status is 0 if every entry went through, else 1.
    """

    async def handle(ch: Channel) -> int:
        params = ch.params
        op, path = params.get("op"), params.get("path")
        reason = params.get("reason")
        reason = reason if isinstance(reason, str) else ""
        peer = ch.connection.peer_id or "?"
        frames = FrameStream(ch)
        keep = Reserve(*reserve) if reserve is not None else None
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
                    reserve=keep,
                )
        except RefusedError as exc:
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
    fd, name, real = await in_thread(jail.resolve, rel)
    try:
        if name is None:  # the root itself: reach it from its parent
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd, name = parent, PurePosixPath(os.path.realpath(jail.root)).name
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise RefusedError(f"{real}: no such file or directory") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise RefusedError(f"{real}: not a regular file or directory")
    except BaseException:
        os.close(fd)
        raise
    tree = Tree(fd, name, lexical.name or name)
    try:
        return await Sender(ch, [tree]).run()
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
    reserve: Reserve | None = None,
) -> TransferResult:
    """Receive into (or as) the path ``rel`` below the jail's root.

    The target is a directory to receive into if it is one, or if ``into``
    (it is then created); otherwise the single source is written under the
    target's name in its parent directory.
    """
    fd, name, real = await in_thread(jail.resolve, rel)
    try:
        base_path, rename = real, None
        if name is not None:
            try:
                st: os.stat_result | None = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                base = os.open(name, DIR_FLAGS, dir_fd=fd)
            elif into:
                if st is not None:
                    raise RefusedError(f"{real}: not a directory")
                # The directory is itself a write: the policy judges its real path
                # (a nested read-only root reached through a symlink stays untouched).
                refusal = allowed(real)
                if refusal is not None:
                    raise _PolicyRefused(refusal)
                os.mkdir(name, 0o755, dir_fd=fd)
                base = os.open(name, DIR_FLAGS, dir_fd=fd)
            else:
                base, rename, base_path = os.dup(fd), name, real.parent
            os.close(fd)
            fd = base
        receiver = Receiver(
            ch,
            fd,
            rename_top=rename,
            force=force,
            check=lambda parts: allowed(base_path.joinpath(*parts)),
            reserve=reserve,
        )
        return await receiver.run()
    finally:
        os.close(fd)
