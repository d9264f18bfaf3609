"""A real `pstp serve` reached through a real Mosquitto by the real CLI (issue 14).

Acceptance of the MQTT transport (docs/protocol.md §19.3): between two processes,
through one broker and through two bridged brokers, an action (`pstp run`), an exec
(`pstp exec`, stdin streamed) and a 50 MiB `pstp put` with matching SHA-256, while
``mosquitto_sub -t '#' -v`` records everything the broker carries: the capture holds
neither the device id, nor the action name, nor a plaintext marker from the payloads.
Then a device in a network namespace that has a route to the broker only, and a
client with no route to the device, which finds it up its reach ladder (direct address
unreachable, nothing on the LAN, then the broker) and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pstp.daemon.audit import AuditLog
from tests.cli.test_pair import env_for, free_port
from tests.daemon.serving import PHONE, Served, serve
from tests.daemon.test_files import sha256
from tests.discovery.test_netns import Lab
from tests.discovery.test_netns import pytestmark as needs_netns
from tests.helpers import TIMEOUT
from tests.mosquitto import MOSQUITTO, Broker, bridged, capture, needs_mosquitto

pytestmark = needs_mosquitto

MiB = 1 << 20
#: Names that must never reach the broker: long enough not to occur by chance in 50 MiB
#: of ciphertext.
DEVICE = "kitchen-kettle-7f3a9c"
ACTION = "kettle.boil-the-water"
MARKER = b"PSTP-PLAINTEXT-MARKER-" + secrets.token_hex(8).encode()

HOME = f"""\
[device]
id = "{DEVICE}"
listen = ["127.0.0.1:{{port}}", "{{broker}}"]
discovery = false

[actions."{ACTION}"]
argv = ["echo", "boiling at {{{{level}}}} degrees"]
args = {{{{ level = {{{{ type = "int", min = 40, max = 100, default = 100 }}}} }}}}

[peers.phone]
key = "{{phone}}"
[peers.phone.policy]
actions = ["kettle.*"]
exec = [["sha256sum"]]
files = [ {{{{ root = "{{share}}", write = true }}}} ]
"""


def client_config(dir: Path, broker: str, *, device: str = DEVICE) -> Path:
    """The client "phone" with the peer "home" reached through ``broker`` only."""
    path = dir / "phone.toml"
    path.write_text(
        '[device]\nid = "phone"\nlisten = ["127.0.0.1:1"]\ndiscovery = false\n\n'
        f'[peers.home]\nkey = "{PHONE.hex()}"\ndevice = "{device}"\n'
        f'via = ["{broker}"]\nreach = ["mqtt"]\n'
    )
    path.chmod(0o600)
    return path


def pstp(
    config: Path, *args: str, stdin: bytes = b"", timeout: float = TIMEOUT * 6
) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m pstp ARGS` as "phone" to completion."""
    return subprocess.run(
        [sys.executable, "-m", "pstp", *args],
        input=stdin,
        capture_output=True,
        env=env_for(config),
        timeout=timeout,
        check=False,
    )


def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    """A finished command's output, for assertion messages."""
    return f"exit {proc.returncode}\n{proc.stdout.decode()}\n{proc.stderr.decode()}"


class Sniffer:
    """``mosquitto_sub -t '#' -v`` on a broker, its output in a file."""

    def __init__(self, broker: Broker, path: Path) -> None:
        self.path = path
        self.file = path.open("wb")
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", "#", "-v"],
            stdout=self.file,
            stderr=subprocess.DEVNULL,
        )
        # Subscribed once a probe comes back.
        deadline = time.monotonic() + TIMEOUT
        while b"sniffer/probe" not in path.read_bytes():
            assert time.monotonic() < deadline, "mosquitto_sub did not subscribe"
            capture(broker, "sniffer/probe", count=1, timeout=0.3, publish=(broker, b"probe"))

    def stop(self) -> bytes:
        """Stop it (again is harmless); what it captured."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(TIMEOUT)
        if not self.file.closed:
            self.file.close()
        return self.path.read_bytes()


def start_home(dir: Path, broker: str) -> tuple[Served, Path]:
    """`pstp serve` for the device, listening on loopback TCP and through ``broker``."""
    share = dir / "share"
    share.mkdir()
    config = HOME.replace("{broker}", broker).replace("{share}", str(share))
    served = serve(dir, config)
    return served, share


def wait_reachable(config: Path) -> None:
    """Until the device has subscribed at its broker (it connects in the background)."""
    wait_reachable_as(config, "home")


def exercise(served: Served, share: Path, config: Path, tmp: Path) -> None:
    """An action, an exec with streamed stdin and a 50 MiB put, all through the broker."""
    before = len(AuditLog(served.audit).list())
    run = pstp(config, "run", "home", ACTION, "level=90")
    assert (run.returncode, run.stdout) == (0, b"boiling at 90 degrees\n"), text(run)

    data = MARKER + os.urandom(MiB) + MARKER
    exe = pstp(config, "exec", "home", "--", "sha256sum", stdin=data)
    assert exe.returncode == 0, text(exe)
    assert exe.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()

    local = tmp / "big.bin"
    with local.open("wb") as f:
        for _ in range(50):
            f.write(MARKER + os.urandom(MiB - len(MARKER)))
    remote = share / "big.bin"
    put = pstp(config, "put", "--json", "home", str(local), str(remote), timeout=TIMEOUT * 30)
    assert put.returncode == 0, text(put)
    sent = json.loads(put.stdout.decode().splitlines()[-1])
    assert sent["bytes_sent"] == 50 * MiB and sent["files"] == 1, sent
    assert sha256(remote) == sha256(local)

    with AuditLog(served.audit) as log:
        rows = log.list()[before:]
    assert {r.peer for r in rows} == {"phone"}
    assert {("action", "ok"), ("exec", "ok")} <= {(r.kind, r.decision) for r in rows}, rows


def assert_blind(captured: bytes) -> None:
    """The broker saw ciphertext under derived topics: no name, no plaintext."""
    assert len(captured) > 50 * MiB  # the whole put went through it
    for secret in (DEVICE.encode(), ACTION.encode(), b"phone", MARKER, b"boiling at"):
        assert secret not in captured, secret
    topics = {line.split(b" ", 1)[0] for line in captured.split(b"\npstp/")[1:]}
    assert topics and all(len(t.split(b"/")) == 3 for t in topics), list(topics)[:3]


def run_through(tmp_path: Path, device_broker: str, sniffed: Broker) -> Served:
    """The device on ``device_broker``, the client on ``sniffed`` (the same broker or a
    bridged one): an action, an exec and a put, with mosquitto_sub listening on
    ``sniffed`` all along.  Returns the (stopped) daemon, for what it printed."""
    served, share = start_home(tmp_path, device_broker)
    sniffer: Sniffer | None = None
    try:
        sniffer = Sniffer(sniffed, tmp_path / "capture.bin")
        config = client_config(tmp_path, sniffed.url)
        wait_reachable(config)
        exercise(served, share, config, tmp_path)
        assert_blind(sniffer.stop())
    finally:
        if sniffer is not None:
            sniffer.stop()  # never left running when an assertion failed
        served.stop()
    return served


@pytest.mark.timeout(TIMEOUT * 60)
def test_action_exec_and_put_through_one_broker(tmp_path: Path) -> None:
    """One Mosquitto between device and client; mosquitto_sub sees no name, no plaintext."""
    (tmp_path / "broker").mkdir()
    with Broker(tmp_path / "broker") as b:
        served = run_through(tmp_path, b.url, b)
    assert served.proc.stdout is not None
    assert "connected to the broker" in served.proc.stdout.read()


@pytest.mark.timeout(TIMEOUT * 60)
def test_action_exec_and_put_through_bridged_brokers(tmp_path: Path) -> None:
    """The device on broker A, the client on broker B, joined by a Mosquitto bridge."""
    (tmp_path / "brokers").mkdir()
    with bridged(tmp_path / "brokers") as (a, b):
        run_through(tmp_path, a.url, b)


# -- a device behind NAT: a route to the broker, none to the client -----------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        made.close()


@needs_netns
@pytest.mark.timeout(TIMEOUT * 20)
def test_a_device_with_only_a_broker_route_is_reached_up_the_ladder(
    lab: Lab, tmp_path: Path
) -> None:
    """Three hosts: the broker's, on two LANs that it does not route between; the
    device on one, the client on the other.  The client's remembered direct address is
    unreachable and discovery finds nothing on its LAN; the broker path works, and
    `pstp ping -v --json` says that is the way it took."""
    broker_ns = lab.host("broker", (1, "10.77.1.1"), (2, "10.77.2.1"))
    device_ns = lab.host("device", (1, "10.77.1.2"))
    client_ns = lab.host("client", (2, "10.77.2.2"))
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("listener 1883 0.0.0.0\nallow_anonymous true\nuser root\n")
    mosquitto = subprocess.Popen(
        ["ip", "netns", "exec", broker_ns, MOSQUITTO, "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        share = tmp_path / "share"
        share.mkdir()
        home = tmp_path / "home"
        home.mkdir()
        cfg = home / "pstp.toml"
        cfg.write_text(
            HOME.replace("{broker}", "mqtt://10.77.1.1:1883")
            .replace("{share}", str(share))
            .replace("127.0.0.1:{port}", "10.77.1.2:9000")
            .replace("discovery = false", "discovery = true")
            .format(phone=PHONE.hex())
        )
        cfg.chmod(0o600)
        device = lab.pstp(device_ns, cfg, "serve")
        device.wait_for("connected to the broker", TIMEOUT * 3)

        phone = tmp_path / "phone"
        phone.mkdir()
        pcfg = phone / "pstp.toml"
        pcfg.write_text(
            '[device]\nid = "phone"\nlisten = ["10.77.2.2:9000"]\ndiscovery = false\n\n'
            f'[peers.home]\nkey = "{PHONE.hex()}"\ndevice = "{DEVICE}"\n'
            'address = "10.77.1.2:9000"\nvia = ["mqtt://10.77.2.1:1883"]\n'
        )
        pcfg.chmod(0o600)
        code, out, err = lab.pstp(client_ns, pcfg, "-v", "ping", "-v", "--json", "home").finish()
        assert code == 0, (out, err)
        report = json.loads(out.splitlines()[-1])
        assert report["reached"] == {"step": "mqtt", "address": "mqtt://10.77.2.1"}
        # The ladder in order: the direct address, discovery on its LAN, then the broker.
        steps = ["10.77.1.2:9000 (remembered)", "discovery on port 9000", "connected at mqtt"]
        at = [err.find(step) for step in steps]
        assert -1 not in at and at == sorted(at), err
        code, out, err = lab.pstp(client_ns, pcfg, "run", "home", ACTION, "level=55").finish()
        assert (code, out) == (0, "boiling at 55 degrees\n"), err
        # The direct address failed, so it is still the remembered one (not the broker).
        assert 'address = "10.77.1.2:9000"' in pcfg.read_text()
    finally:
        mosquitto.terminate()
        mosquitto.wait(TIMEOUT)


# -- docs/howto/broker.md as written: TLS, a login, an ACL -----------------------------------


@pytest.mark.timeout(TIMEOUT * 20)
def test_the_how_to_broker_device_and_client_work_as_written(tmp_path: Path) -> None:
    """The how-to's Mosquitto block (TLS on its listener, no anonymous access, a password
    file and the ACL), its device table and its client table, changed only where a test
    must (ports, file paths, "localhost" for the certificate's name, a ca_file for the
    test's own CA, and a reach without discovery, which would broadcast): `pstp ping -v`
    reaches the device through the broker over mqtts:// with a login, and `pstp run`
    runs an action; the wrong password is refused by the broker, by name."""
    from tests.mosquitto import howto_block
    from tests.tlsproxy import make_certs

    certs = make_certs(tmp_path / "certs")
    bdir = tmp_path / "broker"
    bdir.mkdir()
    passwd, acl = bdir / "passwd", bdir / "acl"
    for user, password in (("kettle", "kettle-pw"), ("phone", "phone-pw")):
        subprocess.run(
            ["mosquitto_passwd", "-b", *(["-c"] * (user == "kettle")), str(passwd), user, password],
            check=True,
        )
    acl.write_text(howto_block("3.", 1) + howto_block("3.", 1).replace("kettle", "phone"))
    port = free_port()
    listener = (
        howto_block("3.")
        .replace("listener 8883", f"listener {port} 127.0.0.1")
        .replace("/etc/mosquitto/certs/broker.crt", str(certs.cert))
        .replace("/etc/mosquitto/certs/broker.key", str(certs.key))
        .replace("/etc/mosquitto/passwd", str(passwd))
        .replace("/etc/mosquitto/acl", str(acl))
    )
    url = f"mqtts://localhost:{port}"
    with Broker(bdir, port=port, listener=listener):
        home = tmp_path / "home"
        home.mkdir()
        (home / "broker.pass").write_text("kettle-pw\n")
        (home / "broker.pass").chmod(0o600)
        device = (
            howto_block("1.")
            .replace('"0.0.0.0:9000"', '"127.0.0.1:{port}"')
            .replace('"mqtts://broker.example.net"', f'"{url}"')
            .replace('[brokers."broker.example.net"]', '[brokers."localhost"]')
            + f'ca_file = "{certs.ca}"\n\n'
            + f'[actions."{ACTION}"]\nargv = ["echo", "boiling"]\n\n'
            + '[peers.phone]\nkey = "{phone}"\n[peers.phone.policy]\nactions = ["kettle.*"]\n'
        )
        served = serve(home, device)
        try:
            phone = tmp_path / "phone"
            phone.mkdir()
            (phone / "broker.pass").write_text("phone-pw\n")
            (phone / "broker.pass").chmod(0o600)
            client = phone / "pstp.toml"
            client.write_text(
                '[device]\nid = "phone"\nlisten = ["127.0.0.1:1"]\ndiscovery = false\n\n'
                + howto_block("2.")
                .replace('"…"', f'"{PHONE.hex()}"')
                .replace('"192.168.1.30:9000"', '"127.0.0.1:1"')
                .replace('"mqtts://broker.example.net"', f'"{url}"')
                .replace(
                    '# reach = ["direct", "lan", "websocket", "mqtt"]', 'reach = ["direct", "mqtt"]'
                )
                + f'\n[brokers."localhost"]\nusername = "phone"\npassword_file = "broker.pass"\n'
                f'ca_file = "{certs.ca}"\n'
            )
            client.chmod(0o600)
            wait_reachable_as(client, "kettle")
            ping = pstp(client, "-v", "ping", "-v", "--json", "kettle")
            assert ping.returncode == 0, text(ping)
            report = json.loads(ping.stdout.decode().splitlines()[-1])
            assert report["reached"] == {"step": "mqtt", "address": url}
            assert "127.0.0.1:1 (remembered): connection refused" in ping.stderr.decode()
            run = pstp(client, "run", "kettle", ACTION)
            assert (run.returncode, run.stdout) == (0, b"boiling\n"), text(run)
            (phone / "broker.pass").write_text("wrong\n")
            refused = pstp(client, "ping", "kettle")
            assert refused.returncode != 0
            assert "broker refused: Not authorized" in refused.stderr.decode(), text(refused)
        finally:
            served.stop()


#: The client's ladder without discovery (a broadcast, which tests send only in namespaces).
NO_LAN = 'reach = ["direct", "mqtt"]'


def wait_reachable_as(config: Path, peer: str) -> None:
    """Until ``peer`` answers a ping (its daemon connects to the broker in the background)."""
    deadline = time.monotonic() + TIMEOUT * 2
    while True:
        ping = pstp(config, "ping", peer, timeout=TIMEOUT * 2)
        if ping.returncode == 0:
            return
        assert time.monotonic() < deadline, text(ping)
        time.sleep(0.2)
