"""Tests for pstp.settings: loading, validation messages, safe writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pstp.settings import (
    ConfigError,
    add_peer,
    config_path,
    create,
    load,
    parse_address,
    remove_peer,
    set_peer_address,
)

KEY = bytes(range(32))


def new_config(tmp_path: Path, device_id: str = "home") -> Path:
    """A fresh config file."""
    return create(tmp_path / "pstp.toml", device_id)


def test_create_then_load_gives_defaults_and_mode_0600(tmp_path: Path) -> None:
    """A new config is private and loads with the documented defaults."""
    path = new_config(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    s = load(path)
    assert (s.device_id, s.listen, s.discovery, s.stealth, s.peers) == (
        "home",
        (("0.0.0.0", 9000),),
        True,
        False,
        {},
    )
    with pytest.raises(ConfigError, match="already exists"):
        create(path, "home")


def test_add_replace_and_remove_peers_keeps_comments(tmp_path: Path) -> None:
    """Peers are added, re-keyed and removed; a person's comments survive."""
    path = new_config(tmp_path)
    path.write_text(path.read_text() + "# my note about the kettle\n")
    add_peer(path, "phone", KEY, address="192.0.2.5:9000")
    add_peer(path, "tv", b"\x01" * 32)
    s = load(path)
    assert s.peers["phone"].key == KEY and s.peers["phone"].address == "192.0.2.5:9000"
    add_peer(path, "phone", b"\x02" * 32)
    assert load(path).peers["phone"].key == b"\x02" * 32
    set_peer_address(path, "tv", "tv.local:9100")
    assert load(path).peers["tv"].address == "tv.local:9100"
    assert remove_peer(path, "phone") and not remove_peer(path, "phone")
    assert set(load(path).peers) == {"tv"}
    assert "# my note about the kettle" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KEY.hex() not in repr(load(path))  # keys never in reprs


def test_group_readable_file_with_keys_is_refused(tmp_path: Path) -> None:
    """Like ssh, a key-bearing file readable by others is refused with the fix to apply."""
    path = new_config(tmp_path)
    add_peer(path, "phone", KEY)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load(path)


@pytest.mark.parametrize(
    ("body", "key", "line"),
    [
        ('[device]\nid = "bad id!"\n', "device.id", 2),
        ('[device]\nid = "ok"\nlisten = "0.0.0.0:9000"\n', "device.listen", 3),
        ('[device]\nid = "ok"\nlisten = ["host:99999"]\n', "device.listen", 3),
        ('[device]\nid = "ok"\nstealth = "yes"\n', "device.stealth", 3),
        ('[device]\nid = "ok"\n[peers.phone]\nkey = "abcd"\n', "peers.phone.key", 4),
        ('[device]\nid = "ok"\n[peers.phone]\nkey = "' + "zz" * 32 + '"\n', "peers.phone.key", 4),
        (
            '[device]\nid = "ok"\n[peers.phone]\nkey = "' + KEY.hex() + '"\naddress = 7\n',
            "peers.phone.address",
            5,
        ),
        ('[nodevice]\nid = "x"\n', "device", None),
    ],
)
def test_invalid_config_names_file_line_and_key(
    tmp_path: Path, body: str, key: str, line: int | None
) -> None:
    """Every validation error names the file, the key and (where known) the line."""
    path = tmp_path / "pstp.toml"
    path.write_text(body)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == key and info.value.line == line
    assert str(path) in str(info.value) and key in str(info.value)


def test_syntax_errors_and_missing_files(tmp_path: Path) -> None:
    """Broken TOML reports its line; a missing file says how to create one."""
    path = tmp_path / "pstp.toml"
    path.write_text('[device]\nid = "x\n')
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load(path)
    assert info.value.line == 2
    with pytest.raises(ConfigError, match="pstp init"):
        load(tmp_path / "absent.toml")


def test_config_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config beats PSTP_CONFIG, which beats MainConf.conf in the cwd, then the default."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PSTP_CONFIG", raising=False)
    assert config_path() == tmp_path / "xdg" / "pstp" / "pstp.toml"
    (tmp_path / "MainConf.conf").write_text("")
    assert config_path() == tmp_path / "MainConf.conf"
    monkeypatch.setenv("PSTP_CONFIG", "/etc/pstp.toml")
    assert config_path() == Path("/etc/pstp.toml")
    assert config_path("x.toml") == Path("x.toml")


def test_mainconf_name_is_the_same_format(tmp_path: Path) -> None:
    """A file called MainConf.conf is read as the same TOML format."""
    path = create(tmp_path / "MainConf.conf", "kettle")
    assert load(path).device_id == "kettle"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host", ("host", 9000)),
        ("host:1", ("host", 1)),
        ("[::1]:9100", ("::1", 9100)),
        ("[fe80::1]", ("fe80::1", 9000)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    """host[:port] and [v6][:port] parse; the default port fills in."""
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", ":9000", "h:0", "h:x", "[::1", "[::1]x", "h:70000"])
def test_parse_address_rejects_bad_input(text: str) -> None:
    """Malformed addresses raise ValueError."""
    with pytest.raises(ValueError):
        parse_address(text)


def test_loaded_settings_never_print_pair_keys(tmp_path: Path) -> None:
    """repr() of Settings and of a peer shows ids and addresses, never a pair key."""
    path = new_config(tmp_path)
    add_peer(path, "phone", KEY, address="10.0.0.2:9000")
    settings = load(path)
    shown = repr(settings) + repr(settings.peers["phone"]) + str(settings)
    assert "'phone'" in shown and "10.0.0.2:9000" in shown
    assert KEY.hex() not in shown and repr(KEY) not in shown
