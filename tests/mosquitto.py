"""A real Mosquitto broker for the MQTT transport's tests (docs/protocol.md §19.3).

Each :class:`Broker` is a ``mosquitto -c CONF`` process of its own on a free
loopback port (or an address given), with anonymous access unless the test's
extra lines say otherwise, no persistence, and its log kept for assertion
messages.  :func:`bridged` joins two of them with a Mosquitto bridge that carries
the ``pstp/#`` subtree both ways, as brokers of two sites would be.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cli.test_pair import free_port
from tests.helpers import ROOT, TIMEOUT

__all__ = ["HOWTO", "MOSQUITTO", "Broker", "bridged", "capture", "howto_block", "needs_mosquitto"]

#: The how-to whose broker configuration blocks the tests run as written.
HOWTO = ROOT / "docs" / "howto" / "broker.md"


def howto_block(section: str, n: int = 0) -> str:
    """The ``n``-th code block of docs/howto/broker.md's section that starts ``## SECTION``."""
    text = HOWTO.read_text(encoding="utf-8")
    part = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    return part.split("```", 2 * n + 2)[2 * n + 1].split("\n", 1)[1]


#: Debian's broker (``apt-get install mosquitto``; .ci/run installs it).
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
#: A missing broker is a failure in CI (.ci/run installs it), a skip only on a
#: developer's machine without it.
needs_mosquitto = pytest.mark.skipif(
    not Path(MOSQUITTO).exists(), reason="mosquitto is not installed (apt-get install mosquitto)"
)


class Broker:
    """One running Mosquitto: ``port``, ``url`` and its log."""

    def __init__(
        self,
        dir: Path,
        *,
        extra: str = "",
        host: str = "127.0.0.1",
        port: int | None = None,
        listener: str | None = None,
    ) -> None:
        self.dir = dir
        self.host = host
        self.port = port or free_port()
        self.conf = dir / "mosquitto.conf"
        self.logfile = dir / "mosquitto.log"
        # ``listener``: the listener and access lines as a test gives them (a how-to's).
        head = listener or f"listener {self.port} {host}\nallow_anonymous true\n"
        self.conf.write_text(
            f"{head}"
            "persistence false\n"
            # As root, mosquitto would switch to its own user, who cannot read the
            # test's private temporary directory.
            "user root\n"
            f"log_dest file {self.logfile}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{extra}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT``."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> Broker:
        """Start it and wait until it accepts connections."""
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection((self.host, self.port), 0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mosquitto did not start: {self.log()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Terminate it and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        self.proc = None

    def log(self) -> str:
        """What it logged so far (and its stderr, if it died)."""
        text = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stderr:
            text += self.proc.stderr.read().decode(errors="replace")
        return text

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def bridged(dir: Path) -> Iterator[tuple[Broker, Broker]]:
    """Two brokers, ``b`` bridged to ``a`` for ``pstp/#`` both ways (QoS 1, MQTT 5), with
    the bridge block of docs/howto/broker.md.

    Yields once a message published on each has crossed to the other.
    """
    (dir / "a").mkdir()
    (dir / "b").mkdir()
    with Broker(dir / "a") as a:
        # The how-to's bridge, as written but for broker A's address (and a quick retry).
        bridge = howto_block("4.").replace("broker-a.example.net:1883", f"127.0.0.1:{a.port}")
        assert f"127.0.0.1:{a.port}" in bridge
        bridge += "restart_timeout 1\n"
        with Broker(dir / "b", extra=bridge) as b:
            _wait_bridge(a, b)
            yield a, b


def _wait_bridge(a: Broker, b: Broker) -> None:
    # Until the bridge has connected and subscribed, a message would be lost.
    deadline = time.monotonic() + TIMEOUT * 2
    for src, dst in ((b, a), (a, b)):
        while True:
            got = capture(dst, "pstp/probe", count=1, timeout=1.0, publish=(src, b"x"))
            if got:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the bridge did not come up: {b.log()}")


def capture(
    broker: Broker,
    topic: str,
    *,
    count: int,
    timeout: float,
    publish: tuple[Broker, bytes] | None = None,
) -> list[tuple[str, bytes]]:
    """Up to ``count`` messages on ``topic`` within ``timeout`` (after an optional publish)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[tuple[str, bytes]] = []
    ready = []
    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda _c, _u, msg: got.append((msg.topic, bytes(msg.payload)))
    sub.on_subscribe = lambda *_a: ready.append(True)
    sub.connect(broker.host, broker.port)
    sub.subscribe(topic, qos=1)
    deadline = time.monotonic() + timeout
    while not ready and time.monotonic() < deadline:
        sub.loop(0.05)
    if publish is not None:
        source, payload = publish
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.connect(source.host, source.port)
        info = pub.publish(topic.replace("#", "x").replace("+", "x"), payload, qos=1)
        while not info.is_published() and time.monotonic() < deadline:
            pub.loop(0.05)
        pub.disconnect()
    while len(got) < count and time.monotonic() < deadline:
        sub.loop(0.05)
    sub.disconnect()
    return got
