"""Remote commands: the ``exec`` and ``shell`` channels, and the stream frames they carry.

Stream frames
=============

The ``exec``, ``shell`` and ``action`` channels carry **stream frames** in both
directions, back to back in the channel's byte stream (a frame may be split
across CHANNEL_DATA messages, and one message may hold several frames)::

    type u8 | length u32 (big-endian) | payload (length bytes)

``length`` counts the payload only and MUST NOT exceed 1 MiB (1 048 576). A
receiver checks type and length from the 5-byte header alone, before
buffering the payload.

Client (opener) → server:

==== ====== ================================================================
Type Name   Payload
==== ====== ================================================================
0x00 STDIN  bytes for the process's standard input (may be empty)
0x01 RESIZE ``rows u16 | cols u16`` (big-endian), exactly 4 bytes
0x02 SIGNAL ``index u8``, exactly 1 byte, into the signal table below
==== ====== ================================================================

Signal table (index → POSIX signal): 0 INT, 1 TERM, 2 HUP, 3 KILL, 4 QUIT,
5 USR1, 6 USR2, 7 WINCH.  Other indexes are errors.

Server → client:

==== ====== ================================================================
Type Name   Payload
==== ====== ================================================================
0x00 STDOUT bytes the process wrote to standard output (for ``shell``: the
            terminal's output)
0x01 STDERR bytes the process wrote to standard error (never sent by
            ``shell``: a terminal has one output); also the server's notes
            (output cut, timeout)
==== ====== ================================================================

Senders write payloads of at most 64 KiB.  The client's EOF on the channel
means standard input is closed (``shell``: the terminal's EOF character is
written to it).  The server ends the channel with CLOSE, code OK and
``exit_status`` the process's exit code, or 128 + n if it died of signal n
(as a POSIX shell reports it); an action that ran out of time ends with 124
(as ``timeout(1)``).

Errors.  A frame longer than 1 MiB, an unknown type, a RESIZE that is not 4
bytes, a SIGNAL that is not 1 byte or names no table entry, or an EOF in
the middle of a frame, makes the server kill the process and close the
channel with code APPLICATION_ERROR (5), reason ``"bad stream frame"``.  When
nothing could be run the server closes with APPLICATION_ERROR, an
``exit_status`` and a reason starting with a fixed prefix, so a client that
sees only the code and reason can still give the shell's status:

=========================== =========== ====================================
Reason prefix               exit_status Meaning
=========================== =========== ====================================
``command not found: ``     127         argv[0] does not exist
``no such action: ``        127         the action is not configured
``cannot execute: ``        126         argv[0] exists but could not be run
``bad params: ``            nil         OPEN params are missing or invalid
``bad stream frame``        nil         see above
``action failed``           nil         an action's callable raised
=========================== =========== ====================================

Channel kinds
=============

``exec``: params ``{"argv": [str, ...] (non-empty), "reason": str | nil}``.
argv is run with ``execve`` semantics (no shell ever sees it, so ``$(id)``,
``;`` or ``|`` are plain arguments), looked up on the PATH below, in a new
session (its own process group), with standard input, output and error as
pipes streamed both ways.  SIGNAL frames go to the process group; RESIZE
frames are ignored.

``shell``: params ``{"term": str, "rows": int, "cols": int, "reason": str |
nil, "pty": bool}`` (defaults ``"dumb"``, 24, 80).  The service user's login shell (from
the password database, else ``/bin/sh``; :func:`make_shell_handler` can name
another) runs with ``-l`` on a new
pseudo-terminal as its controlling terminal (session leader), with the
initial window size set.  STDIN frames are written to the terminal, RESIZE
frames set its window size (the foreground job gets SIGWINCH), SIGNAL
frames go to the terminal's foreground process group.  With ``"pty": false``
(absent means true) there is no terminal: the shell runs as ``exec`` runs a
command, with pipes for its three streams (STDOUT and STDERR apart, RESIZE
ignored, the client's EOF closes its input) and no ``TERM``.

Environment.  Commands never inherit the daemon's environment.  They get
exactly ``PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin``,
``HOME`` (the service user's home directory) and ``LANG`` (the daemon's own
if it looks like a locale name, else ``C.UTF-8``); a shell also gets
``TERM`` (from the params, on a terminal only), ``SHELL``, ``USER`` and ``LOGNAME``.  The
working directory is the service user's home, or ``/`` if it has none.

When the channel ends, for whatever reason (the command finished, the
client closed or cancelled it, the session ended), the process group is
killed with SIGKILL, so nothing started on a channel outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import pwd
import re
import signal
import struct
import termios
from collections.abc import Awaitable, Callable
from typing import Any

from pstp.asyncio.connection import Channel, ChannelHandler
from pstp.daemon.policy.model import Decision
from pstp.exceptions import PstpError, RemoteProtocolError
from pstp.protocol.kinds import BadParams, ExecOpen, ShellOpen
from pstp.protocol.streams import (
    ACTION_FAILED,
    BAD_FRAME,
    BAD_PARAMS,
    CANNOT_EXECUTE,
    FRAME_HEADER_LEN,
    MAX_FRAME,
    NO_SUCH_ACTION,
    NOT_FOUND,
    RESIZE,
    SIGNAL,
    SIGNALS,
    STDERR,
    STDIN,
    STDOUT,
    Direction,
    Frame,
    FrameDecoder,
    decode_resize,
    decode_signal,
    encode_frame,
    encode_resize,
    encode_signal,
)
from pstp.wire.messages import ChannelCode

__all__ = [
    "ACTION_FAILED",
    "BAD_FRAME",
    "BAD_PARAMS",
    "CANNOT_EXECUTE",
    "CHUNK",
    "FRAME_HEADER_LEN",
    "MAX_FRAME",
    "NOT_FOUND",
    "NO_SUCH_ACTION",
    "RESIZE",
    "SAFE_PATH",
    "SIGNAL",
    "SIGNALS",
    "STDERR",
    "STDIN",
    "STDOUT",
    "TIMEOUT_STATUS",
    "Direction",
    "Frame",
    "FrameDecoder",
    "FrameWriter",
    "decode_resize",
    "decode_signal",
    "encode_frame",
    "encode_resize",
    "encode_signal",
    "exec_handler",
    "exit_status",
    "fail_channel",
    "make_shell_handler",
    "run_process",
    "safe_environment",
    "service_home",
    "shell_handler",
]

_log = logging.getLogger("pstp.daemon.exec")

#: Largest payload we write, and how much we read from a pipe or terminal at once.
CHUNK = 64 * 1024

#: PATH given to every command.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Status of a command stopped by its timeout, as ``timeout(1)`` reports it.
TIMEOUT_STATUS = 124

_REASON_MAX = 200  # characters, docs/protocol.md §14.4
_LOCALE_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_KILL_GRACE = 2.0  # seconds to wait for output after the process is gone


class FrameWriter:
    """Writes whole frames to a channel, one frame at a time, with an optional output cap.

    Several tasks (standard output, standard error) share one channel; a lock
    keeps their frames from interleaving, and each write waits for the
    channel's window, which is what throttles a fast process.

    Args:
        channel: the channel to write to.
        limit: total STDOUT + STDERR payload bytes allowed; beyond it output is
            dropped and a note is sent once on STDERR.
    """

    def __init__(self, channel: Channel, limit: int | None = None) -> None:
        self.channel = channel
        self.limit = limit
        self.sent = 0
        self.cut = False
        self._lock = asyncio.Lock()

    async def send(self, frame_type: int, data: bytes) -> None:
        """Send ``data`` as one or more frames (payloads of at most 64 KiB).

        Raises:
            ChannelError: the channel was closed meanwhile.
            ConnectionClosed: the session ended.
        """
        if self.limit is not None:
            room = self.limit - self.sent
            if len(data) > room:
                data = data[: max(room, 0)]
                if not self.cut:
                    self.cut = True
                    await self._write(frame_type, data)
                    await self.note(f"\n[pstp: output cut at {self.limit} bytes]\n")
                    return
        await self._write(frame_type, data)

    async def note(self, text: str) -> None:
        """Send a note from the server on STDERR (not counted against the cap).

        Raises:
            ChannelError: the channel was closed meanwhile.
            ConnectionClosed: the session ended.
        """
        async with self._lock:
            await self.channel.write(encode_frame(STDERR, text.encode()))

    async def _write(self, frame_type: int, data: bytes) -> None:
        for off in range(0, len(data), CHUNK):
            piece = data[off : off + CHUNK]
            async with self._lock:
                await self.channel.write(encode_frame(frame_type, piece))
            self.sent += len(piece)


# -- process environment ------------------------------------------------------------


def service_home() -> str:
    """The service user's home directory, or ``/`` if it has none."""
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"
    return home if home and os.path.isdir(home) else "/"


def safe_environment() -> dict[str, str]:
    """The whole environment a command gets: PATH, HOME and LANG (see the module docs)."""
    lang = os.environ.get("LANG", "")
    return {
        "PATH": SAFE_PATH,
        "HOME": service_home(),
        "LANG": lang if _LOCALE_RE.match(lang) else "C.UTF-8",
    }


def exit_status(returncode: int) -> int:
    """A process's status as a shell reports it: the exit code, or 128 + the signal."""
    return returncode if returncode >= 0 else 128 - returncode


async def fail_channel(
    channel: Channel,
    reason: str,
    status: int | None = None,
    code: int = ChannelCode.APPLICATION_ERROR,
) -> None:
    """Close ``channel`` with ``code``, ``reason`` (cut to 200 characters) and a status.

    The code tells the client why (docs/protocol.md §14.4, §17.3); the reason keeps
    its old prefix and the status its old value so that older clients still read them.
    """
    await channel.close(exit_status=status, code=code, reason=reason[:_REASON_MAX])


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _signal_number(name: str) -> int:
    return int(getattr(signal, "SIG" + name))


async def _pump_frames(
    channel: Channel,
    on_frame: Callable[[Frame], Awaitable[None]],
    on_eof: Callable[[], Awaitable[None]],
) -> None:
    """Read the client's frames and act on them until its EOF (then call ``on_eof``).

    Raises:
        RemoteProtocolError: a bad frame.
        ChannelError: the channel was closed with an error code.
        ConnectionClosed: the session ended.
    """
    decoder = FrameDecoder(Direction.TO_SERVER)
    while data := await channel.read(CHUNK):
        for frame in decoder.feed(data):
            await on_frame(frame)
    decoder.eof()
    if not channel.closed.done():
        await on_eof()


async def _race(
    channel: Channel,
    work: asyncio.Task[int],
    inputs: asyncio.Task[None],
    timeout: float | None,
) -> int | None:
    """Wait for ``work``, unless the channel closes, a bad frame arrives or time runs out.

    The channel's end is watched apart from the input pump, which may be
    blocked handing input to a process that does not read it.

    Returns:
        The work's status; ``None`` if the channel went away or a bad frame
        arrived (the channel is then closed).

    Raises:
        TimeoutError: ``timeout`` seconds passed.
        PstpError: the channel or session failed.
    """
    waiting: set[asyncio.Future[Any]] = {work, inputs, channel.closed}
    async with asyncio.timeout(timeout):
        while True:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                return work.result()
            if inputs in done:
                exc = inputs.exception()
                if isinstance(exc, RemoteProtocolError):
                    _log.info("channel %s (%s): %s", channel.id, channel.kind, exc)
                    await fail_channel(channel, BAD_FRAME)
                    return None
                if exc is not None:
                    raise exc
                waiting.discard(inputs)  # the client's EOF: the process goes on
            if channel.closed.done():
                return None  # the client went away: nothing to report to


async def _finish(*tasks: asyncio.Task[None] | asyncio.Task[int]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, PstpError, OSError):
            await task


# -- exec ---------------------------------------------------------------------------


async def run_process(
    channel: Channel,
    argv: list[str],
    *,
    stdin: bool = True,
    timeout: float | None = None,
    max_output: int | None = None,
    env: dict[str, str] | None = None,
    as_shell: bool = False,
) -> int | None:
    """Run ``argv`` (no shell) and stream it over ``channel`` in stream frames.

    Used by ``exec``, by argv actions and by a ``shell`` without a terminal.
    The process runs in its own session with :func:`safe_environment` (or
    ``env``); its process group is killed when this returns, however it returns.

    Args:
        channel: the accepted channel.
        argv: program and arguments, passed to ``execve`` as they are.
        stdin: forward STDIN frames to the process (else it reads /dev/null
            and STDIN frames are dropped).
        timeout: seconds before the process group is killed (status 124).
        max_output: cap on STDOUT + STDERR bytes (see :class:`FrameWriter`).
        env: the whole environment (default: :func:`safe_environment`).
        as_shell: ``argv[0]`` is the shell: a program that cannot be started is
            reported as ``cannot execute`` (126) even if it does not exist (§17.5).

    Returns:
        The exit status (128 + n for signal n, 124 on timeout), or ``None`` when
        the channel has already been closed (nothing could be run, a bad
        frame, or the client went away).

    Raises:
        ChannelError: the channel failed while output was being sent.
        ConnectionClosed: the session ended.
    """
    # A shell that cannot be found is "cannot execute" (§17.5), as with a terminal.
    missing: tuple[type[OSError], ...] = () if as_shell else (FileNotFoundError, NotADirectoryError)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=safe_environment() if env is None else env,
            cwd=service_home(),
            start_new_session=True,
        )
    except missing:
        await fail_channel(channel, f"{NOT_FOUND}: {argv[0]}", 127, ChannelCode.NOT_FOUND)
        return None
    except ValueError:  # an embedded NUL: no execve can carry it
        await fail_channel(
            channel,
            f"{BAD_PARAMS}: an argument contains a NUL character",
            code=ChannelCode.BAD_PARAMS,
        )
        return None
    except OSError as exc:
        _log.info("cannot execute %r: %s", argv[0], exc)
        await fail_channel(channel, f"{CANNOT_EXECUTE}: {argv[0]}", 126, ChannelCode.CANNOT_EXECUTE)
        return None
    writer = FrameWriter(channel, max_output)
    assert proc.stdout is not None and proc.stderr is not None

    async def pump(stream: asyncio.StreamReader, frame_type: int) -> None:
        # Read at most CHUNK at a time and wait for the channel before reading
        # more: a process that outruns the client blocks on its full pipe.
        while data := await stream.read(CHUNK):
            await writer.send(frame_type, data)

    async def work() -> int:
        assert proc.stdout is not None and proc.stderr is not None
        await asyncio.gather(pump(proc.stdout, STDOUT), pump(proc.stderr, STDERR))
        return exit_status(await proc.wait())

    stdin_open = stdin

    async def on_frame(frame: Frame) -> None:
        nonlocal stdin_open
        if frame.type == STDIN and stdin_open and proc.stdin is not None and frame.payload:
            try:
                proc.stdin.write(frame.payload)
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                stdin_open = False  # the process closed its input: drop the rest
        elif frame.type == SIGNAL:
            _kill_group(proc.pid, _signal_number(decode_signal(frame.payload)))

    async def on_eof() -> None:
        if proc.stdin is not None:
            proc.stdin.close()

    loop = asyncio.get_running_loop()
    main = loop.create_task(work())
    inputs = loop.create_task(_pump_frames(channel, on_frame, on_eof))
    try:
        return await _race(channel, main, inputs, timeout)
    except TimeoutError:
        _kill_group(proc.pid)
        # What the process wrote before it died still goes out, then the note.
        with contextlib.suppress(TimeoutError, PstpError, OSError):
            await asyncio.wait_for(asyncio.shield(main), _KILL_GRACE)
        await writer.note(f"pstp: timed out after {timeout:g} s\n")
        return TIMEOUT_STATUS
    finally:
        _kill_group(proc.pid)
        await _finish(main, inputs)
        if proc.stdin is not None:
            proc.stdin.close()
        await _reap(proc)


async def _settle(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(_KILL_GRACE):
            for stream in (proc.stdout, proc.stderr):
                while stream is not None and await stream.read(CHUNK):
                    pass
            await proc.wait()


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Read a killed process's pipes to their end and wait for it (at most 2 s).

    Its transports then close now rather than whenever the loop gets to them.
    The handler owns this clean-up: cancelled meanwhile (its session ended), it
    still lets the clean-up finish, then stays cancelled (docs/protocol.md §17.3:
    nothing started on a channel outlives it).
    """
    settling = asyncio.get_running_loop().create_task(_settle(proc))
    cancelled: asyncio.CancelledError | None = None
    while not settling.done():
        try:
            await asyncio.shield(settling)
        except asyncio.CancelledError as exc:
            cancelled = exc  # bounded by _KILL_GRACE: finish first
    if cancelled is not None:
        raise cancelled


async def exec_handler(channel: Channel) -> int | None:
    """Serve an ``exec`` channel: run ``params["argv"]`` without a shell.

    When the policy allowed the channel, the argv its decision gives runs
    instead (:attr:`pstp.daemon.policy.Decision.argv`: the arguments a path
    pattern matched, resolved), so what the policy checked is what runs.

    Returns:
        The exit status, or ``None`` if the channel was closed with an error.

    Raises:
        ChannelError: the channel failed while output was being sent.
        ConnectionClosed: the session ended.
    """
    try:
        opened = ExecOpen.from_params(channel.params)
    except BadParams as exc:
        await fail_channel(channel, exc.reason, code=exc.code)
        return None
    verdict = channel.verdict
    if isinstance(verdict, Decision) and verdict.allowed and verdict.argv:
        return await run_process(channel, list(verdict.argv))
    return await run_process(channel, opened.argv)


# -- shell --------------------------------------------------------------------------


def _login_shell() -> tuple[str, str]:
    """The service user's (shell, user name); ``/bin/sh`` if none is usable."""
    try:
        entry = pwd.getpwuid(os.getuid())
    except KeyError:
        return "/bin/sh", str(os.getuid())
    shell = entry.pw_shell
    if not shell or not os.path.isabs(shell) or not os.access(shell, os.X_OK):
        shell = "/bin/sh"
    return shell, entry.pw_name


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def _wait_fd(fd: int, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _read_master(fd: int) -> bytes:
    """Read what the terminal has; ``b""`` once every slave end is closed.

    The reader is registered only while we wait here, so while the channel
    write of the previous chunk waits for window, the terminal is not read
    and a flooding program blocks on its full terminal buffer.
    """
    while True:
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno == errno.EIO:  # Linux: the slave side is closed
                return b""
            raise
        await _wait_fd(fd, write=False)


async def _write_master(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await _wait_fd(fd, write=True)
            continue
        view = view[n:]


async def shell_handler(channel: Channel) -> int | None:
    """Serve a ``shell`` channel: the service user's login shell on a new pseudo-terminal.

    Returns:
        The shell's exit status, or ``None`` if the channel was closed with an error.

    Raises:
        ChannelError: the channel failed while output was being sent.
        ConnectionClosed: the session ended.
    """
    return await _serve_shell(channel, None)


def make_shell_handler(shell: str | None = None) -> ChannelHandler:
    """A ``shell`` handler running ``shell`` (an absolute path) instead of the login shell.

    Args:
        shell: the program, started with ``-l``; ``None``: the login shell
            (then this is :func:`shell_handler`).

    Returns:
        The handler, which behaves as :func:`shell_handler` otherwise.
    """

    async def handle(channel: Channel) -> int | None:
        return await _serve_shell(channel, shell)

    return handle


async def _serve_shell(channel: Channel, shell: str | None) -> int | None:
    try:
        opened = ShellOpen.from_params(channel.params)
    except BadParams as exc:
        await fail_channel(channel, exc.reason, code=exc.code)
        return None
    term, rows, cols = opened.term, opened.rows, opened.cols
    login_shell, user = _login_shell()
    shell = shell or login_shell
    env = {**safe_environment(), "SHELL": shell, "USER": user, "LOGNAME": user}
    if not opened.pty:
        # No terminal (``pty`` false, §17.5): pipes, as ``exec`` has, so that the
        # client's EOF closes the shell's input and it exits; no TERM, as ssh -T.
        return await run_process(channel, [shell, "-l"], env=env, as_shell=True)
    env["TERM"] = term
    master, slave = os.openpty()
    try:
        _set_winsize(slave, rows, cols)

        def controlling_terminal() -> None:  # runs in the child, before exec
            # A new session whose controlling terminal is the slave.  Done here,
            # not with start_new_session: uvloop runs this hook before its own
            # setup, when stdin is not yet the slave.
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        proc = await asyncio.create_subprocess_exec(
            shell,
            "-l",
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=service_home(),
            preexec_fn=controlling_terminal,
        )
    except OSError as exc:
        os.close(master)
        _log.info("cannot start shell %r: %s", shell, exc)
        await fail_channel(channel, f"{CANNOT_EXECUTE}: {shell}", 126, ChannelCode.CANNOT_EXECUTE)
        return None
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # else the master never sees EIO when the shell exits
    os.set_blocking(master, False)
    writer = FrameWriter(channel)

    async def pump_output() -> None:
        while data := await _read_master(master):
            await writer.send(STDOUT, data)

    async def work() -> int:
        output = asyncio.ensure_future(pump_output())
        try:
            status = exit_status(await proc.wait())
            # The shell is gone; its output is drained when every slave end is
            # closed.  A job that kept the terminal open is not waited for long.
            try:
                await asyncio.wait_for(asyncio.shield(output), _KILL_GRACE)
            except TimeoutError:
                _kill_group(proc.pid)
            return status
        finally:
            output.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, PstpError):
                await output

    async def on_frame(frame: Frame) -> None:
        if frame.type == STDIN and frame.payload:
            with contextlib.suppress(OSError):  # the terminal is gone: drop input
                await _write_master(master, frame.payload)
        elif frame.type == RESIZE:
            with contextlib.suppress(OSError):
                _set_winsize(master, *decode_resize(frame.payload))
        elif frame.type == SIGNAL:
            sig = _signal_number(decode_signal(frame.payload))
            try:
                group = os.tcgetpgrp(master)
            except OSError:
                group = proc.pid
            _kill_group(group, sig)

    async def on_eof() -> None:
        with contextlib.suppress(OSError):
            veof = termios.tcgetattr(master)[6][termios.VEOF]
            await _write_master(master, veof if isinstance(veof, bytes) else bytes([veof]))

    loop = asyncio.get_running_loop()
    main = loop.create_task(work())
    inputs = loop.create_task(_pump_frames(channel, on_frame, on_eof))
    try:
        return await _race(channel, main, inputs, None)
    finally:
        _kill_group(proc.pid)
        await _finish(main, inputs)
        os.close(master)  # hangs up the terminal: the rest of the session gets SIGHUP
        await _reap(proc)
