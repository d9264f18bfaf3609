"""The forwarding kinds' OPEN params (docs/protocol.md §17.14, §17.15): decoded and refused."""

from __future__ import annotations

import pytest

from pstp.protocol.kinds import BadParams, ForwardInOpen, ForwardOpen, ListenOpen


def test_forward_params_round_trip_and_refusals() -> None:
    """host and port checked; the reason travels."""
    ask = ForwardOpen(host="camera.local", port=554, reason="check the door")
    assert ForwardOpen.from_params(ask.to_params()) == ask
    for bad in ({"host": "", "port": 80}, {"host": "x" * 256, "port": 80}, {"port": 80}):
        with pytest.raises(BadParams, match="host must be"):
            ForwardOpen.from_params(bad)
    for port in (0, 65536, True, "80"):
        with pytest.raises(BadParams, match="port must be"):
            ForwardOpen.from_params({"host": "a", "port": port})


def test_listen_params_default_to_loopback_and_take_port_zero() -> None:
    """forward-listen: an IP address to bind (127.0.0.1 by default), port 0..65535."""
    assert ListenOpen.from_params({"port": 0}) == ListenOpen(port=0)
    ask = ListenOpen(host="::1", port=2222, reason="ssh home")
    assert ListenOpen.from_params(ask.to_params()) == ask
    for host in ("localhost", "", 7):
        with pytest.raises(BadParams, match="host must be an IP address"):
            ListenOpen.from_params({"host": host, "port": 1})
    for port in (-1, 65536, False, None):
        with pytest.raises(BadParams, match="port must be"):
            ListenOpen.from_params({"port": port})


def test_forward_in_params_name_the_listen_channel() -> None:
    """forward-in: the listen channel's id and who connected."""
    ask = ForwardInOpen(listen=3, origin="127.0.0.1:50000")
    assert ForwardInOpen.from_params(ask.to_params()) == ask
    assert ForwardInOpen.from_params({"listen": 0}) == ForwardInOpen(listen=0)
    for listen in (-1, 1 << 32, True, "3", None):
        with pytest.raises(BadParams, match="listen must be"):
            ForwardInOpen.from_params({"listen": listen})
    for origin in (5, "x" * 256):
        with pytest.raises(BadParams, match="origin must be"):
            ForwardInOpen.from_params({"listen": 1, "origin": origin})
