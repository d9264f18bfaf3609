"""Tests for pstp.settings: loading, validation messages, safe writes."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from pstp.settings import (
    ConfigError,
    add_peer,
    check_address,
    config_path,
    create,
    line_of,
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
        ('[nodevice]\nid = "x"\n', "nodevice", 1),
        ('[audit]\npath = "x"\n', "device", None),
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


# --------------------------------------------------------------------------- unknown keys


def write(tmp_path: Path, body: str) -> Path:
    """A private config file holding ``body``."""
    path = tmp_path / "pstp.toml"
    path.write_text(body)
    os.chmod(path, 0o600)
    return path


PEER = f'[peers.phone]\nkey = "{KEY.hex()}"\n'


@pytest.mark.parametrize(
    ("body", "key", "line", "hint"),
    [
        ('[device]\nid = "home"\nstealht = true\n', "device.stealht", 3, "stealth"),
        ('[device]\nDeviceID = "home"\n', "device.DeviceID", 2, "id"),
        ('[device]\ndevice_id = "home"\n', "device.device_id", 2, "id"),
        (
            '[device]\nid = "home"\n\n' + PEER + 'adress = "192.0.2.5:9000"\n',
            "peers.phone.adress",
            6,
            "address",
        ),
        (
            '[device]\nid = "home"\n\n[action."lights.on"]\nargv = ["/bin/true"]\n',
            "action",
            4,
            "actions",
        ),
        ('[device]\nid = "home"\n[audit]\nreserve = 1\n', "audit.reserve", 4, "reserve_mib"),
        (
            '[device]\nid = "home"\n[actions."lights.on"]\nargv = ["/bin/true"]\ntimout = 3\n',
            'actions."lights.on".timout',
            5,
            "timeout",
        ),
        (
            '[device]\nid = "home"\n[actions.x]\nargv = ["/bin/true"]\n'
            'args = { n = { tpye = "int" } }\n',
            "actions.x.args.n.tpye",
            5,
            "type",
        ),
        (
            '[device]\nid = "home"\n' + PEER + "[peers.phone.policy]\nshel = true\n",
            "peers.phone.policy.shel",
            6,
            "shell",
        ),
        (
            '[device]\nid = "home"\n' + PEER + "policy.exce = []\n",
            "peers.phone.policy.exce",
            5,
            "exec",
        ),
        (
            '[device]\nid = "home"\n'
            + PEER
            + '[[peers.phone.policy.files]]\nroot = "/srv"\nwrit = true\n',
            "peers.phone.policy.files[0].writ",
            7,
            "write",
        ),
        ('[device]\nid = "home"\n[devise]\nx = 1\n', "devise", 3, "device"),
        ('[device]\nid = "home"\nzzz = 1\n', "device.zzz", 3, None),
    ],
)
def test_unknown_keys_anywhere_name_file_line_and_the_likely_key(
    tmp_path: Path, body: str, key: str, line: int, hint: str | None
) -> None:
    """A misspelt key is an error with its file, line and a did-you-mean, in every table."""
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (info.value.key, info.value.line) == (key, line)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: {key}: unknown key")
    assert "(allowed: " in message
    if hint is None:
        assert "did you mean" not in message
    else:
        assert f'did you mean "{hint}"?' in message


def test_unquoted_dotted_names_get_the_quoting_fix(tmp_path: Path) -> None:
    """[actions.lights.on] (an action "lights" holding a table "on") says how to quote it."""
    path = write(tmp_path, '[device]\nid = "home"\n\n[actions.lights.on]\nargv = ["/bin/true"]\n')
    with pytest.raises(ConfigError, match=r'quote dotted names, e\.g\. \[actions\."lights\.on"\]'):
        load(path)


def test_the_key_check_comes_before_value_checks(tmp_path: Path) -> None:
    """DeviceID is named as the mistake, not the missing id it leaves behind."""
    with pytest.raises(ConfigError, match='did you mean "id"'):
        load(write(tmp_path, '[device]\nDeviceID = "home"\n'))
    with pytest.raises(ConfigError, match="has no id") as info:
        load(write(tmp_path, "[device]\n"))
    assert (info.value.key, info.value.line) == ("device", 1)


def test_every_known_key_loads(tmp_path: Path) -> None:
    """A file using every table loads: the check refuses only what it does not know."""
    body = (
        '[device]\nid = "home"\nlisten = ["127.0.0.1:9000", "[::1]:9000", "localhost"]\n'
        "discovery = false\nstealth = true\n\n"
        '[actions."kettle.on"]\nargv = ["/bin/echo", "{t}"]\ntimeout = 5\nmax_output = 10\n'
        'description = "d"\nargs = { t = { type = "int", min = 1, max = 9, default = 2 } }\n'
        '[actions.cb]\ncall = "os:getpid"\n\n'
        + PEER
        + 'address = "phone.local:9000"\n[peers.phone.policy]\nactions = ["kettle.*"]\n'
        'exec = [["uptime"]]\nshell = true\nrequire_reason = true\nrate = "1/s"\n'
        "max_sessions = 1\nexpires = 2099-01-01T00:00:00Z\nforward = ['127.0.0.1:80']\n"
        'when = [{ days = ["mon"], from = "01:00", to = "02:00" }]\n'
        'files = [{ root = "/srv", write = true }]\n\n'
        '[audit]\npath = "a.sqlite"\nreserve_mib = 0\n'
    )
    s = load(write(tmp_path, body))
    assert s.listen == (("127.0.0.1", 9000), ("::1", 9000), ("localhost", 9000))
    assert (s.discovery, s.stealth) == (False, True)


# --------------------------------------------------------------------------- line_of

LINES_TEXT = (
    '[device]\nid = "home"\n\n'  # 1-3
    '[actions."a.b"]\nargv = ["x"]\nargs = { n = { type = "int" } }\n'  # 4-6
    'notes = """\nshell = 1\n"""\n'  # 7-9: inside a string, not a key
    "[peers.phone]\npolicy.shell = true\n"  # 10-11
    'policy.when = [{ days = ["mon"] }]\n'  # 12
    '[[peers.phone.policy.files]]\nroot = "/srv"\n'  # 13-14
)


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("device", 1),
        ("device.id", 2),
        ("device.listen", 1),  # absent: its table's line
        ('actions."a.b"', 4),
        ('actions."a.b".argv', 5),
        ('actions."a.b".args.n.type', 6),  # inside an inline table: the line of args
        ('actions."a.b".shell', 4),  # not the line in the multi-line string
        ("action", None),
        ("peers.phone", 10),
        ("peers.phone.policy", 11),  # its first dotted key
        ("peers.phone.policy.shell", 11),
        ("peers.phone.policy.when[0].days", 12),
        ("peers.phone.policy.files", 13),
        ("peers.phone.policy.files[0].root", 14),
        ("audit", None),
    ],
)
def test_line_of_finds_headers_assignments_dotted_and_quoted_keys(
    key: str, line: int | None
) -> None:
    """Quoted names, dotted assignments and arrays of tables have their lines found."""
    assert line_of(LINES_TEXT, key) == line


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        ("127.0.0.1", ("127.0.0.1", 9000)),
        ("[::]:9100", ("::", 9100)),
        ("localhost:1", ("localhost", 1)),
        ("pi-4.home.arpa:65535", ("pi-4.home.arpa", 65535)),
    ],
)
def test_check_address_accepts(text: str, expected: tuple[str, int]) -> None:
    """IP addresses and host names, with or without a port, are addresses."""
    assert check_address(text, listen=True) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9000", 'use "0.0.0.0:9000" for every interface, or "127.0.0.1:9000"'),
        (":9000", 'use "0.0.0.0:9000"'),
        ("0.0.0.0:0", "PORT 1-65535"),
        ("0.0.0.0:65536", "PORT 1-65535"),
        ("host:x", 'is not "HOST:PORT"'),
        ("::1", 'an IPv6 address goes in brackets, "[::1]:9000"'),
        ("::1:9000", 'brackets, "[::1:9000]:9000"'),
        ("300.1.2.3:9000", "is not an IP address"),
        ("1.2.3:9000", "is not an IP address"),
        ("my_host:9000", "is not an IP address or a host name"),
        ("a..b:9000", "is not an IP address or a host name"),
        ("-a:9000", "is not an IP address or a host name"),
    ],
)
def test_check_address_refuses_with_the_fix(text: str, message: str) -> None:
    """A bare port, a bad port or host: refused, saying what to write."""
    with pytest.raises(ValueError, match=re.escape(message)):
        check_address(text, listen=True)


def test_a_bare_listen_port_in_the_file_names_file_line_and_fix(tmp_path: Path) -> None:
    """A hand-edited listen = ["9000"] is refused on load (serve would fail to bind)."""
    path = write(tmp_path, '[device]\nid = "home"\n\nlisten = ["127.0.0.1:9000", "9000"]\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (info.value.key, info.value.line) == ("device.listen", 4)
    assert f"{path}:4: device.listen: '9000' is a port without a host: use \"0.0.0.0:9000\"" in str(
        info.value
    )
    with pytest.raises(ConfigError, match="is empty"):
        load(write(tmp_path, '[device]\nid = "home"\nlisten = []\n'))


def test_a_peer_address_that_is_a_bare_port_is_refused(tmp_path: Path) -> None:
    """A peer's address needs its host too."""
    path = write(tmp_path, '[device]\nid = "home"\n' + PEER + 'address = "9000"\n')
    with pytest.raises(ConfigError, match=r'peers\.phone\.address: .* write "HOST:9000"'):
        load(path)


def test_create_refuses_a_bad_listen_address(tmp_path: Path) -> None:
    """create() checks the address as load() would, and writes nothing."""
    with pytest.raises(ConfigError, match=r'device\.listen: .*use "0\.0\.0\.0:9000"'):
        create(tmp_path / "pstp.toml", "home", listen="9000")
    assert not (tmp_path / "pstp.toml").exists()


# -- [brokers."HOST"]: how to log in to an MQTT broker (docs/protocol.md §19.3) -----------


def _broker_config(tmp_path: Path, table: str) -> Path:
    path = tmp_path / "pstp.toml"
    path.write_text(
        '[device]\nid = "kettle"\nlisten = ["0.0.0.0:9000", "mqtts://broker.example.net"]\n\n'
        f'[brokers."broker.example.net"]\n{table}'
    )
    path.chmod(0o600)
    return path


def test_broker_log_in_comes_from_the_table_and_a_private_password_file(tmp_path: Path) -> None:
    """User name from the table, password from its own 0600 file (relative to the config)."""
    from pstp.address import parse
    from pstp.settings import broker_options

    secret = tmp_path / "broker.pass"
    secret.write_text("correct horse\n")
    secret.chmod(0o600)
    table = 'username = "kettle"\npassword_file = "broker.pass"\n'
    settings = load(_broker_config(tmp_path, table))
    assert [str(a) for a in settings.mqtt] == ["mqtts://broker.example.net"]
    login = broker_options(settings, settings.mqtt[0])
    assert (login.username, login.password) == ("kettle", "correct horse")
    assert "correct horse" not in repr(login)
    other = broker_options(settings, parse("mqtt://elsewhere.example.net"))
    assert (other.username, other.password, other.ssl) == (None, None, None)
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        broker_options(settings, settings.mqtt[0])
    secret.chmod(0o600)
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        broker_options(settings, settings.mqtt[0])
    secret.unlink()
    with pytest.raises(ConfigError, match="password_file"):
        broker_options(settings, settings.mqtt[0])


def test_broker_tls_files_are_loaded_for_mqtts(tmp_path: Path) -> None:
    """ca_file makes the TLS context; a missing file is a configuration error."""
    from pstp.settings import broker_options
    from tests.tlsproxy import make_certs

    certs = make_certs(tmp_path / "certs")
    settings = load(_broker_config(tmp_path, f'ca_file = "{certs.ca}"\n'))
    login = broker_options(settings, settings.mqtt[0])
    assert login.ssl is not None and login.ssl.verify_mode.name == "CERT_REQUIRED"
    settings = load(_broker_config(tmp_path, 'ca_file = "missing.pem"\n'))
    with pytest.raises(ConfigError, match="TLS files"):
        broker_options(settings, settings.mqtt[0])


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('username = ""\n', "must be a non-empty string"),
        ('cert_file = "c.pem"\n', "cert_file and key_file go together"),
        ('password = "inline"\n', "password"),
    ],
)
def test_bad_broker_tables_are_refused(tmp_path: Path, table: str, message: str) -> None:
    """Empty values, half a client certificate, and an inline password (unknown key)."""
    with pytest.raises(ConfigError, match=message):
        load(_broker_config(tmp_path, table))
