"""Every code block of README.md runs as shown (issue 12 item 13).

- Each ```python block runs as a program of its own, unchanged.  The PPCP quick
  start is two blocks, told apart by their first line (``# server.py``,
  ``# client.py``): the server runs in the background and the client finds it by
  its default broadcast.  Every block runs in a network namespace of its own
  (tests/netns_host.py: lo and one 198.18.9.1/24 interface, no route off it), so
  nothing a block sends can leave the machine.  A ``print(...)`` line ending in
  a comment (``print(x)  # b'hello'``) promises that output: it must appear.
- Each ```toml block is loaded as the daemon loads it (pstp.settings, the
  policy, the action runner), in a file that has what the README says is
  already there: the ``[device]`` table, a key for each peer, and the actions
  the README declares elsewhere.
- The ```sh blocks of "Your first two devices" are run by
  tests/cli/test_walkthrough.py, across two network namespaces.  The set-up
  block at the top (install, demo, the test suite) is what .ci/run runs in a
  fresh clone.  Any other code block fails here until a test runs it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from pstp.daemon.actions import load_actions
from pstp.daemon.policy import Policy
from pstp.settings import load, write_private
from tests import netns_host
from tests.discovery.test_netns import Proc
from tests.helpers import ROOT, TIMEOUT

README = ROOT / "README.md"
#: The section whose sh blocks tests/cli/test_walkthrough.py runs.
WALKTHROUGH = "Your first two devices"


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, text, the ``## `` section it is in, its line."""

    lang: str
    text: str
    section: str
    line: int


def blocks(path: Path = README) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    found: list[Block] = []
    section = ""
    fence: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if fence is not None:
            if line.strip() == "```":
                lang, start, body = fence
                found.append(Block(lang, "\n".join(body) + "\n", section, start))
                fence = None
            else:
                fence[2].append(line)
            continue
        if line.startswith("## "):
            section = line[3:].strip()
        m = re.fullmatch(r"```(\S*)\s*", line)
        if m:
            fence = (m[1], number, [])
    assert fence is None, f"{path}:{fence[1]}: a code block is never closed"
    return found


def promised_output(code: str) -> list[str]:
    """What the ``print(...)  # OUTPUT`` lines of a block say they print."""
    return [
        m[1].strip() for m in re.finditer(r"^\s*print\(.*\)\s+#\s*(.+)$", code, flags=re.MULTILINE)
    ]


def _ppcp(name: str) -> Block:
    (block,) = [b for b in blocks() if b.lang == "python" and b.text.startswith(f"# {name}\n")]
    return block


# --------------------------------------------------------------------------- the blocks


def test_every_code_block_is_run_by_a_test() -> None:
    """python and toml here, the walkthrough's sh blocks in test_walkthrough, the set-up
    block by .ci/run; the Layout tree is plain text.  A block of any other kind fails."""
    for block in blocks():
        where = f"README.md:{block.line}"
        if block.lang in ("python", "toml"):
            continue
        if block.lang == "sh" and block.section == WALKTHROUGH:
            continue
        if block.lang == "sh" and block.section == "" and "pstp demo" in block.text:
            continue  # the install/demo/test commands: .ci/run runs them in a fresh clone
        if block.lang == "" and block.section == "Layout":
            continue  # a directory tree, not code
        pytest.fail(f"{where}: a ```{block.lang} block in {block.section!r} that no test runs")
    kinds = [b.lang for b in blocks()]
    assert kinds.count("python") >= 3 and kinds.count("toml") >= 2, kinds


@netns_host.needs_netns
@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, id=f"line{b.line}")
        for b in blocks()
        if b.lang == "python" and not re.match(r"# (server|client)\.py\n", b.text)
    ],
)
def test_python_block_runs_as_shown(block: Block, tmp_path: Path) -> None:
    """A self-contained example: it runs to the end, warns of nothing, prints what it says."""
    program = tmp_path / "example.py"
    program.write_text(block.text)
    with netns_host.lone_host("readme") as ns:
        done = subprocess.run(
            netns_host.in_ns(ns, sys.executable, str(program)),
            cwd=tmp_path,
            env=netns_host.env(PYTHONUNBUFFERED="1"),
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 6,
            check=False,
        )
    where = f"README.md:{block.line}"
    assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stderr}"
    assert done.stderr == "", f"{where} wrote to stderr:\n{done.stderr}"
    lines = done.stdout.splitlines()
    for promise in promised_output(block.text):
        assert promise in lines, f"{where} promises {promise!r}; it printed {lines}"


@netns_host.needs_netns
def test_ppcp_quick_start_server_and_client_as_shown(tmp_path: Path) -> None:
    """server.py and client.py exactly as in the README, two processes on one host: the client
    finds the server by its default broadcast, says hello and prints the echo; it ends."""
    server_block, client_block = _ppcp("server.py"), _ppcp("client.py")
    (tmp_path / "server.py").write_text(server_block.text)
    (tmp_path / "client.py").write_text(client_block.text)
    env = netns_host.env(PYTHONUNBUFFERED="1")
    with netns_host.lone_host("ppcp") as ns:
        server = Proc(netns_host.in_ns(ns, sys.executable, str(tmp_path / "server.py")), env)
        try:
            # server.py says it waits once create_tcp_server has bound TCP and UDP 9000.
            server.wait_for("", 3 * TIMEOUT)
            client = subprocess.run(
                netns_host.in_ns(ns, sys.executable, str(tmp_path / "client.py")),
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT * 6,
                check=False,
            )
            where = f"README.md:{client_block.line} (client.py)"
            assert client.returncode == 0, f"{where} exited {client.returncode}:\n{client.stderr}"
            lines = client.stdout.splitlines()
            promises = promised_output(client_block.text)
            assert promises, f"{where}: its print line should say what it prints"
            for promise in promises:
                assert promise in lines, f"{where} promises {promise!r}; it printed {lines}"
            server.wait_for("Connected to ")
            assert server.popen.poll() is None, "server.py ended after one client"
        finally:
            server.stop()
    assert not [line for line in server.err if "Traceback" in line], "".join(server.err)


def _declared_actions() -> dict[str, Any]:
    """The ``[actions."NAME"]`` tables of every toml block of the README."""
    declared: dict[str, Any] = {}
    for block in blocks():
        if block.lang == "toml":
            declared.update(tomlkit.parse(block.text).get("actions", {}))
    return declared


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=f"line{b.line}") for b in blocks() if b.lang == "toml"]
)
def test_toml_block_loads_as_the_daemon_loads_it(block: Block, tmp_path: Path) -> None:
    """The block in a pstp.toml: pstp.settings.load, the policy and the action runner take it."""
    doc = tomlkit.parse(block.text)
    config = tomlkit.document()
    config["device"] = {"id": "home", "listen": ["0.0.0.0:9000"]}
    if "actions" not in doc:  # the file the README builds declares them
        config["actions"] = _declared_actions()
    for table in doc.get("peers", {}).values():
        table.setdefault("key", "ab" * 32)  # written by pairing, which the README does first
    for key, value in doc.items():
        config[key] = value
    path = tmp_path / "pstp.toml"
    write_private(path, tomlkit.dumps(config))
    settings = load(path)
    policy = Policy.from_settings(settings)
    actions = load_actions(settings)
    for peer in doc.get("peers", {}):
        assert policy.peer(peer) is not None, f"README.md:{block.line}: no policy for {peer}"
    assert set(doc.get("actions", {})) <= set(actions)
