"""examples/ as a user runs them: `python server.py`, then `python client.py` (issue 13 item 5).

Each pair runs as two real processes in a network namespace of its own
(tests/netns_host.py): the examples use fixed ports (9000, 8080) and the PPCP
client finds its server by broadcast, which must not leave the machine.  The
examples run from a copy in a temporary folder, since server.py writes a fresh
pair key into MainConf.conf on its first run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns_host
from tests.helpers import ROOT, TIMEOUT

EXAMPLES = ROOT / "examples"
pytestmark = netns_host.needs_netns


@pytest.fixture
def host() -> Iterator[str]:
    with netns_host.lone_host("examples") as ns:
        yield ns


def _copy(tmp_path: Path) -> Path:
    where = tmp_path / "examples"
    shutil.copytree(EXAMPLES, where)
    (where / "MainConf.conf").chmod(0o600)
    return where


def _pair(ns: str, where: Path, server: str, client: str, ready: str) -> tuple[str, str]:
    """Start ``server`` in ``ns``, wait for its ``ready`` line, run ``client``; both outputs."""
    env = netns_host.env(PYTHONUNBUFFERED="1")
    srv = subprocess.Popen(
        netns_host.in_ns(ns, sys.executable, server),
        cwd=where,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert srv.stdout is not None
        seen = []
        for line in srv.stdout:  # ends if the server dies: then the assert below says why
            seen.append(line)
            if ready in line:
                break
        assert any(ready in line for line in seen), "".join(seen)
        done = subprocess.run(
            netns_host.in_ns(ns, sys.executable, client),
            cwd=where,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 6,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        srv.terminate()
        rest, _ = srv.communicate(timeout=TIMEOUT * 2)
    return done.stdout, "".join(seen) + rest


def test_server_and_client_tell_the_story_with_a_pair_key(host: str, tmp_path: Path) -> None:
    """Challenge, response, success, the token's id and address, then the action's result."""
    where = _copy(tmp_path)
    out, served = _pair(host, where, "server.py", "client.py", "serving on")
    conf = (where / "MainConf.conf").read_text()
    key = re.search(r'SharedSecret = "([0-9a-f]{64})"', conf)
    assert key is not None, "server.py did not write a pair key"
    assert (where / "MainConf.conf").stat().st_mode & 0o077 == 0
    lines = out.splitlines()
    assert re.fullmatch(r"→ 🔑 Received challenge: 04[0-9a-f]{22}\.\.\.", lines[0])
    assert re.fullmatch(r"→ 🤝 Response sent: [0-9a-f]{24}\.\.\.", lines[1])
    assert lines[2].startswith("→ ✅ Authentication successful (session ")
    token = re.fullmatch(r"→ 🚪 Received token: (tok_[a-z2-7]{12})", lines[3])
    assert token is not None, lines
    assert lines[4] == "→ 🌐 Connecting to: ws://127.0.0.1:8080/tunnel"
    assert lines[5] == "→ kettle: on"
    assert f"gave phone token {token[1]}" in served
    assert key[1] not in out + served  # the secret is never printed


def test_server_and_client_with_a_passphrase_run_pake(host: str, tmp_path: Path) -> None:
    """A passphrase in MainConf.conf runs PSTP-PAKE; the token then works the same."""
    where = _copy(tmp_path)
    conf = where / "MainConf.conf"
    conf.write_text(conf.read_text().replace("# Passphrase = ", "Passphrase = "))
    out, served = _pair(host, where, "server.py", "client.py", "serving on")
    assert "passphrase (PSTP-PAKE)" in served
    assert out.splitlines()[0].startswith("→ 🔑 passphrase proven by SPAKE2+")
    assert "→ kettle: on" in out
    assert "correct horse" not in out + served
    assert 'SharedSecret = ""' in conf.read_text()  # no pair key was made


def test_the_ppcp_pair_finds_and_answers(host: str, tmp_path: Path) -> None:
    """ppcp_client.py finds ppcp_server.py by broadcast, sends hello and prints the echo."""
    where = _copy(tmp_path)
    out, served = _pair(host, where, "ppcp_server.py", "ppcp_client.py", "waiting for clients")
    assert out == "b'hello'\n"
    assert "Connected to " in served


@pytest.mark.parametrize("name", ["server.py", "client.py"])
def test_the_ppcp_examples_are_the_readme_code(name: str) -> None:
    """examples/ppcp_*.py hold the README's blocks (comment spacing aside)."""
    readme = (ROOT / "README.md").read_text()
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if b.startswith(f"# {name}")
    )

    def code(text: str) -> list[str]:
        return [re.sub(r"\s+#", "  #", line).rstrip() for line in text.splitlines() if line]

    example = (EXAMPLES / f"ppcp_{name}").read_text()
    body = example.split('"""\n', 2)[-1]
    assert code(body) == code(block.split("\n", 1)[1])
