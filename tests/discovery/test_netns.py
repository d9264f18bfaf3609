"""Discovery across real network hosts: Linux network namespaces, veth pairs, bridges.

Each test builds its own lab: a "switch" namespace holding the bridges (one per
subnet) and one namespace per host, wired with veth pairs; every name carries
this run's id, and the fixture's finalizer kills the processes and deletes the
namespaces even when a test fails.  Servers and clients are real ``python -m
pstp`` processes started with ``ip netns exec``.  Addresses come from
198.18.0.0/15 (RFC 2544, for test networks); no packet leaves the namespaces.

Needs root and ``ip`` (iproute2; .ci/run installs it).  Skipped only when the
kernel refuses to create a network namespace.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pstp.discovery.packets import Ping
from pstp.protocol.handshake import PeerKey
from pstp.wire.frames import FRAME_HEADER_LEN, FrameType, HsInit, parse_frame_header
from tests.helpers import ROOT, TIMEOUT
from tests.netns_host import REFUSAL as _REFUSAL

KEY = bytes(range(32))
OTHER_KEY = bytes(range(32, 64))
NET1, NET2 = "198.18.1", "198.18.2"


def _sweep_stale() -> None:
    """Delete namespaces left by a run that was killed before its finalizers ran."""
    if _REFUSAL is not None or shutil.which("ip") is None:
        return
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        m = re.match(r"(pstp-(\d+)x[0-9a-f]+-\S+)", line)
        if m is None:
            continue
        try:
            os.kill(int(m[2]), 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "del", m[1]], capture_output=True)
        except PermissionError:
            pass  # alive, someone else's


_sweep_stale()
pytestmark = pytest.mark.skipif(
    _REFUSAL is not None, reason=f"the kernel refuses network namespaces: {_REFUSAL}"
)


def ip(*args: str) -> None:
    """Run ``ip ARGS``; fail with its message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr.strip()}"


class Proc:
    """A process in a namespace whose output lines are collected by reader threads."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(s, lines), daemon=True)
            for s, lines in ((self.popen.stdout, self.out), (self.popen.stderr, self.err))
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream: object, lines: list[str]) -> None:
        assert hasattr(stream, "readline")
        for line in iter(stream.readline, ""):
            with self._cond:
                lines.append(line)
                self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float = TIMEOUT) -> str:
        """The first stdout line containing ``needle``; fails on timeout or exit."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.out:
                    if needle in line:
                        return line
                left = end - time.monotonic()
                ended = self.popen.poll() is not None and not any(
                    t.is_alive() for t in self._readers
                )
                if left <= 0 or ended:
                    raise AssertionError(
                        f"no {needle!r} from {self.popen.args}: out={self.out} err={self.err}"
                    )
                self._cond.wait(min(left, 0.1))

    def finish(self, timeout: float = 3 * TIMEOUT) -> tuple[int, str, str]:
        """Wait for the exit; return (code, stdout, stderr)."""
        code = self.popen.wait(timeout)
        for t in self._readers:
            t.join(timeout)
        return code, "".join(self.out), "".join(self.err)

    def stop(self) -> None:
        """Terminate (then kill) if still running."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.popen.terminate()
            try:
                self.popen.wait(3)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(3)
        for s in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if s is not None:
                s.close()


class Lab:
    """Namespaces on bridges; everything it makes is undone by :meth:`close`."""

    def __init__(self, tmp: Path) -> None:
        self.id = f"{os.getpid()}x{secrets.token_hex(2)}"
        self.tmp = tmp
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.bridges: set[str] = set()
        self.switch = self._netns("sw")
        self._ports = 0

    def _netns(self, name: str) -> str:
        ns = f"pstp-{self.id}-{name}"
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def host(self, name: str, *links: tuple[int, str]) -> str:
        """A namespace with one interface per ``(bridge number, address)``, named eth0..."""
        ns = self._netns(name)
        for n, (bridge, addr) in enumerate(links):
            br = f"br{bridge}"
            if br not in self.bridges:
                ip("-n", self.switch, "link", "add", br, "type", "bridge")
                ip("-n", self.switch, "link", "set", br, "up")
                self.bridges.add(br)
            self._ports += 1
            port = f"p{self._ports}"
            ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", f"eth{n}")
            ip("-n", self.switch, "link", "set", f"eth{n}", "netns", ns)
            ip("-n", self.switch, "link", "set", port, "master", br, "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "brd", "+", "dev", f"eth{n}")
            ip("-n", ns, "link", "set", f"eth{n}", "up", "multicast", "on")
        return ns

    def start(self, ns: str, *argv: str) -> Proc:
        """Start ``python ARGV`` inside ``ns``."""
        env = dict(
            os.environ,
            PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
            PYTHONUNBUFFERED="1",
            PSTP_CONFIG=str(self.tmp / "none.toml"),
        )
        proc = Proc(["ip", "netns", "exec", ns, sys.executable, *argv], env)
        self.procs.append(proc)
        return proc

    def pstp(self, ns: str, config: Path, *args: str) -> Proc:
        """Start ``python -m pstp --config CONFIG ARGS`` inside ``ns``."""
        return self.start(ns, "-m", "pstp", "--config", str(config), *args)

    def serve(self, ns: str, config: Path) -> Proc:
        """Start ``pstp serve`` and wait until it listens."""
        proc = self.pstp(ns, config, "serve")
        proc.wait_for("serving", 3 * TIMEOUT)
        return proc

    def close(self) -> None:
        """Kill the processes, then delete the namespaces (and with them every veth)."""
        for proc in self.procs:
            proc.stop()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A fresh lab, torn down whatever happens."""
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        made.close()


def config(
    tmp: Path,
    device_id: str,
    peers: dict[str, tuple[bytes, str | None]] | None = None,
    *,
    stealth: bool = False,
) -> Path:
    """A private config in its own directory (pid file and audit log live beside it)."""
    where = tmp / device_id / secrets.token_hex(2)
    where.mkdir(parents=True)
    lines = [
        "[device]",
        f'id = "{device_id}"',
        'listen = ["0.0.0.0:9000"]',
        f"stealth = {'true' if stealth else 'false'}",
    ]
    for peer, (key, address) in (peers or {}).items():
        lines += ["", f"[peers.{peer}]", f'key = "{key.hex()}"']
        if address:
            lines.append(f'address = "{address}"')
        lines += ["", f"[peers.{peer}.policy]"]  # sessions and ping only (deny by default)
    path = where / "pstp.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def discover(lab: Lab, ns: str, cfg: Path, timeout: float = 1.0) -> list[dict[str, object]]:
    """Run ``pstp discover --json`` in ``ns`` and return the devices listed."""
    code, out, err = lab.pstp(ns, cfg, "discover", "--json", "--timeout", str(timeout)).finish()
    assert code == 0, err
    devices = json.loads(out)
    assert isinstance(devices, list)
    return devices


def test_found_by_broadcast_on_the_same_subnet_then_pinged_and_remembered(
    lab: Lab, tmp_path: Path
) -> None:
    """`pstp discover` lists another host's server; `pstp ping` then reaches and remembers it."""
    server = lab.host("home", (0, f"{NET1}.1"))
    client = lab.host("phone", (0, f"{NET1}.2"))
    lab.serve(server, config(tmp_path, "home", {"phone": (KEY, None)}))
    phone = config(tmp_path, "phone", {"home": (KEY, None)})
    (dev,) = discover(lab, client, phone)
    assert dev["device_id"] == "home" and dev["address"] == f"{NET1}.1:9000"
    assert dev["key"] is True and "broadcast" in dev["via"]  # type: ignore[operator]
    assert dev["caps_names"] == ["aes-256-gcm", "chacha20-poly1305"]
    # No remembered address: connect_peer discovers, binds the PONG into the handshake,
    # and remembers the address that worked.
    code, out, err = lab.pstp(client, phone, "ping", "home").finish()
    assert code == 0, err
    assert "pong 0 from home" in out
    assert f'address = "{NET1}.1:9000"' in phone.read_text()


def test_found_on_a_second_subnet_through_a_second_interface(lab: Lab, tmp_path: Path) -> None:
    """A PING goes out of every interface: a server only on the client's second subnet answers."""
    server = lab.host("home", (1, f"{NET2}.1"))
    client = lab.host("phone", (0, f"{NET1}.2"), (1, f"{NET2}.2"))
    lab.serve(server, config(tmp_path, "home"))
    devices = discover(lab, client, config(tmp_path, "phone"))
    assert [(d["device_id"], d["host"], d["key"]) for d in devices] == [
        ("home", f"{NET2}.1", False)
    ]


def test_stealth_server_answers_only_a_ping_with_a_valid_key_id(lab: Lab, tmp_path: Path) -> None:
    """Stealth: silence to a plain PING and to a wrong key id; an answer to the pair key's."""
    server = lab.host("home", (0, f"{NET1}.1"))
    client = lab.host("phone", (0, f"{NET1}.2"))
    lab.serve(server, config(tmp_path, "home", {"phone": (KEY, None)}, stealth=True))
    assert discover(lab, client, config(tmp_path, "nobody"), timeout=0.5) == []
    wrong = config(tmp_path, "stranger", {"home": (OTHER_KEY, None)})
    assert discover(lab, client, wrong, timeout=0.5) == []
    (dev,) = discover(lab, client, config(tmp_path, "phone", {"home": (KEY, None)}))
    assert (dev["device_id"], dev["host"], dev["key"]) == ("home", f"{NET1}.1", True)


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split a captured TCP stream into (frame type, body)."""
    out = []
    while data:
        ftype, length = parse_frame_header(data[:FRAME_HEADER_LEN])
        out.append((ftype, data[FRAME_HEADER_LEN : FRAME_HEADER_LEN + length]))
        data = data[FRAME_HEADER_LEN + length :]
    return out


@pytest.mark.parametrize("mode", ["own-address", "forged-pong"])
def test_spoofed_pong_fails_the_handshake_and_reveals_nothing(
    lab: Lab, tmp_path: Path, mode: str
) -> None:
    """A faster forged PONG for "home" fails its handshake; the attacker sees only HS_INIT."""
    # own-address: the attacker claims the id from its own address, and the client
    # sends it an HS_INIT.  forged-pong: a modified PONG (extra caps) with the real
    # server's source address, so the client connects to the real server with the
    # wrong PONG in its prologue, and the server cannot decrypt the HS_INIT (§8.5).
    # The server is paused (SIGSTOP) until the attacker has answered: "the attacker
    # is faster" is then deterministic, without netem (not in this kernel).
    server_ns = lab.host("home", (0, f"{NET1}.1"))
    client = lab.host("phone", (0, f"{NET1}.2"))
    mallory = lab.host("mallory", (0, f"{NET1}.3"))
    server_cfg = config(tmp_path, "home", {"phone": (KEY, None)})
    server = lab.serve(server_ns, server_cfg)
    capture = tmp_path / "capture"
    capture.mkdir()
    attacker = lab.start(
        mallory,
        "-m",
        "tests.discovery.netns_peers",
        "spoof",
        "--mode",
        mode,
        "--server",
        f"{NET1}.1",
        "--capture",
        str(capture),
    )
    attacker.wait_for("ready")
    phone = config(tmp_path, "phone", {"home": (KEY, None)})
    server.popen.send_signal(signal.SIGSTOP)
    try:
        ping = lab.pstp(client, phone, "ping", "home")
        attacker.wait_for("answered")
    finally:
        server.popen.send_signal(signal.SIGCONT)
    code, out, err = ping.finish()
    if mode == "own-address" and code == 0:
        # The client tries every candidate: after the forger's PONG failed its
        # handshake, the real device's PONG (once it resumed) led to a session.
        assert "connected to 'home'" in out
        assert f'address = "{NET1}.1:' in phone.read_text()  # the real one remembered
    else:
        assert code == 3, (out, err)
        assert "handshake failed" in err
        assert "address =" not in phone.read_text()  # nothing remembered
    (sent_ping,) = [Ping.parse(p.read_bytes()) for p in capture.glob("ping*.bin")]
    if mode == "own-address":
        attacker.wait_for("captured")
        frames = _frames((capture / "tcp.bin").read_bytes())
        assert [t for t, _ in frames] == [FrameType.HS_INIT]  # no RECORD, nothing else
        init = HsInit.parse(frames[0][1])
        assert init.discovery_nonce == sent_ping.nonce  # bound to the exchange it saw
        # The key id verifies only under the real pair key, never under a guess.
        assert PeerKey.from_pair_key("home", KEY).matches(init.kid)
        assert not PeerKey.from_pair_key("home", OTHER_KEY).matches(init.kid)
        assert b"phone" not in frames[0][1]  # our id travels encrypted
    else:
        assert not (capture / "tcp.bin").exists()
        audit = subprocess.run(
            [sys.executable, "-m", "pstp", "--config", str(server_cfg), "audit", "list", "--json"],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
            timeout=TIMEOUT * 3,
            check=True,
        )
        rows = [json.loads(line) for line in audit.stdout.splitlines()]
        assert [r["decision"] for r in rows] == ["fail"]  # the real server refused it
    assert server.popen.poll() is None


def test_flood_of_pongs_and_malformed_datagrams_does_not_silence_the_responder(
    lab: Lab, tmp_path: Path
) -> None:
    """While another host floods the service port with junk, a real PING is still answered."""
    server_ns = lab.host("home", (0, f"{NET1}.1"))
    client = lab.host("phone", (0, f"{NET1}.2"))
    mallory = lab.host("mallory", (0, f"{NET1}.3"))
    server = lab.serve(server_ns, config(tmp_path, "home"))
    flooder = lab.start(
        mallory,
        "-m",
        "tests.discovery.netns_peers",
        "flood",
        "--target",
        f"{NET1}.1",
        "--broadcast",
        f"{NET1}.255",
        "--seconds",
        # Long enough to outlast a discover started on a busy machine; stopped below.
        str(6 * TIMEOUT),
    )
    flooder.wait_for("flooding")
    devices = discover(lab, client, config(tmp_path, "phone"))
    assert flooder.popen.poll() is None, "the flood ended before the PING: test proves nothing"
    assert [(d["device_id"], d["host"]) for d in devices] == [("home", f"{NET1}.1")]
    assert server.popen.poll() is None
    flooder.stop()


def test_mdns_advertisement_is_browsed_from_another_host(lab: Lab, tmp_path: Path) -> None:
    """A device advertised with zeroconf in one namespace is listed by `pstp discover` elsewhere."""
    server = lab.host("home", (0, f"{NET1}.1"))
    client = lab.host("phone", (0, f"{NET1}.2"))
    ad = lab.start(server, "-m", "tests.discovery.netns_peers", "advertise", "--id", "home.lan")
    ad.wait_for("announced")
    devices = discover(lab, client, config(tmp_path, "phone"), timeout=1.5)
    assert [(d["device_id"], d["address"], d["via"]) for d in devices] == [
        ("home.lan", f"{NET1}.1:9000", ["mdns"])
    ]


def test_doctor_explains_refused_port_key_mismatch_and_no_broadcast_route(
    lab: Lab, tmp_path: Path
) -> None:
    """`pstp doctor home`: stale address refused, found by PING, handshake fails on a wrong key."""
    server = lab.host("home", (0, f"{NET1}.1"))
    client = lab.host("phone", (0, f"{NET1}.2"))
    lab.host("empty", (0, f"{NET1}.3"))  # up, but nothing listens: TCP is refused
    lonely = lab.host("lonely")  # loopback only
    lab.serve(server, config(tmp_path, "home", {"phone": (KEY, None)}))
    wrong = config(tmp_path, "phone", {"home": (OTHER_KEY, f"{NET1}.3:9000")})
    code, out, err = lab.pstp(client, wrong, "doctor", "home").finish()
    assert code == 1, err
    assert f"{NET1}.3:9000 (remembered): TCP connection refused" in out
    assert f"{NET1}.1:9000 (PONG): TCP connect ok" in out
    assert f"{NET1}.1:9000 (PONG): handshake failed" in out
    assert f"home now answers at {NET1}.1:9000" in out
    code, out, err = lab.pstp(lonely, wrong, "doctor", "home").finish()
    assert code == 1, err
    assert "no broadcast route" in out and "answered neither" in out
    assert "not on a local subnet" in out and "no route to" in out
