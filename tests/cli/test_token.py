"""`pstp token issue|list|revoke|import` against a real `pstp serve` (issue 13).

The device's configuration is served by a `pstp serve` child (TCP and ws://,
advertising the ws:// address); a second configuration is the guest's, which
imports the link and reaches the device with `pstp ping` and `pstp run`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pstp.cli.main import build_parser, main
from pstp.daemon.audit import AuditLog
from pstp.daemon.pairing import parse_link
from pstp.daemon.tokens import TokenStore
from pstp.protocol.tokens import decode_token_string
from pstp.settings import create, load
from tests.cli.test_pair import free_port, pstp
from tests.daemon.serving import Served, serve

HOME = """\
[device]
id = "home"
listen = ["127.0.0.1:{{port}}", "ws://127.0.0.1:{ws}/pstp"]
advertise = ["ws://127.0.0.1:{ws}/pstp"]
discovery = false

[actions."gate.open"]
argv = ["echo", "gate open"]

[actions."lights.on"]
argv = ["echo", "lights on"]

[peers.phone]
key = "{{phone}}"
[peers.phone.policy]
actions = ["*"]
"""


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Served]:
    """`pstp serve` for "home"; its configuration is served.dir / "pstp.toml"."""
    home = tmp_path / "home"
    home.mkdir()
    served = serve(home, HOME.format(ws=free_port()))
    try:
        yield served
    finally:
        served.stop()


def guest_config(tmp_path: Path) -> Path:
    guest = tmp_path / "guest"
    guest.mkdir()
    return create(guest / "pstp.toml", "neighbour", listen="127.0.0.1:9999")  # never served


def issued(out: str) -> tuple[str, str]:
    """The token id and the pstp:// link `pstp token issue` printed."""
    (line,) = [w for w in out.split() if w.startswith("pstp://")]
    (token_id,) = [w for w in out.split() if w.startswith("tok_")][:1]
    return token_id, line


def cli(config: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run ``pstp --config CONFIG ARGS`` in this process: (status, stdout, stderr)."""
    import contextlib
    import io
    import sys

    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(["--config", str(config), *args])
            except SystemExit as exc:  # argparse
                status = int(exc.code or 0)
    finally:
        sys.stdin = old_stdin
    return status, out.getvalue(), err.getvalue()


def listed(config: Path) -> dict[str, dict[str, object]]:
    status, out, err = cli(config, "token", "list", "--json")
    assert status == 0, err
    return {t["id"]: t for t in json.loads(out)}


def test_a_guest_credential_from_issue_to_revoke(tmp_path: Path, device: Served) -> None:
    """issue prints a pstp:// link holding the token; import reads it from stdin; the guest
    pings and runs its action over the advertised ws:// address, and over TCP with --via;
    another action is refused (255); list counts the uses; revoke ends it."""
    cfg = device.dir / "pstp.toml"
    ws = load(cfg).advertise[0]
    args = ("--peer", "neighbour", "--allow", "gate.open", "--ttl", "2h", "--uses", "3")
    status, out, err = cli(cfg, "token", "issue", *args)
    assert status == 0, err
    assert "issued tok_" in out and "(a guest)" in out
    token_id, uri = issued(out)
    assert uri.startswith("pstp://") and "token=pstp_tok_" in uri
    link = parse_link(uri)
    assert link.kind == "token" and link.params["id"] == "home"
    assert link.addresses[0][1] == device.port and link.via == (str(ws),)
    got_id, secret = decode_token_string(link.params["token"])
    assert got_id == token_id
    store = TokenStore(device.dir / "tokens.sqlite")
    try:
        token = store.get(token_id)
    finally:
        store.close()
    assert token is not None and token.secret == secret and token.peer == "neighbour"
    assert token.expires - token.created == 7200 and token.max_uses == 3
    assert secret.hex() not in out  # the link holds it, encoded, nowhere else

    guest = guest_config(tmp_path)
    status, out, err = cli(guest, "token", "import", "neighbour", stdin=uri + "\n")
    assert status == 0, err
    peer = load(guest).peers["neighbour"]
    assert (peer.key, peer.token, peer.device_id) == (secret, token_id, "home")
    assert peer.address == str(ws)

    ping = pstp("ping", "neighbour", config=guest)
    assert ping.returncode == 0, ping.stderr
    ran = pstp("run", "neighbour", "gate.open", config=guest)
    assert (ran.returncode, ran.stdout) == (0, "gate open\n"), ran.stderr
    lights = pstp("run", "neighbour", "lights.on", config=guest)
    assert lights.returncode == 255
    assert f"token {token_id} may not run 'lights.on'" in lights.stderr
    assert "lights on" not in lights.stdout
    shown = listed(cfg)[token_id]
    assert (shown["uses"], shown["max_uses"], shown["peer"]) == (3, 3, "neighbour")
    assert shown["state"] == f"token {token_id} has no uses left (3 used)"
    assert "secret" not in shown
    used_up = pstp("ping", "neighbour", config=guest)
    assert used_up.returncode != 0

    # The same over TCP: a link whose address is the listener's (--via).
    via = f"127.0.0.1:{device.port}"
    args = ("--peer", "neighbour", "--allow", "gate.*", "--json", "--via", via)
    status, out, err = cli(cfg, "token", "issue", *args)
    assert status == 0, err
    second = json.loads(out)
    assert second["actions"] == ["gate.*"] and second["max_uses"] is None
    status, _, err = cli(guest, "token", "import", "gate", stdin=second["uri"] + "\n")
    assert status == 0, err
    assert load(guest).peers["gate"].address == via
    ran = pstp("run", "gate", "gate.open", config=guest)
    assert (ran.returncode, ran.stdout) == (0, "gate open\n"), ran.stderr
    assert listed(cfg)[second["id"]]["uses"] == 1

    with AuditLog(device.audit) as log:
        mark = log.head()[0]
    status, out, err = cli(cfg, "token", "revoke", second["id"])
    assert status == 0, err
    assert f"revoked {second['id']}" in out
    assert cli(cfg, "token", "revoke", second["id"])[0] == 1
    assert listed(cfg)[second["id"]]["state"] == f"token {second['id']} was revoked"
    after = pstp("ping", "gate", config=guest)
    assert after.returncode != 0
    assert "handshake failed" in after.stderr or "was revoked" in after.stderr, after.stderr
    # Audited by the daemon: the revoked token refused at admission, or its key gone.
    with AuditLog(device.audit) as log:
        rows = [(r.kind, r.decision, r.detail or "") for r in log.list()[mark:]]
    refusals = {
        ("token", "deny"): f"token {second['id']} was revoked",
        ("auth", "fail"): "unknown key id",
    }
    assert any(refusals.get((k, d), "\0") in text for k, d, text in rows), rows


def test_import_takes_the_link_from_stdin_or_a_file_never_the_command_line(
    tmp_path: Path,
) -> None:
    """The parser has no argument for the link (a secret in argv shows in ps); a link on the
    command line is an error; --file works; a damaged link is refused."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    token = sub.choices["token"]
    tsub = next(a for a in token._actions if isinstance(a, argparse._SubParsersAction))
    importer = tsub.choices["import"]
    positional = [a.dest for a in importer._actions if not a.option_strings]
    assert positional == ["name"]

    device = create(tmp_path / "home" / "pstp.toml", "home", listen="127.0.0.1:9000")
    status, out, err = cli(device, "token", "issue", "--peer", "neighbour", "--allow", "gate.*")
    assert status == 0, err
    token_id, uri = issued(out)
    guest = guest_config(tmp_path)
    status, _, err = cli(guest, "token", "import", "neighbour", uri)
    assert status == 2 and "unrecognized arguments" in err
    assert "neighbour" not in load(guest).peers
    body = uri.index("token=pstp_tok_") + len("token=pstp_tok_") + 20
    bad = uri[:body] + ("A" if uri[body] != "A" else "B") + uri[body + 1 :]
    status, _, err = cli(guest, "token", "import", "neighbour", stdin=bad + "\n")
    assert status == 2 and "not a token link" in err and "checksum" in err
    assert "neighbour" not in load(guest).peers
    link_file = tmp_path / "link.txt"
    link_file.write_text(uri + "\n")
    status, out, err = cli(guest, "token", "import", "neighbour", "--file", str(link_file))
    assert status == 0, err
    peer = load(guest).peers["neighbour"]
    assert (peer.address, peer.token, peer.device_id) == ("127.0.0.1:9000", token_id, "home")
    status, _, err = cli(guest, "token", "import", "neighbour", "--file", str(link_file))
    assert status == 2 and "already exists" in err


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        ("30s", "a token lives from 1 minute to 30 days"),
        ("31d", "a token lives from 1 minute to 30 days"),
        ("59", "a token lives from 1 minute to 30 days"),
        ("soon", "is not a duration"),
    ],
)
def test_issue_refuses_a_lifetime_out_of_bounds(tmp_path: Path, ttl: str, message: str) -> None:
    """--ttl 30s and --ttl 31d: exit 2 with a clear message; nothing is stored."""
    device = create(tmp_path / "pstp.toml", "home", listen="127.0.0.1:9000")
    args = ("token", "issue", "--peer", "neighbour", "--allow", "gate.*", "--ttl", ttl)
    status, out, err = cli(device, *args)
    assert status == 2
    assert message in err and "pstp://" not in out
    assert listed(device) == {}
    status, out, err = cli(device, *args[:-1], "60s")
    assert status == 0, err


def test_issue_refuses_an_undeclared_action_for_a_guest(tmp_path: Path) -> None:
    """A guest's --allow must name a declared action (or a glob): refused, nothing live."""
    device = tmp_path / "pstp.toml"
    device.write_text(
        '[device]\nid = "home"\nlisten = ["127.0.0.1:9000"]\ndiscovery = false\n\n'
        '[actions."gate.open"]\nargv = ["echo", "gate open"]\n'
    )
    device.chmod(0o600)
    status, out, err = cli(device, "token", "issue", "--peer", "neighbour", "--allow", "no.such")
    assert status == 2
    assert "--allow: " in err and '"no.such" names no declared action' in err, err
    assert "pstp://" not in out
    assert [t["state"] for t in listed(device).values()] == [
        f"token {t} was revoked" for t in listed(device)
    ]
    status, _, err = cli(device, "token", "issue", "--peer", "neighbour", "--allow", "gate.open")
    assert status == 0, err
    live = [t["actions"] for t in listed(device).values() if t["state"] == "live"]
    assert live == [["gate.open"]]


def test_a_link_with_a_broker_puts_the_broker_on_the_reach_ladder(tmp_path: Path) -> None:
    """`--via wss://… --via mqtts://…`: the import keeps the WebSocket address as the one
    tried first and the broker in `via`; with a broker alone, the LAN address comes first."""
    device = create(tmp_path / "home" / "pstp.toml", "home", listen="127.0.0.1:9000")
    wss, broker = "wss://home.example.org/pstp", "mqtts://broker.example.net"
    for n, (vias, address, via) in enumerate(
        (((wss, broker), wss, (broker,)), ((broker,), "127.0.0.1:9000", (broker,)))
    ):
        args = [a for v in vias for a in ("--via", v)]
        status, out, err = cli(device, "token", "issue", "--peer", "n", "--allow", "g.*", *args)
        assert status == 0, err
        _, uri = issued(out)
        (tmp_path / str(n)).mkdir()
        guest = guest_config(tmp_path / str(n))
        status, _, err = cli(guest, "token", "import", "neighbour", stdin=uri + "\n")
        assert status == 0, err
        peer = load(guest).peers["neighbour"]
        assert (peer.address, peer.via) == (address, via)
