"""connect_peer: the remembered address first, then discovery; the working address is kept."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

import pstp.client.api as api
from pstp.asyncio.discovery import discover as real_discover
from pstp.asyncio.server import Server, serve
from pstp.client.api import PeerNotFound, connect_peer
from pstp.discovery.protocol import Found
from pstp.protocol.handshake import KeyRing
from pstp.settings import add_peer, create, load
from pstp.sync.discovery import ResponderThread, start_responder
from tests.cli.test_pair import free_port

KEY = bytes(range(32))


@pytest.fixture
async def home() -> AsyncIterator[tuple[Server, ResponderThread, int]]:
    """A device "home" on 127.0.0.1 that knows "phone", answering discovery."""
    port = free_port()
    ring = KeyRing()
    ring.add("phone", KEY)
    responder = start_responder("home", port, host="127.0.0.1")
    server = await serve(
        None, "127.0.0.1", port, keyring=ring, own_id="home", discovery_lookup=responder.lookup
    )
    try:
        yield server, responder, port
    finally:
        await server.close()
        responder.stop()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record discovery calls, and keep their PINGs on loopback."""
    seen: list[dict[str, Any]] = []

    async def loopback(port: int, timeout: float, **kw: Any) -> list[Found]:
        seen.append(dict(kw, port=port))
        addresses: Iterable[str] = ["127.0.0.1"]
        return await real_discover(port, timeout, addresses=addresses, **kw)

    monkeypatch.setattr(api, "discover", loopback)
    return seen


def phone_config(tmp_path: Path, address: str | None) -> Path:
    """A config for "phone" holding home's key (and maybe a remembered address)."""
    path = create(tmp_path / "phone.toml", "phone")
    add_peer(path, "home", KEY, address=address)
    return path


async def test_remembered_address_is_tried_first_and_discovery_is_skipped(
    tmp_path: Path, home: tuple[Server, ResponderThread, int], calls: list[dict[str, Any]]
) -> None:
    """A working remembered address is used as is: no PING, no rewrite of the config."""
    _, _, port = home
    path = phone_config(tmp_path, f"127.0.0.1:{port}")
    before = path.read_text()
    async with await connect_peer(load(path), "home") as session:
        assert session.peer_id == "home"
    assert calls == []
    assert path.read_text() == before


async def test_stale_address_falls_back_to_discovery_and_is_updated(
    tmp_path: Path, home: tuple[Server, ResponderThread, int], calls: list[dict[str, Any]]
) -> None:
    """A refused remembered address leads to a keyed PING on its port; the new address is kept."""
    _, _, port = home
    path = phone_config(tmp_path, f"127.0.0.2:{port}")  # nothing listens there
    async with await connect_peer(load(path), "home") as session:
        assert session.peer_id == "home"
    (call,) = calls
    assert call["port"] == port and call["kid_key"] is not None  # stealth peers answer too
    assert load(path).peers["home"].address == f"127.0.0.1:{port}"


async def test_nothing_found_raises_peer_not_found(
    tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    """No address works and nobody answers: PeerNotFound names what was tried."""
    port = free_port()
    path = phone_config(tmp_path, f"127.0.0.1:{port}")
    with pytest.raises(PeerNotFound, match=f"127.0.0.1:{port}"):
        await connect_peer(load(path), "home", discovery_timeout=0.1)
    assert load(path).peers["home"].address == f"127.0.0.1:{port}"


async def test_an_explicit_address_is_used_alone(
    tmp_path: Path, home: tuple[Server, ResponderThread, int], calls: list[dict[str, Any]]
) -> None:
    """--address that does not answer fails, although the remembered address and
    discovery would work: no silent fallback (before, it "connected" through them)."""
    _, _, port = home
    path = phone_config(tmp_path, f"127.0.0.1:{port}")
    dead = free_port()
    with pytest.raises(PeerNotFound, match=f"127.0.0.1:{dead}.*used alone"):
        await connect_peer(load(path), "home", address=f"127.0.0.1:{dead}")
    assert not calls  # no discovery either
    session = await connect_peer(load(path), "home", address=f"127.0.0.1:{port}")
    await session.close()


def test_an_explicit_address_is_used_alone_by_the_blocking_path(
    tmp_path: Path, home: tuple[Server, ResponderThread, int]
) -> None:
    """connect_known (pstp run's fast path) follows the same rule."""
    from pstp.client.quick import connect_known

    _, _, port = home
    path = phone_config(tmp_path, f"127.0.0.1:{port}")
    dead = free_port()
    with pytest.raises(PeerNotFound, match="used alone"):
        connect_known(load(path), "home", address=f"127.0.0.1:{dead}")
