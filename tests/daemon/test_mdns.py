"""Tests for pstp.daemon.mdns without touching the network (the netns tests advertise for real)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import pstp.daemon.mdns as mdns
from pstp.daemon.mdns import SERVICE_TYPE, advertise, advertise_device, txt_record
from pstp.settings import Settings


def settings(*, discovery: bool = True, stealth: bool = False) -> Settings:
    """A minimal configuration for "home"."""
    return Settings(Path("x.toml"), "home.lan", (), discovery, stealth, {}, {})


def test_txt_record_names_the_device_version_and_caps() -> None:
    """TXT: id, v=2 and the caps as four hex digits (§8.6)."""
    assert SERVICE_TYPE == "_pstp._tcp.local."
    assert txt_record("home", 0x13) == {"id": "home", "v": "2", "caps": "0013"}


def test_stealth_or_no_discovery_advertises_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stealth device must not answer mDNS queries from everyone."""

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("must not advertise")

    monkeypatch.setattr(mdns, "advertise", boom)
    assert advertise_device(settings(stealth=True), [("0.0.0.0", 9000)]) == []
    assert advertise_device(settings(discovery=False), [("0.0.0.0", 9000)]) == []


def test_one_advertisement_per_port_and_wildcards_mean_every_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Listeners sharing a port share an advertisement; a wildcard listener advertises all."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(mdns, "advertise", lambda *a: calls.append(a) or a)
    bound = [("0.0.0.0", 9000), ("127.0.0.1", 9000), ("198.18.0.1", 9001)]
    assert len(advertise_device(settings(), bound)) == 2
    assert calls == [("home.lan", 9000, []), ("home.lan", 9001, ["198.18.0.1"])]


def test_specific_ipv6_addresses_are_not_announced_and_the_log_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A records are IPv4: '::1' is left out, an IPv6-only port is not advertised (§8.6)."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(mdns, "advertise", lambda *a: calls.append(a) or a)
    bound = [("::1", 9000), ("::1", 9001), ("198.18.0.1", 9001), ("::", 9002)]
    with caplog.at_level(logging.INFO, "pstp.mdns"):
        assert len(advertise_device(settings(), bound)) == 2
    assert calls == [("home.lan", 9001, ["198.18.0.1"]), ("home.lan", 9002, [])]
    assert "not advertising port 9000 on mDNS" in caplog.text


def test_a_failing_zeroconf_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Broadcast discovery still works when mDNS cannot start."""

    def fail(*a: object) -> None:
        raise OSError("no multicast")

    monkeypatch.setattr(mdns, "advertise", fail)
    with caplog.at_level(logging.WARNING, "pstp.mdns"):
        assert advertise_device(settings(), [("0.0.0.0", 9000)]) == []
    assert "no multicast" in caplog.text


def test_bad_port_is_refused_before_any_socket() -> None:
    """Port 0 cannot be advertised."""
    with pytest.raises(ValueError, match="bad port"):
        advertise("home", 0)


def test_instance_label_keeps_dns_safe_characters() -> None:
    """Dots would split the instance name into labels; they become dashes."""
    assert mdns._label("home.lan_1") == "home-lan_1"
