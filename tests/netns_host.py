"""One network namespace standing for a lone host, for tests that must broadcast.

Discovery's default targets are every interface's broadcast address and
255.255.255.255 (docs/protocol.md §8): on the machine running the tests they
leave it (tests/netguard refuses them).  A test that needs the defaults runs
its processes here instead: a namespace with ``lo`` and an interface ``eth0``
198.18.9.1/24 (RFC 2544 test network, broadcast 198.18.9.255; one end of a
veth pair whose other end is in it too) and no route off it, made with
``ip netns`` and deleted afterwards.  Its name follows
tests/discovery/test_netns.py (``pstp-<pid>x<hex>-<name>``), whose sweep
deletes one left by a killed run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.helpers import ROOT

__all__ = ["ADDRESS", "BROADCAST", "REFUSAL", "env", "in_ns", "lone_host", "needs_netns"]

ADDRESS = "198.18.9.1"
BROADCAST = "198.18.9.255"


def _refusal() -> str | None:
    """Why namespaces cannot be made here, or None (a missing ``ip`` is a failure, not a skip)."""
    if shutil.which("ip") is None:
        return None
    name = f"pstp-probe-{os.getpid()}-{secrets.token_hex(2)}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return probe.stderr.strip() or f"ip netns add exited {probe.returncode}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


#: Why this kernel refuses network namespaces, or None (tests/discovery/test_netns.py too).
REFUSAL = _refusal()
#: Skips a test only when the kernel refuses network namespaces.
needs_netns = pytest.mark.skipif(
    REFUSAL is not None, reason=f"the kernel refuses network namespaces: {REFUSAL}"
)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"


@contextmanager
def lone_host(name: str = "host") -> Iterator[str]:
    """A fresh namespace (its name is yielded) with lo and eth0; deleted on exit."""
    ns = f"pstp-{os.getpid()}x{secrets.token_hex(2)}-{name}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        # A veth pair with both ends inside: a LAN interface leading nowhere (the
        # dummy driver is not in every kernel; this machine's has none).
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-wire")
        _ip("-n", ns, "addr", "add", f"{ADDRESS}/24", "brd", "+", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0-wire", "up")
        _ip("-n", ns, "link", "set", "eth0", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def in_ns(ns: str, *argv: str) -> list[str]:
    """``argv`` run inside ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


def env(**extra: str) -> dict[str, str]:
    """This environment, with src/ and the repository (for ``tests.*``) on ``PYTHONPATH``."""
    return dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}", **extra)
