"""Stream frames, ``exec`` and ``shell`` channels with real processes and a real PTY."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest

import pstp
from pstp.asyncio.client import connect
from pstp.asyncio.connection import Channel, ChannelHandler, Session
from pstp.asyncio.server import serve
from pstp.client import remote
from pstp.client.remote import run_exec
from pstp.daemon.exec import (
    BAD_FRAME,
    SAFE_PATH,
    STDIN,
    STDOUT,
    Direction,
    FrameDecoder,
    encode_frame,
    encode_resize,
    encode_signal,
    exec_handler,
    exit_status,
    make_shell_handler,
    service_home,
    shell_handler,
)
from pstp.exceptions import ChannelError
from pstp.wire.messages import ChannelCode
from tests.cli.test_pair import env_for, free_port
from tests.helpers import PAIR_KEY, SERVER_ID, TIMEOUT, make_keyring

PY = sys.executable


def test_exit_status_is_shell_style() -> None:
    """Exit codes pass; death by signal n is 128 + n."""
    assert [exit_status(rc) for rc in (0, 7, -9, -15)] == [0, 7, 137, 143]


# -- exec over a real session -------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(handlers: Mapping[str, ChannelHandler]) -> AsyncIterator[Session]:
    """A session to a loopback server; on exit, first wait for its handlers to finish.

    Ending the session cancels handlers still running; waiting first lets each
    finish cleaning up after its process, as it would in a long-lived daemon.
    """
    running: set[asyncio.Task[object]] = set()

    def track(handler: ChannelHandler) -> ChannelHandler:
        async def run(ch: Channel) -> int | None:
            task = asyncio.current_task()
            assert task is not None
            running.add(task)
            try:
                return await handler(ch)
            finally:
                running.discard(task)

        return run

    server = await serve(
        None,
        "127.0.0.1",
        0,
        keyring=make_keyring(),
        own_id=SERVER_ID,
        handlers={kind: track(h) for kind, h in handlers.items()},
    )
    async with server, await connect("127.0.0.1", server.port, pair_key=PAIR_KEY) as s:
        yield s
        for _ in range(int(TIMEOUT * 100)):
            if not running:
                break
            await asyncio.sleep(0.01)


def session() -> contextlib.AbstractAsyncContextManager[Session]:
    """A session to a server serving exec, shell (/bin/sh) and login-shell."""
    return serving(
        {
            "exec": exec_handler,
            "shell": make_shell_handler("/bin/sh"),
            "login-shell": shell_handler,
        }
    )


async def run(s: Session, argv: list[str], stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    """Run argv; return (status, stdout, stderr)."""
    out, err = bytearray(), bytearray()

    async def source() -> AsyncIterator[bytes]:
        assert stdin is not None
        for off in range(0, len(stdin), 100_000):
            yield stdin[off : off + 100_000]

    status = await asyncio.wait_for(
        run_exec(
            s,
            argv,
            stdin=source() if stdin is not None else None,
            stdout=out.extend,
            stderr=err.extend,
        ),
        TIMEOUT * 2,
    )
    return status, bytes(out), bytes(err)


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def gone(pid: int) -> bool:
    """Wait (bounded) until the process is gone; True if it went."""
    for _ in range(int(TIMEOUT * 50)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_output_and_exit_status_pass_through() -> None:
    """A command's stdout and exit code reach the client unchanged."""
    async with session() as s:
        code = "import sys; print('out'); sys.exit(7)"
        assert await run(s, [PY, "-c", code]) == (7, b"out\n", b"")
        assert (await run(s, ["true"]))[0] == 0


async def test_stderr_is_separate_from_stdout() -> None:
    """stderr arrives as STDERR frames, not mixed into stdout."""
    async with session() as s:
        code = "import sys; sys.stdout.write('to-out'); sys.stderr.write('to-err')"
        assert await run(s, [PY, "-c", code]) == (0, b"to-out", b"to-err")


async def test_stdin_streams_five_mib_intact() -> None:
    """5 MiB through `cat` come back byte for byte; EOF on the channel closes its stdin."""
    data = os.urandom(5 << 20)
    async with session() as s:
        status, out, err = await run(s, ["cat"], stdin=data)
    assert (status, err) == (0, b"")
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()


async def test_shell_metacharacters_are_passed_literally() -> None:
    """argv never meets a shell: $(id), ;, | and backticks are plain arguments."""
    async with session() as s:
        args = ["$(id)", ";", "|", "`ls`", "a b", "*"]
        assert await run(s, ["echo", *args]) == (0, " ".join(args).encode() + b"\n", b"")


async def test_death_by_signal_gives_128_plus_n() -> None:
    """A process killed by signal n exits 128 + n; a SIGNAL frame delivers TERM."""
    async with session() as s:
        code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        assert (await run(s, [PY, "-c", code]))[0] == 128 + signal.SIGKILL
        ch = await s.open_channel("exec", {"argv": ["sleep", "30"], "reason": None})
        await ch.write(encode_signal("TERM"))
        assert await asyncio.wait_for(ch.wait_closed(), TIMEOUT) == 128 + signal.SIGTERM


async def test_missing_command_is_127_with_a_clear_reason() -> None:
    """A command that does not exist: CLOSE NOT_FOUND + reason; run_exec gives 127."""
    async with session() as s:
        status, out, err = await run(s, ["no-such-command-pstp"])
        assert (status, out) == (127, b"")
        assert err == b"pstp: command not found: no-such-command-pstp\n"
        ch = await s.open_channel("exec", {"argv": ["/etc/hostname"]})
        with pytest.raises(ChannelError) as info:
            await asyncio.wait_for(ch.wait_closed(), TIMEOUT)
        assert info.value.code == ChannelCode.CANNOT_EXECUTE
        assert info.value.reason == "cannot execute: /etc/hostname"
        assert (await run(s, ["/etc/hostname"]))[0] == 126


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"argv": []},
        {"argv": "ls"},
        {"argv": [""]},
        {"argv": ["ls"], "reason": 3},
        {"argv": ["echo", "a\x00b"]},
    ],
)
async def test_bad_exec_params_close_with_an_error(params: dict[str, object]) -> None:
    """Missing or ill-typed params close the channel with BAD_PARAMS 'bad params: ...'."""
    async with session() as s:
        ch = await s.open_channel("exec", params)  # type: ignore[arg-type]
        with pytest.raises(ChannelError) as info:
            await asyncio.wait_for(ch.read_all(), TIMEOUT)
        assert info.value.code == ChannelCode.BAD_PARAMS
        assert info.value.reason.startswith("bad params: ")


async def first_line(ch: Channel) -> bytes:
    """The first line of STDOUT frames on ``ch``."""
    decoder, buf = FrameDecoder(Direction.TO_CLIENT), b""
    while b"\n" not in buf:
        for frame in decoder.feed(await asyncio.wait_for(ch.read(), TIMEOUT)):
            buf += frame.payload
    return buf.split(b"\n")[0]


SPAWNER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen(['sleep', '60'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.parametrize("how", ["close", "close while stdin is stuck", "bad frame", "huge frame"])
async def test_channel_end_kills_the_process_group(how: str) -> None:
    """Cancelling the channel or sending a bad frame kills the command and its children."""
    async with session() as s:
        ch = await s.open_channel("exec", {"argv": [PY, "-c", SPAWNER]})
        grandchild = int(await first_line(ch))
        assert alive(grandchild)
        sent = 0

        async def flood() -> None:
            # The command never reads stdin: the server's pipe and our window fill up.
            nonlocal sent
            while True:
                await ch.write(encode_frame(STDIN, bytes(65536)))
                sent += 65536

        if how == "close while stdin is stuck":
            task = asyncio.create_task(flood())
            while sent < 512 * 1024:
                await asyncio.sleep(0.01)
            await ch.close(code=ChannelCode.CANCELLED)
            with contextlib.suppress(ChannelError):
                await task
        elif how == "close":
            await ch.close(code=ChannelCode.CANCELLED)
        else:
            await ch.write(
                b"\x09\x00\x00\x00\x00" if how == "bad frame" else b"\x00\xff\xff\xff\xff"
            )
            with pytest.raises(ChannelError) as info:
                await asyncio.wait_for(ch.read_all(), TIMEOUT)
            assert (info.value.code, info.value.reason) == (
                ChannelCode.APPLICATION_ERROR,
                BAD_FRAME,
            )
        assert await gone(grandchild)
        assert (await run(s, ["true"]))[0] == 0  # the session is fine


async def test_unread_output_holds_the_process_back(tmp_path: Path) -> None:
    """A client that does not read stops the command: output is never buffered without bound."""
    marker = tmp_path / "finished"
    code = f"import sys; sys.stdout.buffer.write(bytes(8 << 20)); open({str(marker)!r}, 'w')"
    async with session() as s:
        ch = await s.open_channel("exec", {"argv": [PY, "-c", code]})
        for _ in range(25):  # 0.5 s in which an unthrottled writer would long be done
            await asyncio.sleep(0.02)
            assert not marker.exists()
        decoder, size = FrameDecoder(Direction.TO_CLIENT), 0
        while data := await asyncio.wait_for(ch.read(), TIMEOUT):
            size += sum(len(f.payload) for f in decoder.feed(data))
        assert (size, await ch.wait_closed()) == (8 << 20, 0)
        assert marker.exists()


async def test_environment_and_directory_are_minimal() -> None:
    """Commands see only PATH, HOME and LANG, and start in the service user's home."""
    os.environ["PSTP_DAEMON_ONLY"] = "not for commands"
    try:
        async with session() as s:
            status, out, _ = await run(s, ["env"])
            _, cwd, _ = await run(s, ["pwd"])
    finally:
        del os.environ["PSTP_DAEMON_ONLY"]
    env = dict(line.split("=", 1) for line in out.decode().splitlines())
    assert status == 0
    assert set(env) == {"PATH", "HOME", "LANG"}
    assert env["PATH"] == SAFE_PATH
    assert env["HOME"] == service_home()
    assert cwd.decode().strip() == os.path.realpath(service_home())


async def test_command_that_ignores_stdin_still_ends() -> None:
    """A command that exits without reading its input ends the channel; stdin is dropped."""
    async with session() as s:
        status, _, _ = await run(s, ["true"], stdin=os.urandom(3 << 20))
        assert status == 0


# -- shell over a real PTY -----------------------------------------------------------------


class Terminal:
    """The client end of a shell channel: sends keys, collects STDOUT."""

    def __init__(self, ch: Channel) -> None:
        self.ch = ch
        self.decoder = FrameDecoder(Direction.TO_CLIENT)
        self.screen = b""

    async def type(self, text: str) -> None:
        """Send keystrokes."""
        await self.ch.write(encode_frame(STDIN, text.encode()))

    async def expect(self, pattern: str) -> re.Match[bytes]:
        """Read until ``pattern`` appears in the output; consume up to it."""
        regex = re.compile(pattern.encode())

        async def wait() -> re.Match[bytes]:
            while True:
                m = regex.search(self.screen)
                if m:
                    self.screen = self.screen[m.end() :]
                    return m
                data = await self.ch.read()
                assert data, f"channel ended; output so far: {self.screen!r}"
                for frame in self.decoder.feed(data):
                    assert frame.type == STDOUT
                    self.screen += frame.payload

        return await asyncio.wait_for(wait(), TIMEOUT * 2)


async def test_shell_has_a_pty_window_size_resize_and_exit_status() -> None:
    """The login shell runs on a PTY of the asked size; RESIZE applies; exit 3 is the status."""
    async with session() as s:
        ch = await s.open_channel("shell", {"term": "xterm", "rows": 30, "cols": 90})
        t = Terminal(ch)
        await t.type("echo hello-$((40+2)) $TERM; stty size\n")
        await t.expect(r"hello-42 xterm\r\n")
        await t.expect(r"30 90\r\n")
        await t.type("tty; test -t 0 && echo is-$((1+1))-tty\n")
        await t.expect(r"/dev/pts/\d+\r\nis-2-tty")
        await ch.write(encode_resize(40, 100))
        await t.type("stty size\n")
        await t.expect(r"40 100\r\n")
        await t.type("exit 3\n")
        assert await asyncio.wait_for(ch.wait_closed(), TIMEOUT) == 3


async def test_shell_signal_interrupts_the_foreground_job_and_eof_ends_it() -> None:
    """SIGNAL INT stops the foreground job, not the shell; EOF (^D) then ends the shell."""
    async with session() as s:
        ch = await s.open_channel("shell", {"term": "dumb", "rows": 24, "cols": 80})
        t = Terminal(ch)
        # The job says when it runs (then it is the foreground group): no race with INT.
        await t.type("echo pid=$$; sh -c 'echo sleeping-$((2+3)); exec sleep 30'\n")
        shell_pid = int((await t.expect(r"pid=(\d+)\r\n"))[1])
        await t.expect(r"sleeping-5\r\n")
        await ch.write(encode_signal("INT"))
        await t.type("echo after-$((1+1))\n")
        await t.expect(r"after-2\r\n")
        assert alive(shell_pid)
        await ch.write_eof()
        assert await asyncio.wait_for(ch.wait_closed(), TIMEOUT) == 0


async def test_shell_input_larger_than_the_terminal_buffer_arrives_whole() -> None:
    """300 KB typed into `wc -l` pass through the PTY's small input buffer intact."""
    async with session() as s:
        ch = await s.open_channel("shell", {})
        t = Terminal(ch)
        await t.type("stty -echo; wc -l; echo counted-$((1+1))\n")
        await ch.write(encode_frame(STDIN, (("x" * 99) + "\n").encode() * 3000 + b"\x04"))
        await t.expect(r"(?<!\d)3000\r\ncounted-2\r\n")  # echo may precede it
        await t.type("exit\n")
        assert await asyncio.wait_for(ch.wait_closed(), TIMEOUT) == 0


async def test_closing_a_shell_channel_kills_the_shell() -> None:
    """When the client cancels the channel the shell is killed."""
    async with session() as s:
        ch = await s.open_channel("shell", {})
        t = Terminal(ch)
        await t.type("echo pid=$$\n")
        shell_pid = int((await t.expect(r"pid=(\d+)\r\n"))[1])
        await ch.close(code=ChannelCode.CANCELLED)
        assert await gone(shell_pid)


async def test_default_shell_is_the_login_shell_from_the_password_database() -> None:
    """shell_handler runs the service user's login shell, with SHELL set to it."""
    async with session() as s:
        ch = await s.open_channel("login-shell", {"term": "dumb"})
        t = Terminal(ch)
        # No history file: the test must leave the service user's home as it was.
        await t.type("unset HISTFILE; echo shell=$SHELL; exit 4\n")
        expected = pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
        await t.expect(f"shell={re.escape(expected)}\r\n")
        assert await asyncio.wait_for(ch.wait_closed(), TIMEOUT * 2) == 4


@pytest.mark.parametrize(
    "params",
    [
        {"rows": "24"},
        {"cols": -1},
        {"rows": True},
        {"term": "x y"},
        {"reason": ["a"]},
        {"pty": 0},
        {"pty": "false"},
    ],
)
async def test_bad_shell_params_close_with_an_error(params: dict[str, object]) -> None:
    """Ill-typed shell params close the channel with BAD_PARAMS 'bad params: ...'."""
    async with session() as s:
        ch = await s.open_channel("shell", params)  # type: ignore[arg-type]
        with pytest.raises(ChannelError) as info:
            await asyncio.wait_for(ch.read_all(), TIMEOUT)
        assert info.value.code == ChannelCode.BAD_PARAMS
        assert info.value.reason.startswith("bad params: ")


async def read_frames(ch: Channel) -> tuple[bytes, bytes]:
    """Everything a channel sends until it closes, as (STDOUT, STDERR) payloads."""
    decoder = FrameDecoder(Direction.TO_CLIENT)
    out, err = bytearray(), bytearray()
    while data := await asyncio.wait_for(ch.read(), TIMEOUT * 2):
        for frame in decoder.feed(data):
            (out if frame.type == STDOUT else err).extend(frame.payload)
    return bytes(out), bytes(err)


async def test_shell_without_a_pty_uses_pipes_and_ends_at_eof() -> None:
    """``pty`` false: no terminal, no TERM, stdout and stderr apart, the client's EOF ends it."""
    async with session() as s:
        ch = await s.open_channel("shell", {"term": "xterm", "pty": False})
        script = (
            "test -t 0 || echo no-tty; echo term=${TERM-unset}; echo oops >&2; "
            "echo shell=$SHELL; exec cat\n"
        )
        await ch.write(encode_frame(STDIN, script.encode()))
        await asyncio.sleep(0.2)  # not needed for the test to pass: cat may get it or sh
        await ch.write(encode_frame(STDIN, b"got=typed\n"))
        await ch.write_eof()
        out, err = await read_frames(ch)
        assert out == b"no-tty\nterm=unset\nshell=/bin/sh\ngot=typed\n"
        assert err == b"oops\n"
        assert await asyncio.wait_for(ch.wait_closed(), TIMEOUT) == 0


async def test_shell_without_a_pty_at_once_eof_ends_and_exit_status_passes() -> None:
    """No input at all (stdin /dev/null on the client) ends the shell; `exit 3` is 3."""
    async with session() as s:
        ch = await s.open_channel("shell", {"pty": False})
        await ch.write_eof()
        assert await read_frames(ch) == (b"", b"")
        assert await asyncio.wait_for(ch.wait_closed(), TIMEOUT) == 0
        ch = await s.open_channel("shell", {"pty": False})
        await ch.write(encode_frame(STDIN, b"echo hi; exit 3\n"))
        await ch.write_eof()
        assert await read_frames(ch) == (b"hi\n", b"")
        assert await asyncio.wait_for(ch.wait_closed(), TIMEOUT) == 3


async def test_shell_that_cannot_start_without_a_pty_is_cannot_execute() -> None:
    """A missing shell is CANNOT_EXECUTE, status 126, with or without a terminal."""
    async with serving({"shell": make_shell_handler("/nonexistent/sh")}) as s:
        for pty in (False, True):
            ch = await s.open_channel("shell", {"pty": pty})
            with pytest.raises(ChannelError) as info:
                await asyncio.wait_for(ch.read_all(), TIMEOUT)
            assert info.value.code == ChannelCode.CANNOT_EXECUTE
            assert info.value.reason == "cannot execute: /nonexistent/sh"
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            assert await remote.run_shell(s, pty=False, stdin_fd=null) == 126
        finally:
            os.close(null)


# -- the client side in this process: run_shell on a PTY, iter_fd --------------------------


async def read_fd(fd: int) -> bytes:
    """Wait until ``fd`` is readable and read what is there."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 65536)


async def test_run_shell_on_a_local_pty_resizes_and_restores_the_terminal() -> None:
    """run_shell puts the terminal in raw mode, passes SIGWINCH on, and restores it."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    before = termios.tcgetattr(slave)
    screen = b""

    async def expect(pattern: str) -> re.Match[bytes]:
        nonlocal screen
        regex = re.compile(pattern.encode())
        while not (m := regex.search(screen)):
            screen += await asyncio.wait_for(read_fd(master), TIMEOUT)
        screen = screen[m.end() :]
        return m

    try:
        async with session() as s:
            shell = asyncio.create_task(
                remote.run_shell(s, stdin_fd=slave, stdout_fd=slave, term="xterm")
            )
            for _ in range(int(TIMEOUT * 100)):
                if not termios.tcgetattr(slave)[3] & termios.ICANON:
                    break
                await asyncio.sleep(0.01)
            os.write(master, b"echo hello-$((40+2)) $TERM\n")
            await expect(r"hello-42 xterm\r\n")
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
            os.kill(os.getpid(), signal.SIGWINCH)  # not its foreground job: tell it by hand
            for _ in range(20):  # the RESIZE frame and the keys race: ask until it shows
                os.write(master, b"stty size\n")
                if (await expect(r"(\d+ \d+)\r\n"))[1] == b"40 100":
                    break
            else:
                raise AssertionError("the new size never reached the remote terminal")
            os.write(master, b"exit 3\n")
            assert await asyncio.wait_for(shell, TIMEOUT) == 3
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


async def test_iter_fd_reads_pipes_files_and_dev_null(tmp_path: Path) -> None:
    """iter_fd yields everything from a pipe (watched) and a regular file (worker thread)."""
    data = os.urandom(300_000)
    r, w = os.pipe()

    async def feed() -> None:
        await asyncio.to_thread(os.write, w, data)
        os.close(w)

    writer = asyncio.create_task(feed())
    got = b"".join([chunk async for chunk in remote.iter_fd(r)])
    await writer
    os.close(r)
    assert got == data
    path = tmp_path / "in.bin"
    path.write_bytes(data)
    with path.open("rb") as f:
        assert b"".join([chunk async for chunk in remote.iter_fd(f.fileno())]) == data
    with open(os.devnull, "rb") as f:
        assert [chunk async for chunk in remote.iter_fd(f.fileno())] == []


def test_no_module_global_task_set() -> None:
    """The module keeps no task set of its own: each handler owns its tasks."""
    import pstp.daemon.exec as module

    assert not [name for name, value in vars(module).items() if isinstance(value, set)]


# -- through a real `pstp serve` -----------------------------------------------------------

#: The pair key of the one peer the `pstp serve` processes below trust.
PEER_KEY = bytes(range(5, 37))


@contextlib.contextmanager
def pstp_serve(tmp_path: Path, tables: str) -> Iterator[int]:
    """Run `pstp serve` with one peer, ``phone``, and ``tables`` appended; yield its port.

    The process imports the same ``pstp`` as this test (``pstp.__file__``), so the
    test exercises whichever source tree is under test.
    """
    port = free_port()
    cfg = tmp_path / "pstp.toml"
    cfg.write_text(
        f'[device]\nid = "home"\nlisten = ["127.0.0.1:{port}"]\ndiscovery = false\n\n'
        f'[peers.phone]\nkey = "{PEER_KEY.hex()}"\n\n{tables}'
    )
    os.chmod(cfg, 0o600)
    env = env_for(cfg) | {"PYTHONPATH": str(Path(pstp.__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving 1 peer(s)" in line, proc.stderr.read() if proc.stderr else ""
        yield port
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


@contextlib.asynccontextmanager
async def peer_session(port: int) -> AsyncIterator[Session]:
    """A session to a `pstp serve` started by :func:`pstp_serve`, as ``phone``."""
    async with await connect("127.0.0.1", port, pair_key=PEER_KEY, device_id="home") as s:
        yield s


async def test_refused_execs_spend_the_rate_of_pstp_serve(tmp_path: Path) -> None:
    """Refusals count against the peer's rate: after the session and two refused execs
    the 3/min bucket is empty and the next request is refused as rate-limited."""
    tables = '[peers.phone.policy]\nrate = "3/min"\nexec = [["true"]]\n'
    with pstp_serve(tmp_path, tables) as port:
        async with peer_session(port) as s:  # the session spends the first token
            reasons = []
            for _ in range(3):
                with pytest.raises(ChannelError) as info:
                    await run_exec(s, ["false"])
                assert info.value.code == ChannelCode.REFUSED
                reasons.append(info.value.reason)
    assert "rate limit" not in reasons[0] and "rate limit" not in reasons[1]
    assert reasons[2] == "rate limit 3/min exceeded"


async def test_exec_path_patterns_resolve_symlinks_in_pstp_serve(tmp_path: Path) -> None:
    """With exec = [["cat", "ROOT/*"]] a link ROOT/link -> a secret outside made the device
    print the secret: now refused.  A link that stays inside runs, and the program gets
    the resolved path (what was checked is what runs)."""
    tmp_path = tmp_path.resolve()
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "inner.txt").write_text("inner\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET\n")
    (root / "link").symlink_to(secret)
    (root / "alias").symlink_to(root / "sub" / "inner.txt")
    show = "import sys; print(sys.argv.pop())"  # no glob characters: matched literally
    tables = (
        "[peers.phone.policy]\n"
        f'exec = [["cat", "{root}/*"], [{json.dumps(PY)}, "-c", {json.dumps(show)}, "{root}/*"]]\n'
    )
    with pstp_serve(tmp_path, tables) as port:
        async with peer_session(port) as s:
            out: list[bytes] = []
            with pytest.raises(ChannelError) as info:
                await run_exec(s, ["cat", f"{root}/link"], stdout=out.append)
            status, inner, _ = await run(s, ["cat", f"{root}/alias"])
            shown = await run(s, [PY, "-c", show, f"{root}/alias"])
    assert info.value.code == ChannelCode.REFUSED
    assert "once symbolic links are resolved" in info.value.reason
    assert b"SECRET" not in b"".join(out) and "secret" not in info.value.reason
    assert (status, inner) == (0, b"inner\n")
    assert shown[:2] == (0, f"{root}/sub/inner.txt\n".encode())
