"""`pstp forward` between real processes: issue 15's acceptance for port forwarding.

Most tests run in network namespaces (tests/discovery/test_netns.py's :class:`Lab`)::

    phone 198.18.1.2 ---- br0 ---- 198.18.1.1 home 198.18.2.1 ---- br1 ---- 198.18.2.5 camera

"home" runs `pstp serve` and a web server on its own loopback (127.0.0.1:8000);
"camera" is on a LAN only "home" is on (echo and stream servers); "phone" runs
`pstp forward` and has no route to either target: it reaches them only through
the forward.  The device's policy for "phone" is::

    forward = ["127.0.0.0/8:8000", "198.18.2.0/24:8000-8099"]
    forward_listen = ["9100"]

so a CIDR rule allows an IP target but not a name ("localhost:8000"), and a port
range allows camera:8080 but not camera:8100.  Covered: a 100 MiB download with
identical SHA-256, a denied target never connected to, 50 connections at once,
a reverse forward (and a refused one), a paced 8 Mbit/s stream for 60 s, and the
audit rows of each.  Then, on loopback, one forwarded download over each
transport: TCP, WebSocket and MQTT (a real Mosquitto); the exit when the session
ends; a local port in use; connections still open when the forward stops (closed,
and audited); and a configuration reload while a -R forward is open (it stays).
Nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pstp.daemon.audit import AuditLog, AuditRow
from tests.cli.test_pair import env_for, free_port
from tests.daemon.serving import PHONE, Served, serve
from tests.daemon.test_mqtt import wait_reachable_as
from tests.discovery.test_netns import Lab, Proc
from tests.discovery.test_netns import pytestmark as needs_netns
from tests.helpers import ROOT, TIMEOUT
from tests.mosquitto import Broker, needs_mosquitto

MiB = 1 << 20
HOME, PHONE_IP, HOME_LAN, CAMERA = "198.18.1.1", "198.18.1.2", "198.18.2.1", "198.18.2.5"
#: Inside the namespaces: the device's web server (its loopback), the camera's services.
WEB, ECHO, STREAM, OUTSIDE_RANGE = 8000, 8080, 8090, 8100
RULES = ["127.0.0.0/8:8000", "198.18.2.0/24:8000-8099"]
#: Where the device may listen for -R.
LISTEN = 9100
#: The longest a paced stream's piece may come after the one before it.
GAP = TIMEOUT / 5

PEERS = "tests.daemon.forward_peers"
#: How an HTTP client sees a connection closed or reset before any answer.
CLOSED = ("RemoteDisconnected", "ConnectionResetError", "BrokenPipeError")


def say_where(proc: Proc) -> str:
    """A process's output, for assertion messages."""
    return f"out={''.join(proc.out)!r} err={''.join(proc.err)!r}"


def wait_err(proc: Proc, needle: str, timeout: float = 2 * TIMEOUT) -> str:
    """The first stderr line of ``proc`` containing ``needle``."""
    deadline = time.monotonic() + timeout
    while True:
        for line in list(proc.err):
            if needle in line:
                return line
        assert time.monotonic() < deadline, f"no {needle!r}: {say_where(proc)}"
        time.sleep(0.05)


def result_of(proc: Proc, timeout: float = 6 * TIMEOUT) -> dict[str, Any]:
    """The ``result JSON`` line a tests.daemon.forward_peers client printed."""
    line = proc.wait_for("result ", timeout)
    found = json.loads(line.split(" ", 1)[1])
    assert isinstance(found, dict)
    return found


def accepts(proc: Proc) -> int:
    """Connections a tests.daemon.forward_peers server accepted so far."""
    return sum(1 for line in list(proc.out) if line.startswith("accept "))


def stop(proc: Proc, sig: int = signal.SIGINT) -> tuple[int, str, str]:
    """Interrupt a `pstp forward` and collect its exit."""
    proc.popen.send_signal(sig)
    return proc.finish(4 * TIMEOUT)


def audit_rows(path: Path, after: int = 0) -> list[AuditRow]:
    """The device's audit rows past ``after`` (a seq)."""
    with AuditLog(path) as log:
        return [r for r in log.list() if r.seq > after]


def last_seq(path: Path) -> int:
    rows = audit_rows(path)
    return rows[-1].seq if rows else 0


def wait_rows(
    path: Path,
    after: int,
    pick: Callable[[AuditRow], bool],
    count: int,
    timeout: float = 4 * TIMEOUT,
) -> list[AuditRow]:
    """Wait until ``count`` rows past ``after`` match ``pick`` (a row is written as a
    connection ends, which may be just after the client saw it end)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in audit_rows(path, after) if pick(r)]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def outcome(row: AuditRow) -> bool:
    """A forward's outcome row (ok/fail, with the result), not its policy decision."""
    return row.kind == "forward" and row.decision in ("ok", "fail")


def check_result(row: AuditRow, *, bytes_in: int | None, bytes_out: int | None) -> None:
    """The per-connection result of a forward's audit row: bytes each way, seconds, ended."""
    result = row.result
    assert isinstance(result, dict), row
    assert result["ended"] == "closed", row
    assert isinstance(result["seconds"], int | float) and result["seconds"] >= 0, row
    if bytes_in is not None:
        assert result["bytes_in"] == bytes_in, row
    if bytes_out is not None:
        assert result["bytes_out"] == bytes_out, row


def write_random(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            data = os.urandom(min(left, 4 * MiB))
            digest.update(data)
            f.write(data)
            left -= len(data)
    return digest.hexdigest()


# -- the lab: phone, home (the device) and the camera on home's LAN --------------------


@dataclass
class Site:
    """The namespaces, the running device and the targets only it reaches."""

    lab: Lab
    home: str
    phone: str
    camera: str
    home_config: Path
    phone_config: Path
    www: Path
    big_sha: str
    web: Proc
    echo: Proc
    outside: Proc

    @property
    def audit(self) -> Path:
        return self.home_config.parent / "audit.sqlite"

    def peers(self, ns: str, *args: str) -> Proc:
        """``python -m tests.daemon.forward_peers ARGS`` inside ``ns``."""
        return self.lab.start(ns, "-m", PEERS, *args)

    def forward(self, *args: str) -> Proc:
        """`pstp forward ARGS` on the phone."""
        return self.lab.pstp(self.phone, self.phone_config, "forward", *args)

    def fetch(self, ns: str, url: str, *, tolerate: bool = False) -> dict[str, Any]:
        """An HTTP GET run inside ``ns``: its status, size and SHA-256 (or its error)."""
        extra = ["--try"] if tolerate else []
        proc = self.peers(ns, "fetch", "--url", url, "--timeout", str(12 * TIMEOUT), *extra)
        found = result_of(proc, 24 * TIMEOUT)
        proc.finish()
        return found


def _private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The lab, built once for the module; torn down whatever happens."""
    tmp = tmp_path_factory.mktemp("forward-lab")
    lab = Lab(tmp)
    try:
        home = lab.host("home", (0, HOME), (1, HOME_LAN))
        phone = lab.host("phone", (0, PHONE_IP))
        camera = lab.host("camera", (1, CAMERA))
        www = tmp / "www"
        www.mkdir()
        big_sha = write_random(www / "big.bin", 100 * MiB)
        home_config = _private(
            tmp / "home" / "pstp.toml",
            f'[device]\nid = "home"\nlisten = ["{HOME}:9000"]\ndiscovery = false\n\n'
            f'[peers.phone]\nkey = "{PHONE.hex()}"\n[peers.phone.policy]\n'
            f'forward = {json.dumps(RULES)}\nforward_listen = ["{LISTEN}"]\n',
        )
        phone_config = _private(
            tmp / "phone" / "pstp.toml",
            '[device]\nid = "phone"\nlisten = ["127.0.0.1:1"]\ndiscovery = false\n\n'
            f'[peers.home]\nkey = "{PHONE.hex()}"\naddress = "{HOME}:9000"\n',
        )
        lab.serve(home, home_config)

        def server(ns: str, *args: str) -> Proc:
            proc = lab.start(ns, "-m", PEERS, *args)
            proc.wait_for("listening", 3 * TIMEOUT)
            return proc

        yield Site(
            lab=lab,
            home=home,
            phone=phone,
            camera=camera,
            home_config=home_config,
            phone_config=phone_config,
            www=www,
            big_sha=big_sha,
            web=server(home, "web", "--port", str(WEB), "--root", str(www)),
            echo=server(camera, "echo", "--host", CAMERA, "--port", str(ECHO)),
            outside=server(camera, "echo", "--host", CAMERA, "--port", str(OUTSIDE_RANGE)),
        )
    finally:
        lab.close()


@needs_netns
def test_the_targets_are_out_of_the_phones_reach(site: Site) -> None:
    """The premise: from the phone, the device's loopback refuses (nothing of the phone's
    own listens there) and the camera's LAN is unreachable; only the forward gets there."""
    mine = site.fetch(site.phone, f"http://127.0.0.1:{WEB}/big.bin", tolerate=True)
    assert mine["error"] == "ConnectionRefusedError", mine
    lan = site.fetch(site.phone, f"http://{CAMERA}:{ECHO}/", tolerate=True)
    assert "unreachable" in lan["message"].lower(), lan


@needs_netns
@pytest.mark.timeout(TIMEOUT * 60)
def test_100_mib_from_a_server_only_the_device_reaches_arrives_identical(site: Site) -> None:
    """`pstp forward home 18000:127.0.0.1:8000` on the phone: a 100 MiB GET of the device's
    loopback web server through it has the file's SHA-256; the audit row counts the bytes;
    SIGINT ends the forward with 0."""
    after = last_seq(site.audit)
    fwd = site.forward("home", f"18000:127.0.0.1:{WEB}")
    try:
        line = fwd.wait_for("forwarding", 6 * TIMEOUT)
        assert line == f"forwarding 127.0.0.1:18000 -> 127.0.0.1:{WEB} from home\n"
        got = site.fetch(site.phone, "http://127.0.0.1:18000/big.bin")
        assert (got["status"], got["bytes"]) == (200, 100 * MiB), got
        assert got["sha256"] == site.big_sha
        code, out, err = stop(fwd)
    finally:
        fwd.stop()
    assert code == 0, (out, err)
    assert "1 connection(s) carried, 0 refused" in err
    (decided,) = [r for r in audit_rows(site.audit, after) if r.decision == "allow"]
    assert decided.kind == "forward" and decided.peer == "phone"
    assert decided.detail == f'peers.phone.policy.forward[0] "{RULES[0]}"'
    assert decided.args == {"kind": "forward", "host": "127.0.0.1", "port": WEB}
    (row,) = wait_rows(site.audit, after, outcome, 1)
    assert row.decision == "ok" and row.args == decided.args, row
    check_result(row, bytes_in=None, bytes_out=None)
    assert isinstance(row.result, dict)
    # In: from the target (the response: headers, then the file); out: the request.
    assert 100 * MiB < row.result["bytes_in"] < 100 * MiB + 1024, row
    assert 0 < row.result["bytes_out"] < 1024, row


@needs_netns
def test_a_denied_target_is_refused_before_any_connection_to_it(site: Site) -> None:
    """camera:8100 is outside the port range, "localhost:8000" is a name the CIDR rule does
    not match: the phone's connections are closed, the targets see no connection, the
    device audits the denial with its rule, and `pstp forward` says so on stderr."""
    after = last_seq(site.audit)
    web_before = accepts(site.web)
    fwd = site.forward("home", f"18101:{CAMERA}:{OUTSIDE_RANGE}", "-L", f"18102:localhost:{WEB}")
    try:
        fwd.wait_for("forwarding 127.0.0.1:18102", 6 * TIMEOUT)
        for port in (18101, 18102):
            got = site.fetch(site.phone, f"http://127.0.0.1:{port}/big.bin", tolerate=True)
            # Closed (or reset) without an answer, at once: not a timeout.
            assert got.get("error") in CLOSED, got
        first = wait_err(fwd, f"18101:{CAMERA}:{OUTSIDE_RANGE}: refused by the device: ")
        second = wait_err(fwd, f"18102:localhost:{WEB}: refused by the device: ")
        code, out, err = stop(fwd)
    finally:
        fwd.stop()
    assert code == 0, (out, err)
    assert f'"{CAMERA}:{OUTSIDE_RANGE}" is not in peers.phone.policy.forward' in first, err
    assert f'"localhost:{WEB}" is not in peers.phone.policy.forward' in second, err
    assert "0 connection(s) carried, 2 refused" in err
    assert accepts(site.outside) == 0, say_where(site.outside)
    assert accepts(site.web) == web_before, say_where(site.web)
    rows = [r for r in audit_rows(site.audit, after) if r.kind == "forward"]
    assert [(r.decision, r.args) for r in rows] == [
        ("deny", {"kind": "forward", "host": CAMERA, "port": OUTSIDE_RANGE}),
        ("deny", {"kind": "forward", "host": "localhost", "port": WEB}),
    ], rows
    assert [r.detail for r in rows] == [
        f'default deny: "{CAMERA}:{OUTSIDE_RANGE}" is not in peers.phone.policy.forward',
        f'default deny: "localhost:{WEB}" is not in peers.phone.policy.forward',
    ]


@needs_netns
def test_an_allowed_target_with_nothing_listening_is_reported(site: Site) -> None:
    """camera:8099 is allowed but nothing listens there: the phone's connection is closed,
    `pstp forward` says why, and the device audits the attempt as failed."""
    after = last_seq(site.audit)
    fwd = site.forward("home", f"18150:{CAMERA}:8099")
    try:
        fwd.wait_for("forwarding", 6 * TIMEOUT)
        got = site.fetch(site.phone, "http://127.0.0.1:18150/", tolerate=True)
        assert got.get("error") in CLOSED, got
        line = wait_err(fwd, f"{CAMERA}:8099: connection refused")
        code, out, err = stop(fwd)
    finally:
        fwd.stop()
    assert code == 0, (out, err)
    assert line.startswith(f"18150:{CAMERA}:8099: "), line  # the spec, then why
    (row,) = wait_rows(site.audit, after, outcome, 1)
    assert row.decision == "fail", row
    assert row.args == {"kind": "forward", "host": CAMERA, "port": 8099}
    assert isinstance(row.result, dict) and row.result["ended"] == "connection refused", row


@needs_netns
@pytest.mark.timeout(TIMEOUT * 40)
def test_fifty_connections_at_once_each_carried_whole_and_audited(site: Site) -> None:
    """50 echo exchanges at once through one forward (camera:8080, allowed by the CIDR rule
    and its port range), each sent, half-closed and returned with its SHA-256; one audit
    row per connection with its bytes each way."""
    after = last_seq(site.audit)
    before = accepts(site.echo)
    size = 256 << 10
    fwd = site.forward("home", f"18200:{CAMERA}:{ECHO}")
    try:
        fwd.wait_for("forwarding", 6 * TIMEOUT)
        run = site.peers(
            site.phone, "parallel", "--port", "18200", "--count", "50", "--size", str(size)
        )
        got = result_of(run, 24 * TIMEOUT)
        assert (got["ok"], got["errors"]) == (50, []), got
        code, out, err = stop(fwd, signal.SIGTERM)
    finally:
        fwd.stop()
    assert code == 0, (out, err)
    assert "50 connection(s) carried, 0 refused" in err
    assert accepts(site.echo) == before + 50
    allowed = [r for r in audit_rows(site.audit, after) if r.decision == "allow"]
    assert len(allowed) == 50
    assert {r.detail for r in allowed} == {f'peers.phone.policy.forward[1] "{RULES[1]}"'}
    rows = wait_rows(site.audit, after, outcome, 50)
    assert len(rows) == 50 and {r.decision for r in rows} == {"ok"}, rows
    for row in rows:
        check_result(row, bytes_in=None, bytes_out=None)
        assert row.args == {"kind": "forward", "host": CAMERA, "port": ECHO}
    # Out (to the camera): what each connection sent; in: the same back and 32 bytes more.
    sizes = sorted(size + 7 * i for i in range(50))
    assert sorted(r.result["bytes_out"] for r in rows) == sizes  # type: ignore[index]
    assert sorted(r.result["bytes_in"] for r in rows) == [s + 32 for s in sizes]  # type: ignore[index]


@needs_netns
def test_reverse_forward_exposes_a_service_on_the_phones_loopback_to_the_device(
    site: Site, tmp_path: Path
) -> None:
    """`pstp forward -R 9100:127.0.0.1:7000 home`: a GET on the device's 127.0.0.1:9100 is
    answered by the phone's own loopback web server; the device stops listening when the
    forward ends; the audit has the listen and the connection."""
    mine = tmp_path / "phone-www"
    mine.mkdir()
    digest = write_random(mine / "notes.bin", 3 * MiB + 5)
    web = site.peers(site.phone, "web", "--port", "7000", "--root", str(mine))
    web.wait_for("listening", 3 * TIMEOUT)
    after = last_seq(site.audit)
    fwd = site.forward("-R", f"{LISTEN}:127.0.0.1:7000", "home")
    try:
        line = fwd.wait_for("listens", 6 * TIMEOUT)
        assert line == f"home listens on 127.0.0.1:{LISTEN} -> 127.0.0.1:7000 here\n"
        got = site.fetch(site.home, f"http://127.0.0.1:{LISTEN}/notes.bin")
        assert (got["status"], got["bytes"], got["sha256"]) == (200, 3 * MiB + 5, digest), got
        assert accepts(web) == 1
        code, out, err = stop(fwd)
    finally:
        fwd.stop()
        web.stop()
    assert code == 0, (out, err)
    assert "1 connection(s) carried, 0 refused" in err
    gone = site.fetch(site.home, f"http://127.0.0.1:{LISTEN}/notes.bin", tolerate=True)
    assert gone.get("error") == "ConnectionRefusedError", gone
    rows = wait_rows(site.audit, after, outcome, 2)
    carried, listened = rows
    assert carried.decision == "ok", carried
    assert carried.detail is not None
    assert carried.detail.startswith(f"reverse 127.0.0.1:{LISTEN} from 127.0.0.1:"), carried
    assert isinstance(carried.args, dict) and carried.args["listen"] == f"127.0.0.1:{LISTEN}"
    assert carried.args["kind"] == "forward-listen", carried
    check_result(carried, bytes_in=None, bytes_out=None)
    assert isinstance(carried.result, dict)
    # In: from whoever connected on the device (the request); out: the phone's answer.
    assert 0 < carried.result["bytes_in"] < 1024, carried
    assert 3 * MiB < carried.result["bytes_out"] < 3 * MiB + 1024, carried
    assert listened.decision == "ok", listened
    assert isinstance(listened.result, dict)
    assert listened.result["listen"] == f"127.0.0.1:{LISTEN}", listened
    # The listen itself (docs/protocol.md §17.11): its allow row of kind forward-listen,
    # naming the rule, then its outcome row; both with the OPEN's params.
    (decided,) = [r for r in audit_rows(site.audit, after) if r.decision == "allow"]
    assert decided.detail == f'peers.phone.policy.forward_listen[0] "{LISTEN}"'
    listen_args = {"kind": "forward-listen", "host": "127.0.0.1", "port": LISTEN}
    assert (decided.kind, decided.args) == ("forward-listen", listen_args), decided
    assert listened.args == listen_args, listened


@needs_netns
def test_reverse_port_not_in_forward_listen_is_refused(site: Site) -> None:
    """-R on a port forward_listen does not list: the device does not listen, audits the
    denial with its rule, and `pstp forward` says which -R and why on stderr and exits 1
    (no traceback)."""
    after = last_seq(site.audit)
    fwd = site.forward("-R", f"{LISTEN + 1}:127.0.0.1:7000", "home")
    try:
        code, out, err = fwd.finish(6 * TIMEOUT)
    finally:
        fwd.stop()
    assert code == 1, (out, err)
    assert "Traceback" not in err, err
    assert (
        f'-R {LISTEN + 1}:127.0.0.1:7000: refused by home: "127.0.0.1:{LISTEN + 1}" '
        "is not in peers.phone.policy.forward_listen\n"
    ) in err, err
    assert "listens on" not in out
    refused = site.fetch(site.home, f"http://127.0.0.1:{LISTEN + 1}/", tolerate=True)
    assert refused.get("error") == "ConnectionRefusedError", refused
    (row,) = [r for r in audit_rows(site.audit, after) if r.decision == "deny"]
    assert row.args == {"kind": "forward-listen", "host": "127.0.0.1", "port": LISTEN + 1}
    assert row.detail == (
        f'default deny: "127.0.0.1:{LISTEN + 1}" is not in peers.phone.policy.forward_listen'
    )
    assert row.kind == "forward-listen", row  # a refused channel: its kind (§17.11)


@needs_netns
@pytest.mark.timeout(TIMEOUT * 60)
def test_a_steady_8_mbit_stream_runs_60_seconds_without_a_gap(site: Site) -> None:
    """1 MB/s in 10 kB pieces (sequence number, send time, fixed payload) from the phone
    through the forward to the camera for 60 s: every piece arrives, in order and intact,
    none more than GAP after the one before it."""
    after = last_seq(site.audit)
    receiver = site.peers(
        site.camera,
        "stream-recv",
        "--host",
        CAMERA,
        "--port",
        str(STREAM),
        "--timeout",
        str(24 * TIMEOUT),
    )
    receiver.wait_for("listening", 3 * TIMEOUT)
    fwd = site.forward("home", f"18500:{CAMERA}:{STREAM}")
    try:
        fwd.wait_for("forwarding", 6 * TIMEOUT)
        sender = site.peers(
            site.phone, "stream-send", "--port", "18500", "--timeout", str(24 * TIMEOUT)
        )  # 60 s at 1 MB/s in 10 kB pieces: its defaults
        got = result_of(receiver, 60 + 24 * TIMEOUT)
        sent = result_of(sender, 6 * TIMEOUT)
        code, out, err = stop(fwd)
    finally:
        fwd.stop()
    assert code == 0, (out, err)
    assert got["errors"] == [], got
    assert (got["pieces"], got["bytes"]) == (6000, 60_000_000), got
    assert sent["pieces"] == 6000 and sent["eof"], sent
    assert 59 < got["seconds"] < 60 + GAP * 5, got  # paced, not a burst at the end
    assert got["max_gap"] <= GAP, (got, sent)
    assert got["max_latency"] <= 2 * GAP, (got, sent)
    (row,) = wait_rows(site.audit, after, outcome, 1)
    check_result(row, bytes_in=0, bytes_out=60_000_004)  # and the 4-byte piece size first
    assert isinstance(row.result, dict) and row.result["seconds"] >= 59, row


# -- on loopback: each transport, and how a forward ends ------------------------------------


DEVICE = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"EXTRA]
discovery = false

[peers.phone]
key = "{phone}"
[peers.phone.policy]
forward = FORWARD
"""


@dataclass
class Loopback:
    """A device on loopback, its web server, and the phone's configuration."""

    served: Served
    web: Proc
    web_port: int
    digest: str
    config: Path

    def forward(self, *args: str) -> Proc:
        """`pstp -v forward ARGS` as the phone, a process of its own."""
        argv = [sys.executable, "-m", "pstp", "-v", "forward", *args]
        return Proc(argv, env_for(self.config))


def _loopback(
    dir: Path,
    listen: str = "",
    peer: str = "",
    *,
    size: int = 4 * MiB + 3,
    forward: tuple[str, ...] = (),
    policy: str = "",
) -> Loopback:
    """The device "home" (its policy: forward to its web server and to ``forward``, then
    ``policy``), the web server with a ``size``-byte file.bin, and the phone's
    configuration (``peer``: how it reaches home; by default its TCP address)."""
    www = dir / "www"
    www.mkdir()
    digest = write_random(www / "file.bin", size)
    web_port = free_port()
    web = Proc(
        [sys.executable, "-m", PEERS, "web", "--port", str(web_port), "--root", str(www)],
        dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    web.wait_for("listening", 3 * TIMEOUT)
    extra = f', "{listen}"' if listen else ""
    try:
        targets = json.dumps([f"127.0.0.1:{web_port}", *forward])
        served = serve(dir, DEVICE.replace("EXTRA", extra).replace("FORWARD", targets) + policy)
    except BaseException:
        web.stop()
        raise
    config = _private(
        dir / "phone" / "pstp.toml",
        '[device]\nid = "phone"\nlisten = ["127.0.0.1:1"]\ndiscovery = false\n\n'
        f'[peers.home]\nkey = "{PHONE.hex()}"\n'
        + (peer or f'address = "127.0.0.1:{served.port}"\n'),
    )
    return Loopback(served, web, web_port, digest, config)


def _fetch_through(device: Loopback, fwd: Proc, port: int) -> None:
    """GET the file through the forward on ``port``; same SHA-256; its audit row."""
    after = last_seq(device.served.audit)
    fwd.wait_for(
        f"forwarding 127.0.0.1:{port} -> 127.0.0.1:{device.web_port} from home", 6 * TIMEOUT
    )
    got = Proc(
        [sys.executable, "-m", PEERS, "fetch", "--url", f"http://127.0.0.1:{port}/file.bin"],
        dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    found = result_of(got, 24 * TIMEOUT)
    got.finish()
    assert (found["status"], found["sha256"]) == (200, device.digest), found
    (row,) = wait_rows(device.served.audit, after, outcome, 1)
    assert row.decision == "ok" and row.peer == "phone", row
    assert row.args == {"kind": "forward", "host": "127.0.0.1", "port": device.web_port}
    check_result(row, bytes_in=None, bytes_out=None)


@pytest.mark.timeout(TIMEOUT * 40)
@pytest.mark.parametrize("transport", ["tcp", "ws", pytest.param("mqtt", marks=needs_mosquitto)])
def test_a_forwarded_download_over_each_transport(tmp_path: Path, transport: str) -> None:
    """A 4 MiB GET through `pstp forward` with the file's SHA-256, the session over TCP, over
    ``ws://`` (--address) and over MQTT through a real Mosquitto (the peer's via and reach)."""
    broker: Broker | None = None
    try:
        if transport == "tcp":
            device = _loopback(tmp_path)
            where, args = f"127.0.0.1:{device.served.port}", []
        elif transport == "ws":
            url = f"ws://127.0.0.1:{free_port()}/pstp"
            device = _loopback(tmp_path, url, peer="\n")
            where, args = url, ["--address", url]
        else:
            (tmp_path / "broker").mkdir()
            broker = Broker(tmp_path / "broker").start()
            via = f'via = ["{broker.url}"]\nreach = ["mqtt"]\n'
            device = _loopback(tmp_path, broker.url, peer=via)
            wait_reachable_as(device.config, "home")
            where, args = broker.url, []
        port = free_port()
        fwd = device.forward("home", f"{port}:127.0.0.1:{device.web_port}", *args)
        try:
            _fetch_through(device, fwd, port)
            code, out, err = stop(fwd)
        finally:
            fwd.stop()
            device.web.stop()
            device.served.stop()
        assert code == 0, (out, err)
        assert f"connected at {where}" in err, err
        assert "1 connection(s) carried, 0 refused" in err
    finally:
        if broker is not None:
            broker.stop()


def test_forward_exits_4_when_the_session_ends(tmp_path: Path) -> None:
    """The device goes away: `pstp forward` says the session ended and exits 4."""
    device = _loopback(tmp_path, size=1000)
    port = free_port()
    fwd = device.forward("home", f"{port}:127.0.0.1:{device.web_port}")
    try:
        _fetch_through(device, fwd, port)
        device.served.stop()
        code, out, err = fwd.finish(6 * TIMEOUT)
    finally:
        fwd.stop()
        device.web.stop()
        device.served.stop()
    assert code == 4, (out, err)
    assert "the session with home ended" in err
    assert "Traceback" not in err


def test_a_local_port_already_taken_is_reported(tmp_path: Path) -> None:
    """The local port is in use: `pstp forward` says it cannot listen and exits 4 (the exit
    table's "could not connect or bind")."""
    device = _loopback(tmp_path, size=10)
    fwd = device.forward("home", f"127.0.0.1:{device.web_port}:127.0.0.1:1")
    try:
        code, out, err = fwd.finish(6 * TIMEOUT)
    finally:
        fwd.stop()
        device.web.stop()
        device.served.stop()
    assert code == 4, (out, err)
    assert "cannot listen: " in err and "address already in use" in err.lower(), err
    assert "Traceback" not in err
    with AuditLog(device.served.audit) as log:
        assert not [r for r in log.list() if r.kind == "forward"]


def http_get(port: int, path: str = "/file.bin") -> bytes:
    """GET ``path`` from 127.0.0.1:``port`` here; the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=6 * TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200, response.status
        return response.read()
    finally:
        conn.close()


def test_connections_open_when_the_forward_stops_are_ended_and_audited(tmp_path: Path) -> None:
    """Ctrl-C while a -L and a -R connection are both open: both are closed at both ends,
    `pstp forward` exits 0 without a traceback, and the device audits each connection (one
    row each, with its bytes each way, duration and how it ended) without logging a
    traceback either."""
    rport, lport = free_port(), free_port()
    held: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as service:
        service.settimeout(6 * TIMEOUT)
        sport = service.getsockname()[1]
        device = _loopback(
            tmp_path,
            size=10,
            forward=(f"127.0.0.1:{sport}",),
            policy=f'forward_listen = ["{rport}"]\n',
        )
        after = last_seq(device.served.audit)
        fwd = device.forward(
            "-L", f"{lport}:127.0.0.1:{sport}", "-R", f"{rport}:127.0.0.1:{sport}", "home"
        )
        try:
            fwd.wait_for("listens on", 6 * TIMEOUT)
            for port, hello in ((lport, b"via -L"), (rport, b"via -R")):
                here = socket.create_connection(("127.0.0.1", port), 6 * TIMEOUT)
                held.append(here)
                here.sendall(hello)
                there, _ = service.accept()
                held.append(there)
                there.settimeout(6 * TIMEOUT)
                assert there.recv(100) == hello, say_where(fwd)
                there.sendall(b"ok")
                assert here.recv(100) == b"ok", say_where(fwd)
            code, out, err = stop(fwd)
            for sock in held:  # both ends of both connections
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(100) == b"", sock

            def ended(row: AuditRow) -> bool:  # a connection's row, not the listen's
                return outcome(row) and isinstance(row.args, dict) and row.args.get("port") != rport

            rows = wait_rows(device.served.audit, after, ended, 2)
        finally:
            fwd.stop()
            for sock in held:
                sock.close()
            device.web.stop()
            device.served.stop()
    assert code == 0, (out, err)
    # Every defect at once: a traceback here, one on the device, a row missing or short.
    problems = []
    if "Traceback" in err:
        problems.append(f"pstp forward printed a traceback: {err}")
    if "Traceback" in device.served.stderr():
        problems.append(f"the device logged a traceback: {device.served.stderr()}")
    local = [r for r in rows if isinstance(r.args, dict) and r.args.get("port") == sport]
    remote = [r for r in rows if (r.detail or "").startswith("reverse ")]
    # -L: out to the service 6 bytes, in 2; -R: in from the device's side 6, out 2.
    for name, found, want in (("-L", local, (6, 2)), ("-R", remote, (2, 6))):
        if len(found) != 1:
            problems.append(f"{name}: {len(found)} audit rows for its connection: {rows}")
            continue
        result = found[0].result
        keys = {"bytes_in", "bytes_out", "seconds", "ended"}
        if not isinstance(result, dict) or not keys <= set(result):
            problems.append(f"{name}: the row lacks {keys}: {found[0]}")
        elif (result["bytes_out"], result["bytes_in"]) != want:
            problems.append(f"{name}: bytes out, in {want} expected: {found[0]}")
    assert not problems, "\n\n".join(problems)


def reload(device: Loopback) -> None:
    """SIGHUP the device and wait until it says it reloaded."""
    seen = device.served.stderr().count("configuration reloaded")
    device.served.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 4 * TIMEOUT
    while device.served.stderr().count("configuration reloaded") == seen:
        assert time.monotonic() < deadline, device.served.stderr()
        time.sleep(0.05)


def test_a_reload_keeps_an_allowed_reverse_forward_and_ends_a_removed_one(
    tmp_path: Path,
) -> None:
    """SIGHUP with the configuration unchanged: the device goes on listening for -R (the
    listen is re-judged against forward_listen, which still allows it).  SIGHUP after
    forward_listen was emptied: it stops listening, audits the revocation, and `pstp
    forward` says so on stderr and keeps running."""
    rport = free_port()
    device = _loopback(tmp_path, size=1000, policy=f'forward_listen = ["{rport}"]\n')
    fwd = device.forward("-R", f"{rport}:127.0.0.1:{device.web_port}", "home")
    try:
        fwd.wait_for("listens on", 6 * TIMEOUT)
        assert hashlib.sha256(http_get(rport)).hexdigest() == device.digest
        reload(device)
        time.sleep(0.5)  # what a reload re-judges is ended at once, if at all
        try:
            body = http_get(rport)
        except OSError as exc:
            raise AssertionError(f"-R gone after a reload: {exc}") from None
        assert hashlib.sha256(body).hexdigest() == device.digest
        config = device.served.dir / "pstp.toml"
        config.write_text(config.read_text().replace(f'forward_listen = ["{rport}"]', ""))
        reload(device)
        line = wait_err(fwd, f"-R {rport}:127.0.0.1:{device.web_port}: the device no longer")
        assert f"no longer listens on 127.0.0.1:{rport}: " in line, line
        with pytest.raises(ConnectionRefusedError):
            http_get(rport)
        assert fwd.popen.poll() is None, say_where(fwd)  # its other forwards would go on
        code, out, err = stop(fwd)
    finally:
        fwd.stop()
        device.web.stop()
        device.served.stop()
    assert code == 0, (out, err)
    assert "Traceback" not in err, err
    with AuditLog(device.served.audit) as log:
        revoked = [r for r in log.list() if isinstance(r.result, dict) and "revoked" in r.result]
    assert len(revoked) == 1, revoked
    assert revoked[0].args == {"kind": "forward-listen", "host": "127.0.0.1", "port": rport}
    assert isinstance(revoked[0].result, dict)
    assert revoked[0].result["revoked"].startswith("no longer allowed: "), revoked
