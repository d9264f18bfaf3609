"""Start-up hardening of a real `pstp serve`: no core dumps, a raised descriptor limit."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pstp.daemon.harden import MAX_FILES
from pstp.settings import add_peer, create
from tests.cli.test_pair import env_for, free_port
from tests.helpers import TIMEOUT

LOW_FILES = 256


def _limits(pid: int) -> dict[str, tuple[str, str]]:
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        out[name] = (soft, hard)
    return out


def _lower_limits() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_FILES, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """`pstp serve` started with a soft descriptor limit of 256, unlimited cores and
    without CAP_SYS_PTRACE (so that a probe with the same capabilities is refused
    /proc access to it only if it is not dumpable)."""
    if not Path("/proc/self/limits").exists() or shutil.which("setpriv") is None:
        pytest.skip("needs Linux /proc and setpriv")
    cfg = create(tmp_path / "home.toml", "home", listen=f"127.0.0.1:{free_port()}")
    add_peer(cfg, "phone", bytes(range(32)), default_policy=True)
    proc = subprocess.Popen(
        ["setpriv", "--bounding-set=-sys_ptrace", sys.executable, "-m", "pstp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(cfg),
        preexec_fn=_lower_limits,
    )
    try:
        assert proc.stdout is not None
        assert "serving 1 peer(s)" in proc.stdout.readline(), proc.stderr and proc.stderr.read()
        yield proc
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


def test_serve_raises_the_descriptor_limit_and_disables_core_dumps(
    served: subprocess.Popen[str],
) -> None:
    limits = _limits(served.pid)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = str(min(hard, MAX_FILES)) if hard != resource.RLIM_INFINITY else str(MAX_FILES)
    assert limits["Max open files"][0] == expected
    assert limits["Max core file size"] == ("0", "0")


def test_serve_is_not_dumpable(served: subprocess.Popen[str]) -> None:
    """A process of the same uid and capabilities, less CAP_SYS_PTRACE, cannot look inside.

    /proc/PID/exe is readable by such a process exactly when the target is
    dumpable (ptrace_may_access); root with CAP_SYS_PTRACE (this test) still can.
    """
    assert os.readlink(f"/proc/{served.pid}/exe")
    probe = subprocess.run(
        ["setpriv", "--bounding-set=-sys_ptrace", "readlink", f"/proc/{served.pid}/exe"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert probe.returncode != 0 and not probe.stdout
    # The control: the same probe reads a dumpable process of the same capabilities.
    with subprocess.Popen(["setpriv", "--bounding-set=-sys_ptrace", "sleep", "30"]) as sleeper:
        try:
            # Until setpriv has dropped the capability and become `sleep`, it holds
            # more than the probe and is not readable by it (a race under load).
            deadline = time.monotonic() + TIMEOUT
            while not os.readlink(f"/proc/{sleeper.pid}/exe").endswith("sleep"):
                assert time.monotonic() < deadline, "setpriv never became sleep"
                time.sleep(0.01)
            ok = subprocess.run(
                ["setpriv", "--bounding-set=-sys_ptrace", "readlink", f"/proc/{sleeper.pid}/exe"],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
        finally:
            sleeper.kill()
    assert ok.returncode == 0 and ok.stdout.strip()


def test_harden_in_a_child_process() -> None:
    """harden() itself: dumpable flag 0, core limit 0, the soft limit raised (capped)."""
    code = (
        "import ctypes, resource; from pstp.daemon.harden import harden; "
        "n = harden(max_files=300); "
        "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE), "
        "n, resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
            preexec_fn=_lower_limits,
            timeout=TIMEOUT,
            check=True,
        )
        .stdout.strip()
        .split(maxsplit=3)
    )
    assert out == ["0", "(0,", "0)", "300 300"]


def test_harden_never_lowers_the_soft_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    code = "from pstp.daemon.harden import harden; print(harden(max_files=16))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        timeout=TIMEOUT,
        check=True,
    ).stdout
    assert int(out) == soft
