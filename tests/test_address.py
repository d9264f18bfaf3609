"""Tests for pstp.address: channel addresses as URLs (docs/protocol.md §19.1)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pstp.address import DEFAULT_PORT, SCHEMES, Address, parse
from pstp.protocol.mqtt import prefix_of


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
        ("mqtt://broker.example.org", Address("mqtt", "broker.example.org", 1883, "")),
        ("mqtt://broker/", Address("mqtt", "broker", 1883, "")),
        ("mqtt://broker:1884/pstp", Address("mqtt", "broker", 1884, "/pstp")),
        ("MQTT://broker/home/site-1/", Address("mqtt", "broker", 1883, "/home/site-1")),
        (
            "mqtts://broker.example.org/a/b.c",
            Address("mqtts", "broker.example.org", 8883, "/a/b.c"),
        ),
        ("mqtts://[2001:db8::5]:8884/pstp", Address("mqtts", "2001:db8::5", 8884, "/pstp")),
    ],
)
def test_addresses_that_parse(text: str, expected: Address) -> None:
    """Every form the configuration and --address accept."""
    assert parse(text) == expected


def test_default_ports() -> None:
    """TCP 9000, ws 80, wss 443, mqtt 1883, mqtts 8883."""
    assert SCHEMES == {"tcp": 9000, "ws": 80, "wss": 443, "mqtt": 1883, "mqtts": 8883}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://home/pstp", "unknown scheme 'http'"),
        ("mqtt://broker/a//b", "'/a//b' is not a topic prefix"),
        ("mqtt://broker/pstp/+", "is not a topic prefix"),
        ("mqtts://broker/$SYS", "is not a topic prefix"),
        ("mqtt://broker/a b", "is not a topic prefix"),
        ("mqtt://broker/" + "/".join("abcdefghi"), "at most 8 levels"),
        ("mqtt://broker/" + "x" * 65, "is not a topic prefix"),
        ("mqtt://broker/pstp#x", "no query, fragment"),
        ("mqtts://user:pw@broker/pstp", "nothing secret goes into a URL"),
        ("mqtt://broker:0", "PORT 1-65535"),
        ("mqtt:///pstp", "no host"),
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


def test_mqtt_addresses_name_a_broker_and_a_topic_prefix() -> None:
    """mqtt:// and mqtts:// are brokers (§19.3); the path, without its slashes, is the prefix."""
    plain = parse("mqtt://broker")
    assert plain.mqtt and not plain.websocket
    assert (plain.port, plain.path, prefix_of(plain.path)) == (1883, "", "pstp")
    tls = parse("mqtts://broker/home/site-1")
    assert tls.mqtt and (tls.port, prefix_of(tls.path)) == (8883, "home/site-1")
    assert not parse("ws://home/p").mqtt and not parse("home:9000").mqtt


def test_mqtt_is_a_listen_address() -> None:
    """A device lists its broker among the addresses it serves on, and connects out to it."""
    assert parse("mqtts://broker.example.org/pstp", listen=True) == Address(
        "mqtts", "broker.example.org", 8883, "/pstp"
    )


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
        (Address("mqtt", "broker", 1883), "mqtt://broker"),
        (Address("mqtt", "broker", 1884, "/pstp"), "mqtt://broker:1884/pstp"),
        (Address("mqtts", "broker", 8883, "/a/b"), "mqtts://broker/a/b"),
        (Address("mqtts", "2001:db8::5", 8883), "mqtts://[2001:db8::5]"),
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
# A topic prefix: 1 to 8 levels of [A-Za-z0-9_.-], as an address path ("" for none).
topic_paths = st.one_of(
    st.just(""),
    st.lists(st.text("ABZabz09_.-", min_size=1, max_size=64), min_size=1, max_size=8).map(
        lambda levels: "/" + "/".join(levels)
    ),
)


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


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=60)
@given(
    scheme=st.sampled_from(["mqtt", "mqtts"]),
    host=hosts,
    port=st.integers(1, 65535),
    path=topic_paths,
)
def test_mqtt_str_parses_back_to_the_same_address(
    scheme: str, host: str, port: int, path: str
) -> None:
    """parse(str(a)) == a for a broker address, and its path is the topic prefix."""
    address = Address(scheme, host, port, path)
    assert parse(str(address)) == address
    assert prefix_of(path) == (path[1:] or "pstp")


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=80))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    """Nothing but ValueError for any input (the configuration and argv are read with it)."""
    with contextlib.suppress(ValueError):
        parse(text)
