"""Pairing addresses on a host with a LAN address and no default route (a network namespace).

The bug this guards: such a host showed (and QR-encoded) 127.0.0.1, since the
only address it looked for was the default route's.  Needs root and ``ip``;
skipped only when the kernel refuses a namespace.  Nothing leaves the namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pstp.daemon.pairing import parse_link
from pstp.settings import create
from tests.discovery.test_netns import _REFUSAL, ip
from tests.helpers import ROOT, TIMEOUT

pytestmark = pytest.mark.skipif(
    _REFUSAL is not None or shutil.which("ip") is None,
    reason=f"no network namespaces here: {_REFUSAL}",
)

LAN = ("198.18.5.10", "198.18.6.10")


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with lo and two veth interfaces on 198.18.5/24 and 198.18.6/24,
    and no default route."""
    ns = f"pstp-{os.getpid()}x{secrets.token_hex(2)}-pairaddr"
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "set", "lo", "up")
        for n, addr in enumerate(LAN):
            # A veth pair inside the namespace: the LAN end has the address.
            ip("-n", ns, "link", "add", f"lan{n}", "type", "veth", "peer", "name", f"wire{n}")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", f"lan{n}")
            ip("-n", ns, "link", "set", f"wire{n}", "up")
            ip("-n", ns, "link", "set", f"lan{n}", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _pstp(ns: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PSTP_CONFIG=str(config))
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "pstp", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT * 6,
        check=False,
    )


def test_no_default_route_shows_the_lan_addresses_not_loopback(netns: str, tmp_path: Path) -> None:
    """`pstp pair --allow` on 0.0.0.0 lists both LAN addresses, no 127.0.0.1 or 0.0.0.0."""
    cfg = create(tmp_path / "home.toml", "home", listen="0.0.0.0:9000")
    cfg.write_text(cfg.read_text().replace("discovery = true", "discovery = false"))
    routes = subprocess.run(
        ["ip", "-n", netns, "route", "show", "default"], capture_output=True, text=True
    )
    assert routes.stdout.strip() == ""  # the case of the bug: no default route
    done = _pstp(netns, cfg, "pair", "--allow", "--timeout", "1")
    assert done.returncode == 1, done.stderr  # closed by its timeout
    out = done.stdout
    assert "127.0.0.1" not in out and "0.0.0.0" not in out
    assert f"  {LAN[0]}:9000 (lan0)" in out and f"  {LAN[1]}:9000 (lan1)" in out
    assert f"on the other device: pstp pair {LAN[0]}:9000 (or another address above)" in out


def test_device_add_link_carries_the_lan_addresses(netns: str, tmp_path: Path) -> None:
    """`pstp device add` on 0.0.0.0 writes a link with both addresses (first, then alt)."""
    cfg = create(tmp_path / "home.toml", "home", listen="0.0.0.0:9000")
    done = _pstp(netns, cfg, "device", "add", "phone")
    assert done.returncode == 0, done.stderr
    (uri,) = [w for w in done.stdout.split() if w.startswith("pstp://")]
    assert parse_link(uri).addresses == ((LAN[0], 9000), (LAN[1], 9000))


def test_only_loopback_is_said_to_be_local(tmp_path: Path) -> None:
    """A namespace with nothing but lo: 127.0.0.1, marked reachable only from this machine."""
    ns = f"pstp-{os.getpid()}x{secrets.token_hex(2)}-lonly"
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "set", "lo", "up")
        cfg = create(tmp_path / "home.toml", "home", listen="0.0.0.0:9000")
        cfg.write_text(cfg.read_text().replace("discovery = true", "discovery = false"))
        done = _pstp(ns, cfg, "pair", "--allow", "--timeout", "1")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    assert done.returncode == 1, done.stderr
    assert "127.0.0.1:9000 (reachable only from this machine" in done.stdout
