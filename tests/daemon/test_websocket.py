"""A real `pstp serve` on ``ws://``, reached by the real CLI directly and through nginx TLS.

Issue 13's acceptance for the WebSocket transport: between two processes, over
``ws://`` and over ``wss://`` through a TLS-terminating nginx started here (its server
block read from docs/howto/outside.md, with a throw-away CA given to the client in
``[peers.home] ca_file``), a session (`pstp ping`), an action (`pstp run`), an exec
(`pstp exec`) and a 200 MiB `pstp put` then `pstp get` with matching SHA-256.  A
``wss://`` client without the CA is refused before anything reaches the device.

Every client runs with ``HTTP_PROXY``, ``HTTPS_PROXY`` and ``ALL_PROXY`` aimed at a
closed port: pstp connects directly, so they must change nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pstp.daemon.audit import AuditLog, AuditRow
from pstp.settings import load
from tests.cli.test_pair import env_for, free_port
from tests.daemon.serving import PHONE, Served, serve
from tests.daemon.test_files import sha256
from tests.helpers import TIMEOUT
from tests.tlsproxy import HOWTO, Certs, Nginx, make_certs

MiB = 1 << 20
#: The WebSocket path the device serves and the how-to's nginx block passes on.
PATH = "/pstp"

# {port} and {wsport} are filled in; doubled braces are TOML's and the action's own.
HOME = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}", "ws://127.0.0.1:{wsport}/pstp"]
discovery = false

[actions."lights.on"]
argv = ["echo", "lights on at {{level}}%"]
args = {{ level = {{ type = "int", min = 0, max = 100, default = 100 }} }}

[peers.phone]
key = "{phone}"
[peers.phone.policy]
actions = ["lights.*"]
exec = [["sha256sum"]]
files = [ {{ root = "{share}", write = true }} ]
"""

#: Where a proxy-obeying client would go: nothing listens there.
NO_PROXY_HERE = "http://127.0.0.1:9"
PROXY_ENV = {
    name: NO_PROXY_HERE
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")
}


class Home:
    """The serving device: its daemon, WebSocket port and file root."""

    def __init__(self, served: Served, wsport: int, share: Path) -> None:
        self.served = served
        self.wsport = wsport
        self.share = share

    def audit(self) -> list[AuditRow]:
        """Every row of the device's audit log."""
        with AuditLog(self.served.audit) as log:
            return log.list()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    """`pstp serve` for "home" on 127.0.0.1 TCP and ws://127.0.0.1:WSPORT/pstp."""
    dir = tmp_path_factory.mktemp("ws-home")
    share = dir / "share"
    share.mkdir()
    wsport = free_port()
    config = HOME.replace("{wsport}", str(wsport)).replace("{share}", str(share))
    served = serve(dir, config)  # returns once it serves on every listen address
    try:
        yield Home(served, wsport, share)
    finally:
        served.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throw-away CA and the proxy's certificate for 127.0.0.1 and localhost."""
    return make_certs(tmp_path_factory.mktemp("ws-certs"))


@pytest.fixture(scope="module")
def proxy(home: Home, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx terminating TLS on 127.0.0.1:PORT in front of the device's ws:// port."""
    dir = tmp_path_factory.mktemp("ws-nginx")
    with Nginx(dir, home.wsport, certs, free_port(), TIMEOUT * 4) as nginx:
        yield nginx


def url_for(request: pytest.FixtureRequest, transport: str) -> tuple[str, Certs | None]:
    """The address to reach "home" at over ``transport``, and the CA it needs (wss)."""
    home: Home = request.getfixturevalue("home")
    if transport == "ws":
        return f"ws://127.0.0.1:{home.wsport}{PATH}", None
    nginx: Nginx = request.getfixturevalue("proxy")
    return f"wss://127.0.0.1:{nginx.port}{PATH}", request.getfixturevalue("certs")


def client_config(dir: Path, url: str, ca: Path | None) -> Path:
    """The client's ("phone") configuration holding the peer "home" at ``url``."""
    path = dir / "phone.toml"
    ca_line = f'ca_file = "{ca}"\n' if ca is not None else ""
    path.write_text(
        '[device]\nid = "phone"\nlisten = ["127.0.0.1:1"]\ndiscovery = false\n\n'
        f'[peers.home]\nkey = "{PHONE.hex()}"\naddress = "{url}"\n{ca_line}'
    )
    path.chmod(0o600)
    return path


def pstp(
    config: Path, *args: str, stdin: bytes = b"", timeout: float = TIMEOUT * 6
) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m pstp ARGS` as "phone" (the proxy variables set) to completion."""
    return subprocess.run(
        [sys.executable, "-m", "pstp", *args],
        input=stdin,
        capture_output=True,
        env=env_for(config, **PROXY_ENV),
        timeout=timeout,
        check=False,
    )


def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    """A finished command's output, for assertion messages."""
    return f"exit {proc.returncode}\n{proc.stdout.decode()}\n{proc.stderr.decode()}"


@pytest.mark.parametrize("transport", ["ws", "wss"])
def test_session_action_and_exec(
    request: pytest.FixtureRequest, home: Home, transport: str, tmp_path: Path
) -> None:
    """`pstp ping -v`, `pstp run` and `pstp exec` (stdin streamed both ways) over the
    transport, each an authenticated session in the device's audit log."""
    url, certs = url_for(request, transport)
    config = client_config(tmp_path, url, certs.ca if certs else None)
    before = len(home.audit())

    ping = pstp(config, "ping", "-v", "-c", "3", "--address", url, "home")
    assert ping.returncode == 0, text(ping)
    assert ping.stdout.decode().count("pong ") == 3, text(ping)
    assert f"connected at {url}" in ping.stderr.decode(), text(ping)

    run = pstp(config, "run", "--address", url, "home", "lights.on", "level=42")
    assert (run.returncode, run.stdout) == (0, b"lights on at 42%\n"), text(run)

    data = os.urandom(3 * MiB + 17)
    exe = pstp(config, "exec", "--address", url, "home", "--", "sha256sum", stdin=data)
    assert exe.returncode == 0, text(exe)
    assert exe.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()

    rows = home.audit()[before:]
    assert [r.decision for r in rows if r.kind == "auth"] == ["ok"] * 3
    assert {r.peer for r in rows} == {"phone"}
    done = {(r.kind, r.decision) for r in rows}
    assert {("action", "ok"), ("exec", "ok")} <= done, rows


@pytest.mark.timeout(TIMEOUT * 120)
@pytest.mark.parametrize("transport", ["ws", "wss"])
def test_200_mib_put_then_get_round_trips(
    request: pytest.FixtureRequest, home: Home, transport: str, tmp_path: Path
) -> None:
    """`pstp put` of 200 MiB of random bytes, then `pstp get` of it: the same SHA-256."""
    url, certs = url_for(request, transport)
    config = client_config(tmp_path, url, certs.ca if certs else None)
    local = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with local.open("wb") as f:
        for _ in range(50):
            chunk = os.urandom(4 * MiB)
            digest.update(chunk)
            f.write(chunk)
    remote = home.share / f"big-{transport}.bin"
    back = tmp_path / "back.bin"
    try:
        put = pstp(
            config,
            "put",
            "--json",
            "--address",
            url,
            "home",
            str(local),
            str(remote),
            timeout=TIMEOUT * 60,
        )
        assert put.returncode == 0, text(put)
        sent = json.loads(put.stdout.decode().splitlines()[-1])
        assert sent["bytes_sent"] == 200 * MiB and sent["files"] == 1, sent
        got = pstp(
            config,
            "get",
            "--json",
            "--address",
            url,
            "home",
            str(remote),
            str(back),
            timeout=TIMEOUT * 60,
        )
        assert got.returncode == 0, text(got)
        assert back.stat().st_size == 200 * MiB
        assert sha256(back) == sha256(remote) == digest.hexdigest()
    finally:
        for path in (local, remote, back):
            path.unlink(missing_ok=True)


def test_wss_without_the_ca_is_refused_before_the_device(
    proxy: Nginx, home: Home, tmp_path: Path
) -> None:
    """A client that does not trust the proxy's CA: "TLS certificate not trusted", exit
    255 for exec (a failure of pstp itself), and no row in the device's audit log."""
    url = f"wss://127.0.0.1:{proxy.port}{PATH}"
    config = client_config(tmp_path, url, None)
    before = home.audit()
    exe = pstp(config, "exec", "-n", "--address", url, "home", "--", "sha256sum")
    assert exe.returncode == 255, text(exe)
    err = exe.stderr.decode()
    assert "TLS certificate not trusted" in err and url in err, err
    ping = pstp(config, "ping", "--address", url, "home")
    assert ping.returncode == 4 and b"TLS certificate not trusted" in ping.stderr, text(ping)
    assert home.audit() == before


def test_the_how_to_device_table_loads_as_written(tmp_path: Path) -> None:
    """docs/howto/outside.md's `[device]` table: a TCP and a ws:// listen address, and the
    proxy's public wss:// address advertised."""
    block = HOWTO.read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "pstp.toml"
    path.write_text(block)
    path.chmod(0o600)
    settings = load(path)
    assert settings.listen == (("0.0.0.0", 9000),)
    assert [str(a) for a in settings.websocket] == ["ws://127.0.0.1:8080/pstp"]
    assert [str(a) for a in settings.advertise] == ["wss://home.example.org/pstp"]
