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


OTHER_UID = 65534  # nobody: not this uid (the tests run as root) and not root


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")


def test_config_owned_by_another_uid_is_refused(tmp_path: Path) -> None:
    """A 0600 config owned by another uid (who could rewrite the policy) is refused."""
    _needs_root()
    path = new_config(tmp_path)
    add_peer(path, "phone", KEY)
    load(path)  # tmp_path and its parents (/tmp is 1777 root) are safe
    os.chown(path, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=f"owned by uid {OTHER_UID}") as info:
        load(path)
    assert str(path) in str(info.value) and "chown" in str(info.value)
    with pytest.raises(ConfigError, match="owned by uid"):
        add_peer(path, "tv", KEY)  # nor edited
    os.chown(path, 0, 0)
    assert set(load(path).peers) == {"phone"}


def test_group_writable_config_is_refused(tmp_path: Path) -> None:
    path = new_config(tmp_path)
    os.chmod(path, 0o620)
    with pytest.raises(ConfigError, match="chmod go-w"):
        load(path)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_config_in_a_directory_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A world- (or group-) writable directory anywhere above the file is refused."""
    shared = tmp_path / "shared"
    (shared / "etc").mkdir(parents=True)
    path = create(shared / "etc" / "pstp.toml", "home")
    add_peer(path, "phone", KEY)
    os.chmod(shared, mode)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert f"chmod go-w {shared}" in str(info.value) and f"{mode:04o}" in str(info.value)
    os.chmod(shared, 0o755)  # noqa: S103 - the test restores a safe mode
    load(path)


def test_config_in_a_root_owned_sticky_directory_is_accepted(tmp_path: Path) -> None:
    """Like /tmp: world-writable but sticky and root's, so nobody else can replace the file."""
    _needs_root()
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)  # noqa: S103 - like /tmp
    path = create(sticky / "pstp.toml", "home")
    add_peer(path, "phone", KEY)
    assert set(load(path).peers) == {"phone"}
    os.chown(sticky, OTHER_UID, OTHER_UID)  # sticky but another user's: that user can replace it
    with pytest.raises(ConfigError, match=f"owned by uid {OTHER_UID}"):
        load(path)


def test_config_in_a_directory_owned_by_another_uid_is_refused(tmp_path: Path) -> None:
    _needs_root()
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    path = create(theirs / "pstp.toml", "home")
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=f"{theirs}, owned by uid {OTHER_UID}"):
        load(path)


def test_symlinked_config_checks_the_directories_of_the_link_too(tmp_path: Path) -> None:
    safe = tmp_path / "safe"
    safe.mkdir()
    path = create(safe / "pstp.toml", "home")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # noqa: S103 - the unsafe directory under test
    link = open_dir / "pstp.toml"
    link.symlink_to(path)
    with pytest.raises(ConfigError, match=f"chmod go-w {open_dir}"):
        load(link)
    load(path)
