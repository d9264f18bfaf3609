"""Tests for pstp.client.mdns: turning DNS-SD answers into devices (no network)."""

from __future__ import annotations

import socket

import pytest
from zeroconf import ServiceInfo

from pstp.client.mdns import SERVICE_TYPE, MdnsFound, browse, parse_service


def info(props: dict[str, str], *, port: int = 9000, addresses: bool = True) -> ServiceInfo:
    """A resolved service instance as zeroconf would hand it over."""
    return ServiceInfo(
        SERVICE_TYPE,
        f"home.{SERVICE_TYPE}",
        port=port,
        properties=props,
        server="pstp-home.local.",
        addresses=[socket.inet_aton("198.18.0.7")] if addresses else [],
    )


def test_a_pstp2_record_becomes_a_device() -> None:
    """id, v=2, caps and the first IPv4 address."""
    found = parse_service(info({"id": "home", "v": "2", "caps": "0013"}))
    assert found == MdnsFound(
        "home", "198.18.0.7", 9000, 0x13, ("198.18.0.7",), f"home.{SERVICE_TYPE}"
    )


def test_without_an_address_the_host_name_is_used() -> None:
    """A record with no A record still names its host."""
    found = parse_service(info({"id": "home", "v": "2", "caps": "3"}, addresses=False))
    assert found is not None and found.host == "pstp-home.local"


@pytest.mark.parametrize(
    "props",
    [
        {"id": "home", "v": "1", "caps": "3"},
        {"v": "2", "caps": "3"},
        {"id": "", "v": "2"},
        {"id": "x" * 65, "v": "2"},
        {"id": "home", "v": "2", "caps": "zz"},
    ],
)
def test_unusable_records_are_skipped(props: dict[str, str]) -> None:
    """Another version, no id, an overlong id or malformed caps: not a device."""
    assert parse_service(info(props)) is None


def test_a_record_without_a_port_is_skipped() -> None:
    """Port 0 is no service."""
    assert parse_service(info({"id": "home", "v": "2"}, port=0)) is None


async def test_browse_refuses_to_block_an_event_loop() -> None:
    """Called from a running loop, browse() says to use a thread."""
    with pytest.raises(RuntimeError, match="to_thread"):
        browse(0.1)
