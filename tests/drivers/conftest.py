"""Every case in this folder runs once per driver, through that driver's adapter.

``websocket`` is the asyncio driver with every session over a ws:// upgrade: the
transport must change nothing a session does (docs/howto/drivers.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.drivers.adapters import Driver, make_driver


@pytest.fixture(params=["asyncio", "sync", "websocket"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    """The driver under test, stopped (every session closed) afterwards."""
    d = make_driver(request.param)
    try:
        yield d
    finally:
        d.stop()
