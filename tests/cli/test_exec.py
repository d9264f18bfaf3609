"""`pstp exec`, `pstp run` and `pstp shell` against a real server, in processes and a PTY."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pstp.asyncio.runner import run as run_loop
from pstp.asyncio.server import serve
from pstp.cli.cmd_exec import parse_assignments, split_command
from pstp.cli.main import Console, main
from pstp.daemon.actions import ActionSpec, action_handler
from pstp.daemon.exec import exec_handler, make_shell_handler
from pstp.settings import add_peer, create
from tests.daemon.serving import PHONE
from tests.daemon.serving import serve as serve_daemon
from tests.helpers import PAIR_KEY, TIMEOUT, make_keyring

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]

ACTIONS = {
    "greet": ActionSpec(
        "greet", argv=(PY, "-c", "import sys; print('hello', sys.argv[1])", "{name}")
    ),
    "fail": ActionSpec("fail", argv=(PY, "-c", "import sys; sys.exit(5)")),
}


class ServerThread(threading.Thread):
    """A PSTP server for "home" (trusting "phone") on its own event loop in a thread."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.ready = threading.Event()
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None

    def run(self) -> None:
        """Serve until stopped (on uvloop when installed, as `pstp serve` does)."""
        run_loop(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        handlers = {
            "exec": exec_handler,
            "shell": make_shell_handler("/bin/sh"),
            "action": action_handler(ACTIONS),
        }
        server = await serve(
            None,
            "127.0.0.1",
            0,
            keyring=make_keyring(PAIR_KEY, "phone"),
            own_id="home",
            handlers=handlers,
        )
        self.port = server.port
        self.ready.set()
        async with server:
            await self.stop.wait()

    def close(self) -> None:
        """Stop serving and wait for the thread."""
        assert self.loop is not None and self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.join(TIMEOUT)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    """One server for the module."""
    thread = ServerThread()
    thread.start()
    assert thread.ready.wait(TIMEOUT)
    yield thread
    thread.close()


@pytest.fixture
def phone(tmp_path: Path, server: ServerThread) -> Path:
    """The client's configuration: device "phone" with peer "home" at the server."""
    path = create(tmp_path / "phone.toml", "phone", listen="127.0.0.1:1")
    add_peer(path, "home", PAIR_KEY, address=f"127.0.0.1:{server.port}")
    return path


def env_for(config: Path) -> dict[str, str]:
    """Environment for a pstp subprocess using ``config``."""
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), PSTP_CONFIG=str(config))


def pstp(config: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run `python -m pstp ARGS` to completion."""
    return subprocess.run(
        [PY, "-m", "pstp", *args],
        input=stdin,
        capture_output=True,
        env=env_for(config),
        timeout=TIMEOUT * 6,
        check=False,
    )


COPY = (
    "import sys\n"
    "data = sys.stdin.buffer.read()\n"
    "sys.stdout.buffer.write(data[::-1])\n"
    "sys.stderr.write('read %d' % len(data))\n"
    "sys.exit(7)\n"
)


def test_exec_streams_stdio_and_exits_with_the_remote_status(phone: Path) -> None:
    """`pstp exec` pipes stdin through, keeps stdout and stderr apart, exits with the status."""
    data = os.urandom(300_000)
    done = pstp(phone, "exec", "home", "--reason", "test", "--", PY, "-c", COPY, stdin=data)
    assert done.returncode == 7, done.stderr
    assert done.stdout == data[::-1]
    assert done.stderr == b"read 300000"


def test_exec_in_process_passes_arguments_literally(
    phone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """main(["exec", ...]) prints the remote output; metacharacters stay literal."""
    code = main(["--config", str(phone), "exec", "-n", "home", "--", "echo", "$(id)", ";", "|"])
    assert code == 0
    assert capsys.readouterr().out == "$(id) ; |\n"


def test_exec_missing_command_exits_127(phone: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A command the peer cannot find: exit 127 and a clear message on stderr."""
    assert main(["--config", str(phone), "exec", "-n", "home", "no-such-cmd-pstp"]) == 127
    assert "command not found: no-such-cmd-pstp" in capsys.readouterr().err


def test_run_exits_with_the_actions_status(phone: Path) -> None:
    """`pstp run` prints the action's output and exits with its status."""
    done = pstp(phone, "run", "home", "greet", "name=World wide", "--reason", "because")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"hello World wide\n", b"")
    assert pstp(phone, "run", "home", "fail").returncode == 5


def test_run_errors(phone: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown action: 127; a malformed NAME=VALUE: usage error 2."""
    assert main(["--config", str(phone), "run", "home", "nope"]) == 127
    assert "no such action: nope" in capsys.readouterr().err
    assert main(["--config", str(phone), "run", "home", "greet", "novalue"]) == 255
    assert "not NAME=VALUE" in capsys.readouterr().err


def test_run_with_an_address_never_imports_asyncio(phone: Path) -> None:
    """A one-shot `pstp run` to a reachable address runs on the blocking driver."""
    code = (
        "import sys; from pstp.cli.main import main; "
        f"rc = main(['--config', {str(phone)!r}, 'run', 'home', 'greet', 'name=x']); "
        "print('asyncio' in sys.modules); sys.exit(rc)"
    )
    done = subprocess.run(
        [PY, "-c", code], capture_output=True, env=env_for(phone), timeout=TIMEOUT
    )
    assert (done.returncode, done.stdout) == (0, b"hello x\nFalse\n"), done.stderr


def test_run_falls_back_to_discovery_when_no_address_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead remembered address, then no PONG: exit 255 naming what was tried."""
    path = create(tmp_path / "lost.toml", "phone", listen="127.0.0.1:1")
    add_peer(path, "home", PAIR_KEY, address="127.0.0.1:1")
    assert main(["--config", str(path), "run", "home", "greet", "name=x"]) == 255
    err = capsys.readouterr().err
    assert "home not reached: tried 127.0.0.1:1 (remembered): connection refused" in err
    assert "discovery on port 1: no answer" in err and "pstp doctor home" in err


def test_options_may_follow_the_peer_and_the_command_keeps_its_own(phone: Path) -> None:
    """Our options may come after PEER; everything after -- (or the first word) is the command."""
    done = pstp(phone, "exec", "home", "-n", "--reason=why", "--", "echo", "-n", "--reason", "x")
    assert (done.returncode, done.stdout) == (0, b"--reason x")
    assert pstp(phone, "exec", "--reason", "r", "home", "echo", "a").stdout == b"a\n"
    assert pstp(phone, "exec", "home", "--reason").returncode == 255


def test_split_command_takes_our_options_and_leaves_the_command() -> None:
    """split_command reads --reason/--address/-n before the command, then stops."""
    args = argparse.Namespace(reason=None, address=None, no_stdin=False)
    rest = ["--reason", "r", "--address=h:1", "-n", "ls", "--reason", "-n"]
    assert split_command(args, rest) == ["ls", "--reason", "-n"]
    assert (args.reason, args.address, args.no_stdin) == ("r", "h:1", True)
    assert split_command(args, ["--", "-n"]) == ["-n"]
    for bad in (["--reason"], [], ["-n", "--"]):
        with pytest.raises(ValueError):
            split_command(args, bad)
    assert parse_assignments(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    for item in ("novalue", "=3"):
        with pytest.raises(ValueError):
            parse_assignments([item])


def test_exec_output_to_a_text_only_console(phone: Path) -> None:
    """With a console lacking a binary buffer, output is decoded as UTF-8 text."""
    out, err = io.StringIO(), io.StringIO()
    code = "import sys; print('h\u00e9'); sys.stderr.write('oops'); sys.exit(4)"
    argv = ["--config", str(phone), "exec", "-n", "home", "--", PY, "-c", code]
    assert main(argv, Console(out, err)) == 4
    assert (out.getvalue(), err.getvalue()) == ("h\u00e9\n", "oops")


def test_unknown_peer_and_missing_command(phone: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command refuses an unknown peer (exit 255, as ssh); exec needs a command."""
    for args in (["exec", "nobody", "--", "true"], ["run", "nobody", "x"], ["shell", "nobody"]):
        assert main(["--config", str(phone), *args]) == 255
        assert "no peer 'nobody'" in capsys.readouterr().err
    assert main(["--config", str(phone), "exec", "home", "--"]) == 255
    assert "no command given" in capsys.readouterr().err


# -- pstp shell in a pseudo-terminal -------------------------------------------------------


def set_size(fd: int, rows: int, cols: int) -> None:
    """Set a terminal's window size (its foreground job gets SIGWINCH)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Pty:
    """`pstp shell home` running on a pseudo-terminal the test drives."""

    def __init__(self, config: Path, *options: str) -> None:
        self.master, self.slave = os.openpty()
        set_size(self.slave, 24, 80)
        self.before = termios.tcgetattr(self.slave)
        slave = self.slave

        def controlling_terminal() -> None:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [PY, "-m", "pstp", "shell", "home", "--reason", "test", *options],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env_for(config),
            preexec_fn=controlling_terminal,
        )
        self.screen = b""

    def wait_raw(self) -> None:
        """Wait until the client has put the terminal in raw mode (it is then reading keys)."""
        deadline = time.monotonic() + TIMEOUT * 2
        while termios.tcgetattr(self.slave)[3] & termios.ICANON:
            assert time.monotonic() < deadline, "the client never set raw mode"
            assert self.proc.poll() is None, self.read_rest()
            time.sleep(0.01)

    def type(self, text: str) -> None:
        """Send keystrokes."""
        os.write(self.master, text.encode())

    def expect(self, pattern: str) -> re.Match[bytes]:
        """Read until ``pattern`` appears on the screen; consume up to it."""
        regex = re.compile(pattern.encode())
        deadline = time.monotonic() + TIMEOUT * 2
        while not (m := regex.search(self.screen)):
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} not seen in {self.screen!r}"
            if select.select([self.master], [], [], left)[0]:
                self.screen += os.read(self.master, 65536)
        self.screen = self.screen[m.end() :]
        return m

    def read_rest(self) -> bytes:
        """Whatever output is available now."""
        while select.select([self.master], [], [], 0.1)[0]:
            try:
                self.screen += os.read(self.master, 65536)
            except OSError:
                break
        return self.screen

    def close(self) -> None:
        """Kill the client if still running; close the terminal."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty_client(phone: Path) -> Iterator[Pty]:
    """`pstp shell home` on a fresh PTY."""
    term = Pty(phone)
    try:
        yield term
    finally:
        term.close()


def test_shell_in_a_pty_resizes_exits_with_status_and_restores_the_terminal(
    pty_client: Pty,
) -> None:
    """An interactive shell: commands run, a resize reaches `stty size`, exit 3 is the status."""
    t = pty_client
    t.wait_raw()
    t.type("echo hello-$((40+2))\n")
    t.expect(r"hello-42\r\n")
    t.type("stty size\n")
    t.expect(r"24 80\r\n")
    set_size(t.slave, 40, 100)  # the kernel sends SIGWINCH to the client
    for _ in range(20):  # the RESIZE frame and the keys race: ask until it shows
        t.type("stty size\n")
        if t.expect(r"(\d+ \d+)\r\n")[1] == b"40 100":
            break
    else:
        raise AssertionError("the new window size never reached the remote terminal")
    t.type("exit 3\n")
    assert t.proc.wait(TIMEOUT * 2) == 3
    assert termios.tcgetattr(t.slave) == t.before


def test_shell_client_killed_by_sigterm_restores_the_terminal(pty_client: Pty) -> None:
    """SIGTERM to `pstp shell` ends it with 128+15 and the terminal settings restored."""
    t = pty_client
    t.wait_raw()
    t.type("echo ready-$((1+1))\n")
    t.expect(r"ready-2\r\n")
    t.proc.send_signal(signal.SIGTERM)
    assert t.proc.wait(TIMEOUT * 2) == 128 + signal.SIGTERM
    assert termios.tcgetattr(t.slave) == t.before


# -- pstp shell without a terminal (as ssh: a remote PTY only for a local terminal) --------

#: `pstp shell </dev/null` hung for ever before; it must end well within this.
NO_HANG = 20.0


def shell_from(
    config: Path, stdin: int | bytes, *options: str
) -> subprocess.CompletedProcess[bytes]:
    """`pstp shell home OPTIONS` with ``stdin`` (a descriptor, or bytes through a pipe)."""
    return subprocess.run(
        [PY, "-m", "pstp", "shell", "home", *options],
        stdin=stdin if isinstance(stdin, int) else None,
        input=stdin if isinstance(stdin, bytes) else None,
        capture_output=True,
        env=env_for(config),
        timeout=NO_HANG,
        check=False,
    )


def test_shell_from_a_pipe_runs_without_a_terminal(phone: Path) -> None:
    """`echo 'echo hi; exit 3' | pstp shell home` prints hi (no escape codes) and exits 3."""
    done = shell_from(phone, b"echo hi; echo oops >&2; test -t 0 || echo no-tty; exit 3\n")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"hi\nno-tty\n", b"oops\n")


def test_shell_with_stdin_from_dev_null_ends(phone: Path) -> None:
    """Standard input at its end at once: the remote shell sees EOF and exits 0."""
    done = shell_from(phone, subprocess.DEVNULL)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_shell_t_forces_a_remote_terminal(phone: Path) -> None:
    """-t asks for a PTY even from a pipe: the remote shell is on a terminal (CR LF)."""
    done = shell_from(phone, b"test -t 0 && echo on-a-tty; exit 4\n", "-t")
    assert done.returncode == 4, done.stderr
    assert b"on-a-tty\r\n" in done.stdout


def test_shell_big_t_on_a_terminal_uses_pipes(phone: Path) -> None:
    """-T on a local terminal: no raw mode, no remote PTY; ^D (the local EOF) ends it."""
    t = Pty(phone, "-T")
    try:
        t.type("test -t 0 || echo no-$((1+1))-tty\n")
        t.expect(r"no-2-tty\r\n")  # the local terminal's echo shows "$((1+1))"
        assert termios.tcgetattr(t.slave)[3] & termios.ICANON  # never raw
        t.type("\x04")
        assert t.proc.wait(TIMEOUT * 2) == 0
        assert termios.tcgetattr(t.slave) == t.before
    finally:
        t.close()


def test_shell_t_and_big_t_exclude_each_other(phone: Path) -> None:
    """-t and -T together are a usage error (255 under the exec/run/shell convention)."""
    done = shell_from(phone, subprocess.DEVNULL, "-t", "-T")
    assert done.returncode in (2, 255)
    assert b"not allowed with argument" in done.stderr


HOME_SHELL = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[peers.phone]
key = "{phone}"
[peers.phone.policy]
shell = true
"""


def test_pstp_serve_shell_from_a_pipe_and_from_dev_null(tmp_path: Path) -> None:
    """A real `pstp serve` (the service user's login shell): a pipe runs and exits 3;
    /dev/null ends."""
    served = serve_daemon(tmp_path, HOME_SHELL)
    try:
        phone = create(tmp_path / "phone.toml", "phone")
        add_peer(phone, "home", PHONE, address=f"127.0.0.1:{served.port}")
        done = shell_from(phone, b"unset HISTFILE; echo hi; exit 3\n")
        assert done.returncode == 3, done.stderr
        assert done.stdout.endswith(b"hi\n") and b"\x1b" not in done.stdout
        assert b"\r" not in done.stdout
        done = shell_from(phone, subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
    finally:
        served.stop()


# -- pstp run PEER without an action: the actions it lets us run --------------------------

HOME_ACTIONS = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[actions."gate.open"]
argv = ["/bin/true", "--for={{seconds}}s"]
description = "open the gate"
args = {{ seconds = {{ type = "int", min = 1, max = 600 }} }}

[actions."lamp.set"]
argv = ["/bin/true", "{{level}}"]
args = {{ level = {{ type = "int", min = 0, max = 100, default = 50 }} }}

[actions.reboot]
argv = ["/bin/true"]

[peers.phone]
key = "{phone}"
[peers.phone.policy]
actions = ["gate.*", "lamp.set"]
"""


def test_run_without_an_action_lists_what_the_peer_allows(tmp_path: Path) -> None:
    """`pstp run home` prints a table of the allowed actions and their arguments (not
    reboot, which the policy does not allow); --json prints the same as JSON."""
    served = serve_daemon(tmp_path, HOME_ACTIONS)
    try:
        phone = create(tmp_path / "phone.toml", "phone")
        add_peer(phone, "home", PHONE, address=f"127.0.0.1:{served.port}")
        table = pstp(phone, "run", "home")
        listed = pstp(phone, "run", "home", "--json", "--reason", "which?")
    finally:
        served.stop()
    assert table.returncode == 0, table.stderr
    lines = table.stdout.decode().splitlines()
    assert lines == [
        "ACTION     ARGUMENT  TYPE  BOUNDS  DEFAULT     DESCRIPTION",
        "gate.open  seconds   int   1..600  (required)  open the gate",
        "lamp.set   level     int   0..100  50",
    ]
    assert listed.returncode == 0, listed.stderr
    actions = json.loads(listed.stdout)
    assert [a["name"] for a in actions] == ["gate.open", "lamp.set"]
    assert actions[1]["args"][0] | {"min": 0, "max": 100} == {
        "name": "level",
        "type": "int",
        "required": False,
        "default": 50,
        "min": 0,
        "max": 100,
        "max_len": None,
        "choices": None,
        "pattern": None,
    }


def test_run_without_an_action_on_an_older_device_says_so(phone: Path) -> None:
    """A device that does not serve the listing (UNKNOWN_KIND): a clear note, status 255."""
    done = pstp(phone, "run", "home")
    assert done.returncode == 255
    assert b"does not list its actions" in done.stderr
    assert b"pstp run home ACTION" in done.stderr


def test_actions_table_shows_bounds_choices_and_defaults() -> None:
    """Every kind of bound reads as text; an action without arguments has one row."""
    from pstp.cli.cmd_exec import actions_table
    from pstp.protocol.kinds import ActionInfo, ArgInfo

    lines = actions_table(
        [
            ActionInfo(
                name="say",
                description="speak\nup",
                args=[
                    ArgInfo(name="text", type="str", required=True, max_len=20, pattern="[a-z]+"),
                    ArgInfo(name="loud", type="bool", required=False, default=False),
                    ArgInfo(name="vol", type="float", required=False, default=0.5, max=1.5),
                    ArgInfo(name="n", type="int", required=False, min=1),
                    ArgInfo(name="room", type="str", required=False, choices=["a", "b"]),
                ],
            ),
            ActionInfo(name="reboot"),
        ]
    )
    assert lines[1].startswith("say     text      str    matching")
    assert 'matching "[a-z]+"; at most 20 characters  (required)  speak up' in lines[1]
    assert lines[2].split() == ["loud", "bool", "-", "false"]
    assert lines[3].split() == ["vol", "float", "<=", "1.5", "0.5"]
    assert lines[4].split() == ["n", "int", ">=", "1", "(optional)"]
    assert lines[5].split()[:5] == ["room", "str", "one", "of", '"a",']
    assert lines[6].split() == ["reboot", "-", "-", "-", "-"]
