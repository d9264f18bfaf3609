"""Client side of remote commands: ``exec``, ``shell`` and ``action`` channels.

The stream frames and error reasons are in :mod:`pstp.protocol.streams`,
shared with the daemon (docs/protocol.md §17).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import select
import signal
import termios
import tty
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Mapping,
    Sequence,
)
from typing import Any

from pstp.asyncio.connection import Channel, Session
from pstp.client.quick import action_params, failure_note
from pstp.exceptions import ChannelError, PstpError, RemoteProtocolError
from pstp.protocol.kinds import (
    LISTING_MAX,
    ActionInfo,
    ActionsOpen,
    ExecOpen,
    ShellOpen,
    decode_listing,
)
from pstp.protocol.streams import (
    EXIT_REMOTE_FAILURE,
    MAX_FRAME,
    SIGNALS,
    STDIN,
    STDOUT,
    Direction,
    Frame,
    FrameDecoder,
    encode_frame,
    encode_resize,
    encode_signal,
)
from pstp.wire.messages import ChannelCode

__all__ = [
    "EXIT_REMOTE_FAILURE",
    "MAX_FRAME",
    "SIGNALS",
    "Frame",
    "FrameDecoder",
    "Output",
    "encode_frame",
    "encode_resize",
    "encode_signal",
    "iter_fd",
    "list_actions",
    "run_action",
    "run_exec",
    "run_shell",
]

_CHUNK = 64 * 1024

#: Receives output bytes; may return an awaitable (then it is awaited).
Output = Callable[[bytes], object]


class _FrameSender:
    """Writes whole frames; a lock keeps concurrent writers' frames apart."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._lock = asyncio.Lock()

    async def send(self, frame: bytes) -> None:
        async with self._lock:
            await self.channel.write(frame)

    async def stdin(self, data: bytes) -> None:
        for off in range(0, len(data), _CHUNK):
            await self.send(encode_frame(STDIN, data[off : off + _CHUNK]))


def _fd_output(fd: int) -> Output:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                select.select([], [fd], [])

    return write


async def _emit(output: Output, data: bytes) -> None:
    result = output(data)
    if inspect.isawaitable(result):
        await result


async def _wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def iter_fd(fd: int, chunk: int = _CHUNK) -> AsyncIterator[bytes]:
    """Yield what can be read from ``fd`` until end of file, without blocking the loop.

    A terminal or pipe is watched by the event loop (and read only when the
    consumer asks for more, so nothing piles up); a regular file or
    ``/dev/null``, which cannot be watched, is read in a worker thread.

    Raises:
        OSError: reading failed.
    """
    pollable = True
    while True:
        if pollable:
            try:
                await _wait_readable(fd)
            except (OSError, ValueError):
                pollable = False
        if pollable:
            try:
                data = os.read(fd, chunk)
            except BlockingIOError:
                continue
        else:
            data = await asyncio.to_thread(os.read, fd, chunk)
        if not data:
            return
        yield data


async def _send_stdin(sender: _FrameSender, stdin: AsyncIterable[bytes] | None) -> None:
    try:
        if stdin is not None:
            async for data in stdin:
                await sender.stdin(data)
        await sender.channel.write_eof()
    except PstpError:
        pass  # the channel ended (the command exited without reading everything)


async def _drive(
    channel: Channel,
    stdin: AsyncIterable[bytes] | None,
    stdout: Output,
    stderr: Output,
    sender: _FrameSender | None = None,
) -> int:
    """Stream stdin out and output in until the server closes the channel."""
    sender = sender or _FrameSender(channel)
    feeding = asyncio.ensure_future(_send_stdin(sender, stdin))
    decoder = FrameDecoder(Direction.TO_CLIENT)
    try:
        try:
            while data := await channel.read():
                for frame in decoder.feed(data):
                    await _emit(stdout if frame.type == STDOUT else stderr, frame.payload)
            decoder.eof()
            status = await channel.wait_closed()
        except ChannelError as exc:
            status, note = failure_note(exc)
            await _emit(stderr, note)
            return status
        if feeding.done() and not feeding.cancelled() and feeding.exception() is not None:
            raise feeding.exception()  # type: ignore[misc]  # our stdin source failed
        return EXIT_REMOTE_FAILURE if status is None else status
    except BaseException:
        with contextlib.suppress(PstpError):
            await channel.close(code=ChannelCode.CANCELLED)
        raise
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError, PstpError):
            await feeding


async def run_exec(
    session: Session,
    argv: Sequence[str],
    *,
    stdin: AsyncIterable[bytes] | None = None,
    stdout: Output | None = None,
    stderr: Output | None = None,
    reason: str | None = None,
) -> int:
    """Run ``argv`` on the peer (no shell) and stream its standard streams.

    Args:
        session: an established session to the peer.
        argv: the program and its arguments, passed as they are.
        stdin: bytes for the command's standard input; ``None``: it gets EOF.
        stdout: receives its standard output (default: written to fd 1).
        stderr: receives its standard error and our notes (default: fd 2).
        reason: why, for the peer's policy and audit log.

    Returns:
        The command's exit status (128 + n if signal n killed it); 127 or
        126 if it could not be found or run (a note goes to ``stderr``); 255
        if the server failed otherwise.

    Raises:
        ValueError: ``argv`` is empty.
        ChannelError: the peer refused the command (its policy), or the channel
            was cancelled.
        ConnectionClosed: the session ended.
        RemoteProtocolError: the peer sent a malformed stream frame.
    """
    if not argv:
        raise ValueError("argv must not be empty")
    params = ExecOpen(argv=[str(a) for a in argv], reason=reason).to_params()
    channel = await session.open_channel("exec", params)
    return await _drive(channel, stdin, stdout or _fd_output(1), stderr or _fd_output(2))


async def run_action(
    session: Session,
    name: str,
    args: Mapping[str, str | int | float | bool] | None = None,
    *,
    reason: str | None = None,
    stdout: Output | None = None,
    stderr: Output | None = None,
) -> int:
    """Run the peer's configured action ``name`` with ``args``.

    Args:
        session: an established session to the peer.
        name: the action's name.
        args: its arguments (the peer's policy checks and converts them).
        reason: why, for the peer's policy and audit log.
        stdout: receives the action's output (default: written to fd 1).
        stderr: receives its errors and our notes (default: fd 2).

    Returns:
        The action's exit status (124 if it timed out, 127 if there is no
        such action, 255 if the server failed otherwise).

    Raises:
        ChannelError: the peer refused the action (its policy), or the channel
            was cancelled.
        ConnectionClosed: the session ended.
        RemoteProtocolError: the peer sent a malformed stream frame.
    """
    channel = await session.open_channel("action", action_params(name, args, reason))
    return await _drive(channel, None, stdout or _fd_output(1), stderr or _fd_output(2))


async def list_actions(session: Session, *, reason: str | None = None) -> list[ActionInfo]:
    """The actions the peer's policy lets us run now, with their arguments (§17.12).

    Args:
        session: an established session to the peer.
        reason: why, for the peer's audit log.

    Returns:
        The actions, in name order (empty if none is allowed).

    Raises:
        ChannelError: the peer refused the listing, or does not serve it (code
            UNKNOWN_KIND: a device older than the ``actions`` kind).
        ConnectionClosed: the session ended.
        RemoteProtocolError: the answer is not a listing.
    """
    channel = await session.open_channel("actions", ActionsOpen(reason=reason).to_params())
    try:
        await channel.write_eof()
        data = await channel.read_all(limit=LISTING_MAX)
        await channel.wait_closed()
    except ValueError as exc:  # TooMuchData
        with contextlib.suppress(PstpError):
            await channel.close(code=ChannelCode.CANCELLED)
        raise RemoteProtocolError(str(exc)) from None
    try:
        return decode_listing(data)
    except ValueError as exc:
        raise RemoteProtocolError(str(exc)) from None


def _window_size(*fds: int) -> tuple[int, int]:
    for fd in fds:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return size.lines, size.columns
    return 24, 80


async def run_shell(
    session: Session,
    *,
    reason: str | None = None,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    term: str | None = None,
    pty: bool | None = None,
    stderr_fd: int = 2,
) -> int:
    """A shell on the peer: on this process's terminal, or fed from a pipe or file.

    With a remote terminal (``pty``), a local terminal on ``stdin_fd`` is put
    in raw mode (keys, ^C included, go to the remote shell) and always
    restored: on return, on an exception, and on SIGTERM, SIGHUP or SIGINT,
    which end the shell.  Window-size changes (SIGWINCH) are passed on.

    Without one (as ``ssh -T``), the shell reads ``stdin_fd`` through a pipe
    until its end (EOF reaches the shell, which then exits), and its standard
    output and error come back apart, to ``stdout_fd`` and ``stderr_fd``.

    Args:
        session: an established session to the peer.
        reason: why, for the peer's policy and audit log.
        stdin_fd: the keyboard side (a terminal, or any readable fd).
        stdout_fd: where the shell's output goes.
        term: the terminal type (default: $TERM, else ``dumb``).
        pty: ask for a remote terminal; ``None`` (the default): only if
            ``stdin_fd`` is a terminal, as ssh decides.
        stderr_fd: where the shell's standard error goes without a terminal.

    Returns:
        The shell's exit status; 128 + n if signal n stopped us first.

    Raises:
        ChannelError: the peer refused the shell (its policy).
        ConnectionClosed: the session ended.
        RemoteProtocolError: the peer sent a malformed stream frame.
    """
    loop = asyncio.get_running_loop()
    if pty is None:
        pty = os.isatty(stdin_fd)
    rows, cols = _window_size(stdout_fd, stdin_fd)
    opened = ShellOpen(
        term=term or os.environ.get("TERM") or "dumb",
        rows=rows,
        cols=cols,
        reason=reason,
        pty=pty,
    )
    channel = await session.open_channel("shell", opened.to_params())
    sender = _FrameSender(channel)
    tasks: set[asyncio.Task[None]] = set()
    stopped_by: list[int] = []
    installed: list[int] = []
    saved = termios.tcgetattr(stdin_fd) if pty and os.isatty(stdin_fd) else None

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def resize() -> None:
        with contextlib.suppress(PstpError, ValueError):
            await sender.send(encode_resize(*_window_size(stdout_fd, stdin_fd)))

    def stop(signum: int) -> None:
        stopped_by.append(signum)
        spawn(channel.close(code=ChannelCode.CANCELLED, reason="stopped by a signal"))

    try:
        if saved is not None:
            tty.setraw(stdin_fd)
        if pty:
            loop.add_signal_handler(signal.SIGWINCH, lambda: spawn(resize()))
            installed.append(signal.SIGWINCH)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            loop.add_signal_handler(sig, stop, int(sig))
            installed.append(sig)
        out = _fd_output(stdout_fd)
        err = out if pty else _fd_output(stderr_fd)
        try:
            return await _drive(channel, iter_fd(stdin_fd), out, err, sender)
        except ChannelError:
            if stopped_by:
                return 128 + stopped_by[0]
            raise
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        for task in list(tasks):
            task.cancel()
