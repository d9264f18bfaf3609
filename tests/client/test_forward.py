"""`pstp forward`'s spec reading (``[BIND_ADDR:]PORT:HOST:PORT``, as ssh) and its usage errors.

The forwarding itself, end to end between processes, is in tests/daemon/test_forward.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pstp.cli.main import Console, main
from pstp.client.forward import Spec, parse_spec


@pytest.mark.parametrize(
    ("text", "reverse", "want"),
    [
        ("8080:camera.local:80", False, ("127.0.0.1", 8080, "camera.local", 80)),
        (" 8080:camera.local:80 ", False, ("127.0.0.1", 8080, "camera.local", 80)),
        ("0.0.0.0:8080:10.0.0.5:554", False, ("0.0.0.0", 8080, "10.0.0.5", 554)),
        ("[::1]:2222:[fe80::1%eth0]:22", False, ("::1", 2222, "fe80::1%eth0", 22)),
        ("8443:[2001:db8::7]:443", False, ("127.0.0.1", 8443, "2001:db8::7", 443)),
        ("1:h:65535", False, ("127.0.0.1", 1, "h", 65535)),
        ("0:localhost:22", True, ("127.0.0.1", 0, "localhost", 22)),
        ("0.0.0.0:2222:localhost:22", True, ("0.0.0.0", 2222, "localhost", 22)),
    ],
)
def test_spec_is_read_as_ssh_reads_it(
    text: str, reverse: bool, want: tuple[str, int, str, int]
) -> None:
    """The bind address defaults to 127.0.0.1; IPv6 addresses go in brackets; -R may ask port 0."""
    spec = parse_spec(text, reverse=reverse)
    assert (spec.bind_host, spec.bind_port, spec.host, spec.port) == want
    assert str(spec) == spec.text == text  # as given, for messages
    assert isinstance(spec, Spec)


@pytest.mark.parametrize(
    ("text", "reverse", "says"),
    [
        ("camera:80", False, "is not [BIND_ADDR:]PORT:HOST:PORT"),
        ("1:2:camera:80:9", False, "is not [BIND_ADDR:]PORT:HOST:PORT"),
        ("8080::80", False, "is not [BIND_ADDR:]PORT:HOST:PORT"),
        (":8080:camera:80", False, "is not [BIND_ADDR:]PORT:HOST:PORT"),
        ("laptop:8080:camera:80", False, "listen on an IP address, not 'laptop'"),
        ("8080:camera:http", False, "'http' is not a port"),
        ("8080:camera:-1", False, "'-1' is not a port"),
        ("8080:camera:65536", False, "port 65536 is out of range"),
        ("123456:camera:80", False, "'123456' is not a port"),
        ("0:camera:80", False, "port 0 is out of range"),
        ("2222:camera:0", True, "port 0 is out of range"),
        ("[::1:8080:camera:80", False, "an IPv6 address goes in brackets"),
        ("[::1]8080:camera:80", False, "an IPv6 address goes in brackets"),
        ("8080:camera:８０", False, "is not a port"),  # noqa: RUF001 (full-width digits)
    ],
)
def test_bad_spec_says_what_is_wrong(text: str, reverse: bool, says: str) -> None:
    """A malformed spec is a ValueError naming the spec and the problem."""
    with pytest.raises(ValueError) as caught:
        parse_spec(text, reverse=reverse)
    assert says in str(caught.value), str(caught.value)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "pstp.toml"
    path.write_text(
        '[device]\nid = "phone"\nlisten = ["127.0.0.1:1"]\ndiscovery = false\n\n'
        f'[peers.home]\nkey = "{bytes(range(32)).hex()}"\naddress = "127.0.0.1:9"\n'
    )
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["home"], "nothing to forward: give [ADDR:]PORT:HOST:PORT, -L or -R"),
        (["home", "8080:camera"], "'8080:camera' is not [BIND_ADDR:]PORT:HOST:PORT"),
        (["-L", "8080:camera:99999", "home"], "port 99999 is out of range"),
        (["-R", "host:1:camera:80", "home"], "listen on an IP address, not 'host'"),
        (["nobody", "8080:camera:80"], "no peer 'nobody' in"),
    ],
)
def test_usage_errors_exit_2_before_connecting(tmp_path: Path, args: list[str], says: str) -> None:
    """Bad specs, no spec, or an unknown peer: exit 2 with the reason, nothing reached."""
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(_config(tmp_path)), "forward", *args], Console(out, err))
    assert code == 2, err.getvalue()
    assert says in err.getvalue()
    assert out.getvalue() == ""
