"""Client side of remote commands: ``exec``, ``shell`` and ``action`` channels.

The stream frames and error reasons are specified in :mod:`pstp.daemon.exec`.
The client and the daemon are independent layers (neither imports the
other), so the small codec is repeated here; ``tests/daemon/test_exec.py``
checks that both decode every input identically.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import select
import signal
import struct
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
from dataclasses import dataclass
from typing import Any

from pstp.asyncio.connection import Channel, Session
from pstp.exceptions import ChannelError, FrameTooLarge, PstpError, RemoteProtocolError
from pstp.wire.messages import ChannelCode, ParamValue

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
    "run_action",
    "run_exec",
    "run_shell",
    "status_for_error",
]

#: Client → server frame types.
STDIN, RESIZE, SIGNAL = 0x00, 0x01, 0x02
#: Server → client frame types.
STDOUT, STDERR = 0x00, 0x01
#: Largest payload a frame may carry.
MAX_FRAME = 1 << 20
_CHUNK = 64 * 1024
_HEADER = struct.Struct(">BI")
_HEADER_LEN = _HEADER.size
#: SIGNAL frame payload index → signal name (the table of pstp.daemon.exec).
SIGNALS: tuple[str, ...] = ("INT", "TERM", "HUP", "KILL", "QUIT", "USR1", "USR2", "WINCH")
#: Status reported when the remote side failed without one (as ssh does).
EXIT_REMOTE_FAILURE = 255
#: CLOSE reason prefixes that stand for a shell's status (pstp.daemon.exec).
_ERROR_STATUS = (("command not found", 127), ("no such action", 127), ("cannot execute", 126))

#: Receives output bytes; may return an awaitable (then it is awaited).
Output = Callable[[bytes], object]


@dataclass(frozen=True, slots=True)
class Frame:
    """One server → client stream frame (type STDOUT 0 or STDERR 1)."""

    type: int
    payload: bytes


def encode_frame(frame_type: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Serialize one frame: ``type u8 | length u32 | payload``.

    Raises:
        ValueError: the type is not a byte or the payload is longer than 1 MiB.
    """
    if not 0 <= frame_type <= 0xFF:
        raise ValueError(f"frame type {frame_type} is not a byte")
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(frame_type, len(payload)) + bytes(payload)


def encode_resize(rows: int, cols: int) -> bytes:
    """A whole RESIZE frame.

    Raises:
        ValueError: rows or cols is not in 0..65535.
    """
    if not (0 <= rows <= 0xFFFF and 0 <= cols <= 0xFFFF):
        raise ValueError(f"window size {rows}x{cols} out of range")
    return encode_frame(RESIZE, struct.pack(">HH", rows, cols))


def encode_signal(name: str) -> bytes:
    """A whole SIGNAL frame for ``name`` (``"TERM"`` or ``"SIGTERM"``).

    Raises:
        ValueError: the signal is not in :data:`SIGNALS`.
    """
    name = name.upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise ValueError(f"signal {name!r} cannot be sent (one of {', '.join(SIGNALS)})")
    return encode_frame(SIGNAL, bytes([SIGNALS.index(name)]))


class FrameDecoder:
    """Sans-I/O parser for server → client stream frames.

    Args:
        max_payload: the largest payload accepted.

    After an error the decoder stays failed: every later call raises again.
    """

    def __init__(self, max_payload: int = MAX_FRAME) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self._failed: RemoteProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add received bytes; return every frame they complete, in order.

        Raises:
            FrameTooLarge: a header announced more than ``max_payload`` bytes.
            RemoteProtocolError: an unknown frame type.
        """
        if self._failed is not None:
            raise RemoteProtocolError("stream frame decoder failed earlier") from self._failed
        self._buf += data
        frames: list[Frame] = []
        try:
            while len(self._buf) >= _HEADER_LEN:
                frame_type, length = _HEADER.unpack_from(self._buf)
                if frame_type not in (STDOUT, STDERR):
                    raise RemoteProtocolError(f"unknown stream frame type {frame_type:#04x}")
                if length > self.max_payload:
                    raise FrameTooLarge(f"stream frame of {length} bytes (max {self.max_payload})")
                end = _HEADER_LEN + length
                if len(self._buf) < end:
                    break
                frames.append(Frame(frame_type, bytes(self._buf[_HEADER_LEN:end])))
                del self._buf[:end]
        except RemoteProtocolError as exc:
            self._failed = exc
            self._buf.clear()
            raise
        return frames

    def eof(self) -> None:
        """The stream ended; check that it did not end inside a frame.

        Raises:
            RemoteProtocolError: bytes of an incomplete frame remain, or the
                decoder failed earlier.
        """
        if self._failed is not None:
            raise RemoteProtocolError("stream frame decoder failed earlier") from self._failed
        if self._buf:
            self._failed = RemoteProtocolError(f"stream ended inside a frame ({self.pending} B)")
            raise self._failed


def status_for_error(reason: str) -> int:
    """The shell-style status for a command the server could not run (from its CLOSE reason)."""
    for prefix, status in _ERROR_STATUS:
        if reason.startswith(prefix):
            return status
    return EXIT_REMOTE_FAILURE


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
    decoder = FrameDecoder()
    try:
        try:
            while data := await channel.read():
                for frame in decoder.feed(data):
                    await _emit(stdout if frame.type == STDOUT else stderr, frame.payload)
            decoder.eof()
            status = await channel.wait_closed()
        except ChannelError as exc:
            if exc.code != ChannelCode.APPLICATION_ERROR:
                raise
            await _emit(stderr, f"pstp: {exc.reason or 'the remote command failed'}\n".encode())
            return status_for_error(exc.reason)
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
    params: dict[str, ParamValue] = {"argv": [str(a) for a in argv], "reason": reason}
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
    params: dict[str, ParamValue] = {"name": name, "reason": reason}
    for key, value in (args or {}).items():
        params[f"arg.{key}"] = value
    channel = await session.open_channel("action", params)
    return await _drive(channel, None, stdout or _fd_output(1), stderr or _fd_output(2))


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
) -> int:
    """An interactive shell on the peer, on this process's terminal.

    The local terminal is put in raw mode (keys, ^C included, go to the
    remote shell) and always restored: on return, on an exception, and on
    SIGTERM, SIGHUP or SIGINT, which end the shell.  Window-size changes
    (SIGWINCH) are passed on.

    Args:
        session: an established session to the peer.
        reason: why, for the peer's policy and audit log.
        stdin_fd: the keyboard side (a terminal, or any readable fd).
        stdout_fd: where the shell's output goes.
        term: the terminal type (default: $TERM, else ``dumb``).

    Returns:
        The shell's exit status; 128 + n if signal n stopped us first.

    Raises:
        ChannelError: the peer refused the shell (its policy).
        ConnectionClosed: the session ended.
        RemoteProtocolError: the peer sent a malformed stream frame.
    """
    loop = asyncio.get_running_loop()
    rows, cols = _window_size(stdout_fd, stdin_fd)
    params: dict[str, ParamValue] = {
        "term": term or os.environ.get("TERM") or "dumb",
        "rows": rows,
        "cols": cols,
        "reason": reason,
    }
    channel = await session.open_channel("shell", params)
    sender = _FrameSender(channel)
    tasks: set[asyncio.Task[None]] = set()
    stopped_by: list[int] = []
    installed: list[int] = []
    saved = termios.tcgetattr(stdin_fd) if os.isatty(stdin_fd) else None

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
        loop.add_signal_handler(signal.SIGWINCH, lambda: spawn(resize()))
        installed.append(signal.SIGWINCH)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            loop.add_signal_handler(sig, stop, int(sig))
            installed.append(sig)
        out = _fd_output(stdout_fd)
        try:
            return await _drive(channel, iter_fd(stdin_fd), out, out, sender)
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
