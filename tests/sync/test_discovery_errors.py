"""The discovery responder thread survives unexpected errors (issue 11, suspected bug)."""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Any

import pytest

from pstp.discovery.protocol import Responder
from pstp.sync.discovery import ResponderThread, discover
from tests.sync.test_discovery import free_udp_port


class _Flaky:
    """A socket whose next ``failures`` receives fail with ``exc`` (then it works)."""

    def __init__(self, sock: socket.socket, failures: int, exc: Exception) -> None:
        self._sock, self.failures, self.exc = sock, failures, exc
        self.raised = 0

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        if self.raised < self.failures:
            self.raised += 1
            raise self.exc
        return self._sock.recvfrom(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest.mark.parametrize(
    "exc", [OSError(errno.ENOBUFS, "No buffer space available"), ValueError("a bug")]
)
def test_responder_keeps_answering_after_unexpected_errors(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_udp_port()
    thread = ResponderThread(Responder("home", port), "127.0.0.1")
    flaky = _Flaky(thread._sock, 5, exc)
    thread._sock = flaky  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="pstp.discovery"):
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while flaky.raised < flaky.failures and time.monotonic() < deadline:
                time.sleep(0.05)
            assert thread._thread.is_alive()
            found = discover(port, timeout=3.0, first=True, addresses=["127.0.0.1"])
            assert [f.device_id for f in found] == ["home"]
        finally:
            thread.stop()
    assert not thread._thread.is_alive()
    warnings = [r for r in caplog.records if r.name == "pstp.discovery"]
    assert len(warnings) == 1 and "retrying" in warnings[0].getMessage()  # rate-limited


def test_stop_is_prompt_while_backing_off() -> None:
    port = free_udp_port()
    thread = ResponderThread(Responder("home", port), "127.0.0.1")
    thread._sock = _Flaky(thread._sock, 10**9, OSError(errno.ENOMEM, "no memory"))  # type: ignore[assignment]
    thread.start()
    time.sleep(3.0)  # the backoff has reached its 2 s ceiling
    started = time.monotonic()
    thread.stop()
    assert time.monotonic() - started < 1.0 and not thread._thread.is_alive()
