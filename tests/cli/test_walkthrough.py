"""The README's "Your first two devices", run as written between two hosts (issue 12 item 5).

Two network namespaces, ``home`` (198.18.1.20) and ``laptop`` (198.18.1.30), on
one bridge (tests/discovery/test_netns.py's Lab; nothing leaves them).  Each
``home$`` and ``laptop$`` line of the section's sh blocks runs, in README order,
through ``sh -c`` on its host, with that host's own HOME (so ``pstp init``
writes HOME/.config/pstp/pstp.toml, as the README says) and no ``PSTP_*`` or
``XDG_*`` variable from here.  The one change made to a line: the README's
example address 192.168.1.20 becomes home's.  ``pstp`` is this checkout's
(``python -m pstp``); as the test runs as root, ``sudo`` runs its command.

Each host also has a mount namespace of its own in which the top directory of
every file root the README's policy names (``/srv``) is an empty tmpfs: what the
walkthrough creates there never reaches this machine's file system.

Long-running lines (``pstp pair --allow``, ``pstp serve``) run in the background
and are waited for by their output; the code that ``pair --allow`` shows is
typed on laptop's stdin; ``pstp shell home`` reads a few lines, then EOF.  The
toml block is applied to home's file as the README says: its policy lines go
into the empty ``[peers.laptop.policy]`` table pairing wrote, the rest is
appended.  Every step's effect is checked, and the walkthrough must hold each
step of issue 12 item 5 (init, pair, policy, serve, ping, run, exec, put, get,
shell, audit verify).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import tomlkit

from pstp.daemon.exec import SAFE_PATH
from pstp.settings import load
from tests.discovery.test_netns import Lab, Proc, pytestmark  # noqa: F401 (its skip marker)
from tests.helpers import ROOT, TIMEOUT
from tests.test_readme import WALKTHROUGH, blocks

Completed = subprocess.CompletedProcess[str]

#: The README's example address of home, and the test address that replaces it.
README_ADDRESS = "192.168.1.20"
HOME_ADDRESS, LAPTOP_ADDRESS = "198.18.1.20", "198.18.1.30"
#: What the test types into ``pstp shell home`` (its remote output and status are checked).
SHELL_INPUT = "echo shell-$((6 * 7))\nexit 3\n"
#: Steps the walkthrough must show: ``pstp COMMAND`` lines, the two sides of pairing, the policy.
REQUIRED = {
    "init",
    "pair --allow",
    "pair HOST",
    "serve",
    "ping",
    "run",
    "exec",
    "put",
    "get",
    "shell",
    "audit verify",
    "policy",
}
#: Directories a tmpfs may not hide (the test's own files, the system's).
_NOT_HIDDEN = {"/", "/tmp", "/proc", "/sys", "/dev", "/usr", "/etc", "/bin", "/lib", "/run"}


@dataclass
class Host:
    """One device: its namespace, HOME and the process holding its mount namespace."""

    name: str
    home: Path
    env: dict[str, str]
    holder: Proc

    @property
    def root(self) -> Path:
        """This host's view of the file system (its mount namespace), from here."""
        return Path(f"/proc/{self.holder.popen.pid}/root")

    @property
    def config(self) -> Path:
        return self.home / ".config" / "pstp" / "pstp.toml"

    def argv(self, line: str, *, exec_: bool = False) -> list[str]:
        """``sh -c LINE`` in this host's namespaces, in its HOME."""
        return [
            "nsenter",
            f"--target={self.holder.popen.pid}",
            "--mount",
            "--net",
            f"--wd={self.home}",
            "--",
            "sh",
            "-c",
            f"exec {line}" if exec_ else line,
        ]

    def run(self, line: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Run ``line`` to its end; its process group is killed if it outlives the timeout."""
        proc = subprocess.Popen(
            self.argv(line),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(stdin, timeout=6 * TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{self.name}$ {line}: no end in {6 * TIMEOUT:g} s\n{out}\n{err}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def start(self, lab: Lab, line: str) -> Proc:
        """Start ``line`` in the background (its sh is replaced by it: a signal reaches it)."""
        proc = Proc(self.argv(line, exec_=True), self.env)
        lab.procs.append(proc)  # stopped by lab.close()
        return proc


def _walkthrough() -> list[tuple[str, str, int]]:
    """The section's steps in order: ("home"|"laptop", line, README line) and ("toml", text, n)."""
    steps: list[tuple[str, str, int]] = []
    for block in blocks():
        if block.section != WALKTHROUGH:
            continue
        if block.lang == "toml":
            steps.append(("toml", block.text, block.line))
            continue
        assert block.lang == "sh", f"README.md:{block.line}: a ```{block.lang} block"
        for n, line in enumerate(block.text.splitlines(), block.line + 1):
            m = re.fullmatch(r"(home|laptop)\$\s+(\S.*)", line)
            assert m, f"README.md:{n}: {line!r} says on which device it runs (home$ or laptop$)"
            steps.append((m[1], m[2], n))
    return steps


def _file_roots(steps: list[tuple[str, str, int]]) -> list[str]:
    """Every ``files`` root of the walkthrough's toml."""
    roots = []
    for kind, text, _ in steps:
        if kind == "toml":
            for peer in tomllib.loads(text).get("peers", {}).values():
                roots += [f["root"] for f in peer.get("policy", {}).get("files", [])]
    return roots


def _bin(tmp: Path) -> Path:
    """``pstp`` (this checkout, as ``python -m pstp``) and ``sudo`` (we are root already)."""
    where = tmp / "bin"
    where.mkdir()
    (where / "pstp").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m pstp "$@"\n')
    (where / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for script in where.iterdir():
        script.chmod(0o755)
    return where


def _host(lab: Lab, tmp: Path, name: str, address: str, tops: list[str]) -> Host:
    """A namespace on bridge 1, and a mount namespace in which ``tops`` are empty tmpfs."""
    ns = lab.host(name, (1, address))
    home = tmp / name
    home.mkdir(mode=0o700)
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("XDG_") or (k.startswith("PSTP_") and not k.startswith("PSTP_TEST")))
    }
    path = env.get("PYTHONPATH")
    env.update(
        HOME=str(home),
        USER=pwd.getpwuid(os.getuid()).pw_name,
        PATH=f"{tmp / 'bin'}{os.pathsep}{env.get('PATH', SAFE_PATH)}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), path])),
        PYTHONUNBUFFERED="1",
        TERM="dumb",
    )
    mounts = "".join(f"mount -t tmpfs -o mode=0755 pstp-{name} {shlex.quote(t)} && " for t in tops)
    holder = Proc(
        [
            *("ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private"),
            *("sh", "-c", f"{mounts}echo ready && exec cat >/dev/null"),
        ],
        env,
    )
    lab.procs.append(holder)
    holder.wait_for("ready", 3 * TIMEOUT)
    return Host(name, home, env, holder)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        made.close()


# --------------------------------------------------------------------------- the steps


class Walk:
    """Runs the steps and checks what each did.

    A ``pstp COMMAND`` line is checked by ``do_COMMAND`` when there is one (after
    its exit status: 0, or the status SHELL_INPUT asks for); any other line must
    exit 0.
    """

    def __init__(self, lab: Lab, home: Host, laptop: Host) -> None:
        self.lab = lab
        self.hosts = {"home": home, "laptop": laptop}
        self.home, self.laptop = home, laptop
        self.seen: set[str] = set()
        self.window: Proc | None = None  # pstp pair --allow, until the pairing ends
        self.code = ""  # the code it shows
        self.put_files: dict[str, bytes] = {}  # remote path -> the bytes laptop sent

    def step(self, who: str, line: str, n: int) -> None:
        if who == "toml":
            self.toml(line, n)
            return
        host = self.hosts[who]
        line = line.replace(README_ADDRESS, HOME_ADDRESS)  # the one change made to a line
        where = f"README.md:{n} {who}$ {line}"
        words = shlex.split(line, comments=True)
        command, rest = (words[1], words[2:]) if words[:1] == ["pstp"] else ("", words)
        if command == "pair" and "--allow" in rest:
            self.pair_allow(host, line, where)
            return
        if command == "serve":
            host.start(self.lab, line).wait_for("serving", 3 * TIMEOUT)
            self.seen.add("serve")
            return
        stdin = {"pair": self.code + "\n", "shell": SHELL_INPUT}.get(command, "")
        done = host.run(line, stdin)
        expect = 3 if command == "shell" else 0
        assert done.returncode == expect, (
            f"{where}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
        check = getattr(self, f"do_{command}", None)
        if check is not None:
            check(host, rest, done, where)
            self.seen.add("pair HOST" if command == "pair" else command)

    # ---- setting up

    def do_init(self, host: Host, rest: list[str], done: Completed, where: str) -> None:
        """ "writes ~/.config/pstp/pstp.toml (mode 0600)"."""
        assert host.config.stat().st_mode & 0o777 == 0o600, where
        assert load(host.config).device_id == rest[rest.index("--id") + 1], where

    def pair_allow(self, host: Host, line: str, where: str) -> None:
        self.window = host.start(self.lab, line)
        shown = self.window.wait_for("code:", 3 * TIMEOUT)
        m = re.search(r"code: (\d{4}-\d{4})", shown)
        assert m, f"{where}: no code in {shown!r}"
        self.code = m[1]
        self.seen.add("pair --allow")

    def do_pair(self, host: Host, rest: list[str], done: Completed, where: str) -> None:
        """Both hold the same key; laptop remembers home's address; home's window ended."""
        assert self.window is not None, f"{where}: no `pstp pair --allow` before it"
        code, out, err = self.window.finish()
        assert code == 0, f"home's pair --allow: exit {code}\n{out}\n{err}"
        home, laptop = load(self.home.config), load(self.laptop.config)
        assert home.peers["laptop"].key == laptop.peers["home"].key
        assert laptop.peers["home"].address == f"{HOME_ADDRESS}:9000"
        # As the README says: pairing wrote an empty [peers.laptop.policy] table on home.
        assert home.data["peers"]["laptop"]["policy"] == {}

    # ---- the policy

    def toml(self, text: str, n: int) -> None:
        """Fill in home's empty [peers.laptop.policy] table with the README's keys; add the
        README's other tables ([actions."NAME"]) to the file."""
        config = self.home.config
        doc = tomlkit.parse(config.read_text())
        for key, value in tomlkit.parse(text).items():
            if key != "peers":
                doc.setdefault(key, {}).update(value)
                continue
            for peer, tables in value.items():
                for name, table in tables.items():
                    wrote = doc["peers"][peer][name]
                    assert wrote == {}, f"README.md:{n}: [peers.{peer}.{name}] is {wrote} on home"
                    wrote.update(table)
        mode = config.stat().st_mode & 0o777
        config.write_text(tomlkit.dumps(doc))
        assert config.stat().st_mode & 0o777 == mode == 0o600
        load(config)  # as pstp serve will
        self.seen.add("policy")

    # ---- using it

    def do_ping(self, host: Host, rest: list[str], done: Completed, where: str) -> None:
        assert f"connected to {rest[-1]!r}" in done.stdout, f"{where}: {done.stdout}"
        assert f"from {rest[-1]}:" in done.stdout, f"{where}: {done.stdout}"

    def do_run(self, host: Host, rest: list[str], done: Completed, where: str) -> None:
        """The action's output is its argv's, run here with the README's arguments."""
        _, action, *words = rest
        spec = load(self.home.config).data["actions"][action]
        values = {k: str(v["default"]) for k, v in spec.get("args", {}).items() if "default" in v}
        skip = False
        for word in words:
            if skip or word.startswith("-"):
                skip = word in ("--reason", "--address")
                continue
            key, _, value = word.partition("=")
            values[key] = value
        argv = [item.format(**values) for item in spec["argv"]]
        assert done.stdout == self.local(argv), f"{where}: {done.stdout!r}"

    def do_exec(self, host: Host, rest: list[str], done: Completed, where: str) -> None:
        argv = rest[rest.index("--") + 1 :]
        assert done.stdout == self.local(argv), f"{where}: {done.stdout!r}"

    @staticmethod
    def local(argv: list[str]) -> str:
        ran = subprocess.run(
            argv, env={"PATH": SAFE_PATH}, capture_output=True, text=True, check=True
        )
        assert ran.stdout, f"{argv} printed nothing: a weak check"
        return ran.stdout

    def do_put(self, host: Host, rest: list[str], done: Completed, where: str) -> None:
        """Every file sent is on home, byte for byte."""
        *local, remote = [w for w in rest[1:] if not w.startswith("-")]
        for name in local:
            sent = (host.home / name).read_bytes()
            target = PurePosixPath(remote)
            if remote.endswith("/") or len(local) > 1:
                target = target / PurePosixPath(name).name
            on_home = self.home.root / target.relative_to("/")
            assert on_home.read_bytes() == sent, f"{where}: {target} differs on home"
            self.put_files[str(target)] = sent

    def do_get(self, host: Host, rest: list[str], done: Completed, where: str) -> None:
        """What comes back is what was sent."""
        *remote, local = [w for w in rest[1:] if not w.startswith("-")]
        for name in remote:
            target = host.home / local
            if local.endswith("/") or target.is_dir():
                target = target / PurePosixPath(name).name
            assert name in self.put_files, f"{where}: {name} was not put before"
            assert target.read_bytes() == self.put_files[name], f"{where}: {target} differs"

    def do_shell(self, host: Host, rest: list[str], done: Completed, where: str) -> None:
        assert "shell-42" in done.stdout.splitlines(), f"{where}: {done.stdout!r}"

    def do_audit(self, host: Host, rest: list[str], done: Completed, where: str) -> None:
        """The chain checks, and its rows are the walkthrough's, none refused."""
        assert rest[:1] == ["verify"], f"{where}: not a step this test knows"
        m = re.match(r"ok: (\d+) rows, head ", done.stdout)
        assert m, f"{where}: {done.stdout!r}"
        self.seen.add("audit verify")  # beside "audit"
        listed = host.run("pstp audit list --json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert len(rows) == int(m[1]), rows
        done_ok = {
            (row["kind"], (row["args"] or {}).get("op"), (row["result"] or {}).get("exit_status"))
            for row in rows
            if row["decision"] in ("ok", "fail")
        }
        for expected in [
            ("pairing", None, None),
            ("auth", None, None),
            ("action", None, 0),
            ("exec", None, 0),
            ("file", "put", 0),
            ("file", "get", 0),
            ("shell", None, 3),  # the status SHELL_INPUT ends with
        ]:
            assert expected in done_ok, f"{where}: no audit row {expected}, only {done_ok}"
        assert not [row for row in rows if row["decision"] == "deny"], rows


def test_the_readme_walkthrough_works_as_written(lab: Lab, tmp_path: Path) -> None:
    """Two devices, from ``pstp init`` to ``pstp audit verify``, exactly as the README says."""
    steps = _walkthrough()
    tops = sorted({"/" + PurePosixPath(r).parts[1] for r in _file_roots(steps)})
    for top in tops:
        assert top not in _NOT_HIDDEN and not tmp_path.is_relative_to(top), f"a tmpfs on {top}?"
        assert Path(top).is_dir(), f"no {top} here to hide under a tmpfs"
    _bin(tmp_path)
    walk = Walk(
        lab,
        _host(lab, tmp_path, "home", HOME_ADDRESS, tops),
        _host(lab, tmp_path, "laptop", LAPTOP_ADDRESS, tops),
    )
    for who, line, n in steps:
        walk.step(who, line, n)
    assert walk.seen >= REQUIRED, f"the walkthrough has no {sorted(REQUIRED - walk.seen)}"
