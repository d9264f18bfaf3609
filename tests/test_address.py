"""Tests for pstp.address: channel addresses as URLs (docs/protocol.md §19.1)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pstp.address import DEFAULT_PORT, Address, parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.168.1.20:9000", Address("tcp", "192.168.1.20", 9000)),
        ("home.local", Address("tcp", "home.local", DEFAULT_PORT)),
        ("[::1]:7000", Address("tcp", "::1", 7000)),
        ("tcp://pi-4.home.arpa:9001", Address("tcp", "pi-4.home.arpa", 9001)),
        ("TCP://h:1", Address("tcp", "h", 1)),
        ("ws://127.0.0.1:8080/pstp", Address("ws", "127.0.0.1", 8080, "/pstp")),
        ("ws://home", Address("ws", "home", 80, "/")),
        ("wss://home.example.org/pstp", Address("wss", "home.example.org", 443, "/pstp")),
        ("wss://[2001:db8::1]:8443/a/b", Address("wss", "2001:db8::1", 8443, "/a/b")),
    ],
)
def test_addresses_that_parse(text: str, expected: Address) -> None:
    """Every form the configuration and --address accept."""
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mqtt://broker/pstp", "mqtt:// is not supported by this version yet"),
        ("http://home/pstp", "unknown scheme 'http'"),
        ("ws://home/pstp?token=abc", "nothing secret goes into a URL"),
        ("wss://user:pw@home/pstp", "nothing secret goes into a URL"),
        ("ws://home/p#frag", "no query, fragment"),
        ("tcp://home:9000/x", "a TCP address has no path"),
        ("ws://home:0/p", "PORT 1-65535"),
        ("ws://home:70000/p", "PORT 1-65535"),
        ("ws://home/a b", "is not a valid URL path"),
        ("ws://::1/p", "an IPv6 address goes in brackets"),
        ("ws://[::1/p", "needs its closing bracket"),
        ("ws://[nope]/p", "is not an IPv6 address"),
        ("ws:///p", "no host"),
        ("my_host:9000", "is not an IP address or a host name"),
        ("300.1.2.3:9000", "is not an IP address"),
        (" home:9000", "is not an address"),
        ("", "is not an address"),
    ],
)
def test_addresses_refused_with_the_reason(text: str, message: str) -> None:
    """What is wrong, in words."""
    with pytest.raises(ValueError, match=message.replace("?", r"\?").replace("(", r"\(")):
        parse(text)


def test_a_port_is_required_when_asked() -> None:
    """default_port=None: a bare host is refused (a pairing link names its port)."""
    with pytest.raises(ValueError, match="no port"):
        parse("home", default_port=None)
    assert parse("home:1", default_port=None).port == 1


def test_wss_is_not_a_listen_address() -> None:
    """TLS ends at the proxy: the device listens on ws:// and advertises wss://."""
    with pytest.raises(ValueError, match="advertise"):
        parse("wss://home/pstp", listen=True)
    assert parse("ws://127.0.0.1:8080/pstp", listen=True).websocket


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address("tcp", "h", 9000), "h:9000"),
        (Address("tcp", "::1", 9000), "[::1]:9000"),
        (Address("ws", "h", 80, "/"), "ws://h/"),
        (Address("wss", "h", 443, "/p"), "wss://h/p"),
        (Address("wss", "::1", 8443, "/p"), "wss://[::1]:8443/p"),
    ],
)
def test_str_is_the_short_form(address: Address, text: str) -> None:
    """Default ports are left out, TCP is written as it always was."""
    assert str(address) == text


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9](\.[a-z][a-z0-9]{0,8}){0,3}", fullmatch=True),
)
paths = st.from_regex(r"/[A-Za-z0-9._~/-]{0,30}", fullmatch=True)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    scheme=st.sampled_from(["tcp", "ws", "wss"]),
    host=hosts,
    port=st.integers(1, 65535),
    path=paths,
)
def test_str_parses_back_to_the_same_address(scheme: str, host: str, port: int, path: str) -> None:
    """parse(str(a)) == a for every address."""
    address = Address(scheme, host, port, "" if scheme == "tcp" else path)
    assert parse(str(address)) == address


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=80))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    """Nothing but ValueError for any input (the configuration and argv are read with it)."""
    with contextlib.suppress(ValueError):
        parse(text)
