"""Suite-wide fixtures: the network guard (issue 12 item 16).

A test run sends nothing off the machine.  tests/netguard/sitecustomize.py
refuses and records every datagram that would (a broadcast, a multicast on a
real interface, a unicast to another host) unless it is sent from inside a
network namespace that a test built.  Here it is armed for the pytest process
and, through ``PYTHONPATH``, for every Python child the tests start; each test
fails whose time a leak was recorded in, naming the sender and the
destination.  The fix is to confine the test: explicit loopback targets
(``addresses=["127.0.0.1"]``), or a namespace (tests/discovery/test_netns.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netguard import sitecustomize as netguard

_GUARD_DIR = str(Path(netguard.__file__).parent)
_log: Path | None = None
_seen = [0]  # lines of the guard's log (this process and children write it) already read
_between: list[str] = []  # recorded between tests (session fixtures, late children)


def pytest_configure(config: pytest.Config) -> None:
    """Arm the guard here and, through the environment, in every Python child."""
    global _log
    fd, name = tempfile.mkstemp(prefix="pstp-netguard-", suffix=".log")
    os.close(fd)
    _log = Path(name)
    os.environ[netguard.NETNS_ENV] = netguard.netns()
    os.environ[netguard.LOG_ENV] = name
    os.environ[netguard.PYTEST_ENV] = str(os.getpid())
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _GUARD_DIR + (os.pathsep + path if path else "")
    netguard.install()
    sys.addaudithook(_guard_in_children)


def _guard_in_children(event: str, args: tuple[object, ...]) -> None:
    """Keep the guard on ``PYTHONPATH`` of a child whose environment replaces it.

    ``subprocess.Popen`` raises this event with the ``env`` mapping it is about
    to hand to the child (tests pass ``dict(os.environ, PYTHONPATH=...)``).  Only
    an environment made from this one (it carries the guard's variables) is
    touched; one a test builds from nothing is left as the test wrote it.
    """
    if event != "subprocess.Popen" or len(args) < 4 or not isinstance(args[3], dict):
        return
    env = args[3]
    if env.get(netguard.NETNS_ENV) != os.environ.get(netguard.NETNS_ENV):
        return
    path = env.get("PYTHONPATH")
    if not isinstance(path, str) or not path:
        env["PYTHONPATH"] = _GUARD_DIR
    elif _GUARD_DIR not in path.split(os.pathsep):
        env["PYTHONPATH"] = _GUARD_DIR + os.pathsep + path


def _new_leaks() -> list[str]:
    """The leaks recorded since the last call, here and in children."""
    if _log is None or not _log.exists():
        return []
    lines = _log.read_text(errors="replace").splitlines()
    out = lines[_seen[0] :]
    _seen[0] = len(lines)
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A leak after the last test's teardown (a late child) fails the run too."""
    late = _between + _new_leaks()
    if late:
        print("\ntests/netguard: datagrams that would have left the machine:")
        for line in late:
            print("  " + line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if _log is not None:
        _log.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _nothing_leaves_the_machine() -> Iterator[None]:
    """Fail the test in whose time a datagram would have left the machine."""
    _between.extend(_new_leaks())  # not this test's: reported at the end of the session
    yield
    leaks = _new_leaks()
    if leaks:
        pytest.fail(
            "sent (refused by tests/netguard) a datagram that would leave the machine; "
            "confine the test to loopback targets or a network namespace:\n  " + "\n  ".join(leaks),
            pytrace=False,
        )
