"""`pstp discover` and `pstp doctor` in-process, with PINGs kept on loopback.

The real thing, across hosts, is in tests/discovery/test_netns.py.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import pstp.asyncio.discovery as adisc
import pstp.cli.cmd_discover as cmd
from pstp.cli.cmd_discover import caps_names, load_optional, merge
from pstp.cli.main import main
from pstp.client.mdns import MdnsFound
from pstp.settings import ConfigError, add_peer, create
from pstp.sync.discovery import ResponderThread, start_responder
from tests.cli.test_pair import free_port

KEY = bytes(range(32))


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MdnsFound]]:
    """PINGs go to 127.0.0.1 only; mDNS answers are whatever the test puts in the list."""
    mdns: list[MdnsFound] = []

    async def browse(timeout: float, console: object) -> list[MdnsFound]:
        return list(mdns)

    monkeypatch.setattr(adisc, "broadcast_addresses", lambda: ["127.0.0.1"])
    monkeypatch.setattr(cmd, "_browse", browse)
    yield mdns


@pytest.fixture
def home() -> Iterator[tuple[ResponderThread, int]]:
    """A discovery responder for "home" on 127.0.0.1 (no TCP server behind it)."""
    port = free_port()
    responder = start_responder("home", port, host="127.0.0.1")
    try:
        yield responder, port
    finally:
        responder.stop()


def phone(tmp_path: Path, address: str | None = None) -> Path:
    """A config for "phone" holding a key for "home"."""
    path = create(tmp_path / "phone.toml", "phone")
    add_peer(path, "home", KEY, address=address)
    return path


def test_caps_names_and_unknown_bits() -> None:
    """Known bits by name, the rest as hex."""
    assert caps_names(0x0003) == ["aes-256-gcm", "chacha20-poly1305"]
    assert caps_names(0x0104) == ["pairing", "0x0100"]
    assert caps_names(0) == []


def test_merge_deduplicates_and_keeps_every_method() -> None:
    """One row per (id, host, port); `via` lists broadcast and mdns; key status from the config."""
    rows = merge(
        [
            ("home", "10.0.0.1", 9000, 3, "broadcast"),
            ("tv", "10.0.0.2", 9000, 1, "broadcast"),
            ("home", "10.0.0.1", 9000, 3, "broadcast"),
            ("home", "10.0.0.1", 9000, 3, "mdns"),
            ("home", "10.0.0.9", 9000, 3, "mdns"),
        ],
        {"home"},
    )
    assert [(r.device_id, r.host, r.via, r.key) for r in rows] == [
        ("home", "10.0.0.1", ["broadcast", "mdns"], True),
        ("tv", "10.0.0.2", ["broadcast"], False),
        ("home", "10.0.0.9", ["mdns"], True),
    ]


def test_no_configuration_is_fine_unless_one_was_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discovery needs no config; a named missing one is an error."""
    monkeypatch.setenv("PSTP_CONFIG", str(tmp_path / "absent.toml"))
    assert load_optional(argparse.Namespace(config=None)) is None
    with pytest.raises(ConfigError):
        load_optional(argparse.Namespace(config=str(tmp_path / "absent.toml")))


def test_discover_json_lists_broadcast_and_mdns_merged(
    tmp_path: Path,
    home: tuple[ResponderThread, int],
    loopback: list[MdnsFound],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The PONG and the mDNS record of one device are one entry; another mDNS device is listed."""
    _, port = home
    loopback += [
        MdnsFound("home", "127.0.0.1", port, 3),
        MdnsFound("tv", "127.0.0.5", 9000, 1),
    ]
    args = ["discover", "--json", "--port", str(port), "--timeout", "0.3"]
    assert main(["--config", str(phone(tmp_path)), *args]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(d["device_id"], d["port"], d["via"], d["key"]) for d in listed] == [
        ("home", port, ["broadcast", "mdns"], True),
        ("tv", 9000, ["mdns"], False),
    ]


def test_discover_table_and_empty_result(
    tmp_path: Path,
    home: tuple[ResponderThread, int],
    loopback: list[MdnsFound],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a config: a table with a header; when nobody answers, a hint on stderr, exit 0."""
    _, port = home
    monkeypatch.setenv("PSTP_CONFIG", str(tmp_path / "none.toml"))
    assert main(["discover", "--port", str(port), "--timeout", "0.3", "--no-mdns"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["DEVICE", "ADDRESS", "CAPS", "VIA", "KEY"]
    caps = "aes-256-gcm,chacha20-poly1305"
    assert out[1].split() == ["home", f"127.0.0.1:{port}", caps, "broadcast", "no"]
    assert main(["discover", "--port", str(free_port()), "--timeout", "0.1"]) == 0
    assert "pstp doctor" in capsys.readouterr().err


def test_doctor_reports_answers_and_refused_tcp(
    tmp_path: Path,
    home: tuple[ResponderThread, int],
    loopback: list[MdnsFound],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The device answers the PING but nothing listens on TCP: refused, exit 1."""
    _, port = home
    cfg = phone(tmp_path, f"127.0.0.1:{port}")
    assert main(["--config", str(cfg), "doctor", "home", "--timeout", "0.3"]) == 1
    out = capsys.readouterr().out
    assert "interfaces:" in out and "lo " in out
    assert f"home             127.0.0.1:{port}" in out and "key: yes, on lo" in out
    assert f"127.0.0.1:{port} (remembered): TCP connection refused" in out
    assert "=> home: no address gave a working session" in out


def test_doctor_without_peer_or_key(
    tmp_path: Path, loopback: list[MdnsFound], capsys: pytest.CaptureFixture[str]
) -> None:
    """No PEER: a report and exit 0; an unknown PEER: how to pair, exit 1."""
    cfg = str(phone(tmp_path))
    port = str(free_port())
    assert main(["--config", cfg, "doctor", "--port", port, "--timeout", "0.1"]) == 0
    assert "nobody answered" in capsys.readouterr().out
    assert main(["--config", cfg, "doctor", "tv", "--port", port, "--timeout", "0.1"]) == 1
    assert "no pair key for 'tv'" in capsys.readouterr().out
    assert main(["--config", cfg, "doctor", "home", "--port", port, "--timeout", "0.1"]) == 1
    out = capsys.readouterr().out
    assert "answered neither" in out and "no remembered address" in out
