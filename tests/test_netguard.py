"""Tests for the suite's network guard, tests/netguard/sitecustomize.py (issue 12 item 16).

Every datagram tried here toward a real network is refused by the guard before
the kernel sees it (the audit event comes before the system call), so nothing
leaves the machine; the in-process tests record into a file of their own, not
the session's, so the autouse fixture of tests/conftest.py is not tripped.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import netns_host
from tests.helpers import TIMEOUT
from tests.netguard import sitecustomize as netguard


@pytest.fixture
def own_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The guard's log redirected to a file of this test's."""
    log = tmp_path / "leaks.log"
    monkeypatch.setenv(netguard.LOG_ENV, str(log))
    return log


@pytest.mark.parametrize(
    "address",
    [("127.0.0.1", 9), ("127.9.9.9", 9), ("0.0.0.0", 9), ("localhost", 9), ("::1", 9)],
)
def test_loopback_and_unspecified_are_allowed(address: tuple[str, int]) -> None:
    """Loopback, unspecified and ``localhost`` stay on the machine."""
    assert netguard.leak(None, address) is None


def test_an_address_of_this_host_is_allowed() -> None:
    """A unicast address of this host is delivered locally (read from /proc/net/fib_trie)."""
    local = netguard._local_addresses()
    assert "127.0.0.1" in local
    for addr in local:
        assert netguard.leak(None, (addr, 9)) is None


@pytest.mark.parametrize(
    ("address", "why"),
    [
        (("255.255.255.255", 9000), "datagram to 255.255.255.255"),
        (("<broadcast>", 9000), "datagram to 255.255.255.255"),
        (("198.51.100.7", 9000), "datagram to 198.51.100.7"),
        (("2001:db8::1", 9000, 0, 0), "datagram to 2001:db8::1"),
        (("::ffff:198.51.100.7", 9000), "datagram to 198.51.100.7"),
    ],
)
def test_broadcast_and_other_hosts_are_leaks(address: tuple[object, ...], why: str) -> None:
    """Broadcasts and unicasts to other hosts would leave the machine."""
    found = netguard.leak(None, address)
    assert found is not None and found.startswith(why)


def test_multicast_is_a_leak_unless_its_interface_is_loopback() -> None:
    """mDNS multicast on the default interface leaves; on lo it does not."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        found = netguard.leak(sock, ("224.0.0.251", 5353))
        assert found is not None and "multicast" in found
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        assert netguard.leak(sock, ("224.0.0.251", 5353)) is None


def test_not_an_internet_address_is_not_judged() -> None:
    """AF_UNIX paths and a connected socket's ``None`` are not the guard's business."""
    assert netguard.leak(None, "/run/pstp.sock") is None
    assert netguard.leak(None, None) is None


def test_a_broadcast_from_the_test_process_is_refused_and_recorded(own_log: Path) -> None:
    """The send raises PermissionError in the sender and a line names it and the target."""
    before = len(netguard.recorded)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        with pytest.raises(PermissionError, match="tests/netguard: refused"):
            sock.sendto(b"PING", ("255.255.255.255", 9))
        # A loopback send goes through as usual.
        assert sock.sendto(b"PING", ("127.0.0.1", 9)) == 4
    lines = own_log.read_text().splitlines()
    assert lines == netguard.recorded[before:]
    assert len(lines) == 1 and lines[0].startswith("the test itself (pytest process)")
    assert "datagram to 255.255.255.255" in lines[0] and lines[0].endswith(", port 9")


def _child(
    code: str, env: dict[str, str], *prefix: str, arg: str = "255.255.255.255"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-c", code, arg],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )


SEND = """\
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
try:
    s.sendto(b"PING", (sys.argv[1] if len(sys.argv) > 1 else "255.255.255.255", 9))
    print(json.dumps("sent"))
except PermissionError as e:
    print(json.dumps(str(e)))
"""


def test_a_python_child_is_guarded_through_pythonpath(tmp_path: Path) -> None:
    """A child started with this environment (the guard on PYTHONPATH) is refused too."""
    log = tmp_path / "child.log"
    env = dict(os.environ, **{netguard.LOG_ENV: str(log)})
    done = _child(SEND, env)
    assert done.returncode == 0, done.stderr
    assert "refused" in json.loads(done.stdout)
    (line,) = log.read_text().splitlines()
    assert line.startswith("child pid ") and "255.255.255.255" in line


def test_a_child_whose_pythonpath_a_test_replaces_keeps_the_guard(tmp_path: Path) -> None:
    """tests/conftest.py puts the guard back on a PYTHONPATH that a test sets to src/ alone."""
    log = tmp_path / "child.log"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), **{netguard.LOG_ENV: str(log)})
    done = _child(SEND, env)
    assert "refused" in json.loads(done.stdout), done.stderr
    assert len(log.read_text().splitlines()) == 1


@netns_host.needs_netns
def test_inside_a_test_namespace_a_broadcast_is_sent(tmp_path: Path) -> None:
    """In a namespace a test built, a broadcast goes out (onto its own veth) unrecorded."""
    log = tmp_path / "child.log"
    with netns_host.lone_host("guard") as ns:
        env = netns_host.env(**{netguard.LOG_ENV: str(log)})
        done = _child(SEND, env, "ip", "netns", "exec", ns, arg=netns_host.BROADCAST)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "sent"
    assert not log.exists() or log.read_text() == ""
