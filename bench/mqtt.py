"""The MQTT rows (``python -m bench --only mqtt``): PSTP through a real Mosquitto broker.

Everything goes through one broker the benchmark starts itself: ``mosquitto -c
CONF`` on a free loopback port, its configuration in a temporary directory
(``listener PORT 127.0.0.1``, ``set_tcp_nodelay true``, ``allow_anonymous true``,
no persistence; a second broker keeps mosquitto's default ``set_tcp_nodelay
false`` to show what Nagle's algorithm on the broker costs).  Beside PSTP it
measures the broker's own round trip, so the table says what PSTP adds:

* **broker echo**: plain MQTT, no PSTP.  An echo process (``python -m bench.mqtt
  echo``) subscribes to a request topic and republishes every message on a reply
  topic; a client process (``python -m bench.mqtt rtt``) publishes 64 B and waits
  for it to come back.  Both are paho-mqtt 2 clients speaking MQTT 5 at QoS 1, as
  PSTP's transport does, and both drive paho the way
  :class:`pstp.asyncio.mqtt.BrokerLink` does (its non-blocking ``loop_read`` and
  ``loop_write`` when the socket says so) on a bare ``select`` loop: the leanest
  paho client, without asyncio and without PSTP.  The echo runs in its own process,
  as the PSTP device does.
* **PSTP** through the same broker: a device process (``python -m bench.server
  --mqtt mqtt://127.0.0.1:PORT``) and ``bench.client`` workers connecting to the
  same address (``rtt``, ``latency --connect-only``, ``bulk``), each beside the same
  worker over TCP where that is cheap.

    python -m bench.mqtt echo --port P          # until stdin ends
    python -m bench.mqtt rtt  --port P --reps N # prints {"times": [...], "cpu": [...]}
    python -m bench.mqtt cpu  [--reps N]        # where a round trip's CPU time goes
    python -m bench.mqtt paho                   # paho's own CPU per packet, no socket

``cpu`` starts its own broker and prints, per 64 B round trip, the wall time and
the CPU time of each process on the way (client, broker, responder): the broker
echo, PSTP's channel echo and ``Session.request`` through the broker, the same
with ``bench.experiments.buffered_paho_reads`` or ``coalesce_paho_writes`` in both
PSTP processes, and PSTP over plain TCP.  The kinds alternate in rounds.
Responder and broker CPU come from /proc (clock ticks) over each worker's whole
run, its connect included.

``paho`` times paho-mqtt's Python work per packet with its socket replaced by
memory (no system calls, no broker): receiving a QoS 1 PUBLISH (its reads, one
byte at a time for the header; decoding it, the MQTT 5 properties, the
callback, queueing and "writing" the PUBACK), publishing one, and receiving a
PUBACK.  What the header's one-byte ``recv`` system calls add on top is what
``cpu``'s "paho reads buffered" row takes away.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import HOST, emit, free_port

if TYPE_CHECKING:
    from paho.mqtt.client import Client

#: Where Debian's mosquitto package puts the broker (``/usr/sbin`` is not always on PATH).
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary() -> str | None:
    """The mosquitto broker's executable, if installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def mosquitto_version(binary: str) -> str:
    """``mosquitto version 2.0.11`` -> ``2.0.11`` (or ``?``)."""
    out = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("mosquitto version"):
            return line.split()[-1]
    return "?"


class Mosquitto:
    """A private Mosquitto broker on a free loopback port, for one benchmark run.

    Args:
        nodelay: ``set_tcp_nodelay true`` (the broker sends each packet at once);
            false keeps mosquitto's default, Nagle's algorithm on.
        timeout: seconds to wait for it to listen.

    Its log (errors and warnings, on its stderr) goes to ``log`` in its directory.

    Raises (on entry):
        RuntimeError: mosquitto is not installed, or did not come up.
    """

    def __init__(self, nodelay: bool = True, timeout: float = 10.0) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto not installed (apt-get install mosquitto)")
        self.binary = binary
        self.version = mosquitto_version(binary)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pstp-bench-mqtt-"))
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} {HOST}\n"
            f"set_tcp_nodelay {'true' if nodelay else 'false'}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"  # a file here: root's temp dir, and mosquitto drops root
            "log_type error\n"
            "log_type warning\n"
        )
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Mosquitto:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + self.timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                why = f"mosquitto exited ({code}): {self._tail()}"
                self.__exit__(None, None, None)
                raise RuntimeError(why)
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    why = f"mosquitto did not listen: {self._tail()}"
                    self.__exit__(None, None, None)
                    raise RuntimeError(why) from None
                time.sleep(0.05)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text()[-400:].strip()
        return ""

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        """The ``mqtt://`` address PSTP's server and clients are given."""
        return f"mqtt://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The broker's process id."""
        assert self.proc is not None
        return self.proc.pid


# -- the broker-echo workers ------------------------------------------------------------

# Topics shaped like PSTP's (prefix / 32 hex / 32 hex / i|r), so both publish alike.
_IDS = "0123456789abcdef" * 2 + "/" + "fedcba9876543210" * 2
REQUEST_TOPIC = f"bench/{_IDS}/i"
REPLY_TOPIC = f"bench/{_IDS}/r"


def _client(port: int) -> Client:
    """A paho-mqtt 2 client (MQTT 5, clean start) connected to the broker, CONNACK seen."""
    from paho.mqtt.client import Client, MQTTv5
    from paho.mqtt.enums import CallbackAPIVersion

    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="bench-" + os.urandom(6).hex(),
        protocol=MQTTv5,
    )

    def nodelay(_c: Client, _u: Any, sock: Any) -> None:
        # paho leaves Nagle's algorithm on: a QoS 1 PUBLISH written while the
        # previous packet (a PUBACK) is unacknowledged then waits for the peer's
        # delayed ACK, 40-88 ms per round trip on Linux (44 ms measured here).
        # PSTP's BrokerLink sets it too; the broker needs set_tcp_nodelay true.
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.on_socket_open = nodelay
    connected: list[bool] = []
    client.on_connect = lambda *a: connected.append(True)
    client.connect(HOST, port, keepalive=30, clean_start=True)
    _pump(client, lambda: bool(connected), 10.0)
    return client


def _pump(
    client: Client, done: Any, timeout: float, sel: selectors.BaseSelector | None = None
) -> None:
    """Drive paho as BrokerLink does (read when readable, write what it queued) until ``done()``.

    ``sel`` has the client's socket registered for reading (one is made if not given).

    Raises:
        TimeoutError: ``done()`` did not come true in time.
    """
    own = sel is None
    if sel is None:
        sel = selectors.DefaultSelector()
        sock = client.socket()
        assert sock is not None
        sel.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while not done():
            if client.want_write():
                client.loop_write()
            if done():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the broker")
            if sel.select(left):
                client.loop_read()
                if client.want_write():
                    client.loop_write()
    finally:
        if own:
            sel.close()


def _subscribe(client: Client, topic: str) -> None:
    from paho.mqtt.subscribeoptions import SubscribeOptions

    acked: list[bool] = []
    client.on_subscribe = lambda *a: acked.append(True)
    client.subscribe([(topic, SubscribeOptions(qos=1))])
    _pump(client, lambda: bool(acked), 10.0)


def echo_worker(port: int) -> None:
    """Republish every message on the request topic to the reply topic until stdin ends."""
    client = _client(port)

    def on_message(c: Client, _u: Any, msg: Any) -> None:
        c.publish(REPLY_TOPIC, bytes(msg.payload), qos=1)

    client.on_message = on_message
    _subscribe(client, REQUEST_TOPIC)
    print("READY", flush=True)
    sock = client.socket()
    assert sock is not None
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "mqtt")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    next_misc = time.monotonic() + 1.0
    while True:
        for key, _ in sel.select(1.0):
            if key.data == "stdin":
                if not sys.stdin.readline():
                    client.disconnect()
                    return
                continue
            client.loop_read()
            # The republish was queued inside on_message (paho does not write from
            # inside its callbacks): write it now, as BrokerLink._flush does.
            if client.want_write():
                client.loop_write()
        if time.monotonic() >= next_misc:
            client.loop_misc()
            next_misc = time.monotonic() + 1.0


def rtt_worker(port: int, reps: int, warmup: int, size: int) -> dict[str, Any]:
    """Publish ``size`` bytes, wait for the echo; ``reps`` round trips after ``warmup``."""
    client = _client(port)
    got: list[bytes] = []
    client.on_message = lambda _c, _u, msg: got.append(bytes(msg.payload))
    _subscribe(client, REPLY_TOPIC)
    payload = os.urandom(size)
    sock = client.socket()
    assert sock is not None
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    times: list[float] = []
    cpu: list[float] = []
    for i in range(reps + warmup):
        got.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        client.publish(REQUEST_TOPIC, payload, qos=1)  # written at once (not in a callback)
        _pump(client, lambda: bool(got), 10.0, sel)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        assert got[0] == payload
        if i >= warmup:
            times.append(dt)
            cpu.append(dc)
    sel.close()
    client.disconnect()
    return {"times": times, "cpu": cpu}


def cpu_breakdown(reps: int, rounds: int) -> str:
    """Wall and CPU time per 64 B round trip, by process; a plain-text table."""
    from bench.common import (
        ServerProcess,
        cpu_seconds,
        make_keys,
        median,
        read_line,
        run_worker,
        spawn_worker,
        stop_child,
    )

    plain, buffered, joined = make_keys(1, "p"), make_keys(1, "b"), make_keys(1, "j")
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, wall: list[float], client: list[float], **per_rt: float) -> None:
        row = rows.setdefault(name, {"wall": [], "client": []})
        row["wall"] += wall
        row["client"] += client
        for k, v in per_rt.items():
            row.setdefault(k, []).append(v)

    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(Mosquitto())
        echo = spawn_worker("bench.mqtt", "echo", "--port", broker.port)
        stack.callback(stop_child, echo)
        assert echo.stdout is not None
        if read_line(echo.stdout, 30, echo) != "READY":
            raise RuntimeError("bench.mqtt echo did not start")
        url = broker.url
        dev = stack.enter_context(ServerProcess(plain, "--session-echo", "--mqtt", url))
        dev_b = stack.enter_context(
            ServerProcess(buffered, "--session-echo", "--mqtt", url, "--paho-buffered")
        )
        dev_j = stack.enter_context(
            ServerProcess(joined, "--session-echo", "--mqtt", url, "--paho-coalesce")
        )
        tcp = stack.enter_context(ServerProcess(plain, "--session-echo"))
        per = max(1, reps // rounds)
        pstp_kinds = (
            ("PSTP channel echo, mqtt://", "channel", dev, plain, ["--url", url]),
            ("PSTP Session.request, mqtt://", "request", dev, plain, ["--url", url]),
            (
                "PSTP channel echo, mqtt://, paho reads buffered",
                "channel",
                dev_b,
                buffered,
                ["--url", url, "--paho-buffered"],
            ),
            (
                "PSTP channel echo, mqtt://, paho writes joined",
                "channel",
                dev_j,
                joined,
                ["--url", url, "--paho-coalesce"],
            ),
            (
                "PSTP Session.request, mqtt://, paho writes joined",
                "request",
                dev_j,
                joined,
                ["--url", url, "--paho-coalesce"],
            ),
            ("PSTP channel echo, TCP", "channel", tcp, plain, ["--port", tcp.port]),
            ("PSTP Session.request, TCP", "request", tcp, plain, ["--port", tcp.port]),
        )
        for _ in range(rounds):
            e0, b0 = cpu_seconds(echo.pid), cpu_seconds(broker.pid)
            r = run_worker("bench.mqtt", "rtt", "--port", broker.port, "--reps", per)
            add(
                "broker echo (paho, no PSTP)",
                r["times"],
                r["cpu"],
                responder=(cpu_seconds(echo.pid) - e0) / per,
                broker=(cpu_seconds(broker.pid) - b0) / per,
            )
            for name, step, srv, keys, opts in pstp_kinds:
                s0, b0 = cpu_seconds(srv.pid), cpu_seconds(broker.pid)
                r = run_worker(
                    "bench.client", "rtt", *opts, "--steps", step, "--reps", per, keys=keys
                )
                add(
                    name,
                    r[step],
                    r[f"cpu_{step}"],
                    responder=(cpu_seconds(srv.pid) - s0) / per,
                    broker=(cpu_seconds(broker.pid) - b0) / per if "mqtt" in name else 0.0,
                )
    head = f"{'µs per 64 B round trip':50} {'wall':>6} {'client':>7} {'resp.':>7} {'broker':>7}"
    lines = [
        f"mosquitto {broker.version}, {reps} round trips of each kind in {rounds} rounds; wall "
        "and client CPU: medians of the round trips; responder (echo process or PSTP server) "
        "and broker CPU: medians of the rounds' means (/proc, clock ticks)",
        head,
        "-" * len(head),
    ]
    for name, row in rows.items():
        cells = [median(row[k]) * 1e6 for k in ("wall", "client", "responder", "broker")]
        lines.append(f"{name:50} " + " ".join(f"{c:>7.0f}" for c in cells))
    return "\n".join(lines)


class _MemorySocket:
    """Stands in for paho's socket: reads come from a buffer, writes vanish."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.recvs = 0
        self.sends = 0

    def recv(self, n: int) -> bytes:
        self.recvs += 1
        if self.pos >= len(self.data):
            raise BlockingIOError
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += len(out)
        return out

    def send(self, b: bytes) -> int:
        self.sends += 1
        return len(b)

    def close(self) -> None:
        pass


def _vbi(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _offline_client() -> Client:
    from paho.mqtt.client import Client, MQTTv5, _ConnectionState
    from paho.mqtt.enums import CallbackAPIVersion

    client = Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTv5)
    client.max_inflight_messages_set(0)  # publish everything at once
    client._state = _ConnectionState.MQTT_CS_CONNECTED
    return client


def paho_costs(n: int = 20000) -> str:
    """paho-mqtt's CPU per packet with the socket replaced by memory; plain text."""
    import struct

    topic = REQUEST_TOPIC.encode()
    lines = [
        f"paho-mqtt's own CPU per packet (MQTT 5, QoS 1, no socket), mean of {n} packets "
        f"(64 KiB PUBLISH: {n // 5})"
    ]

    def publishes(size: int, count: int) -> bytes:
        out = []
        for i in range(count):
            body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", i % 65000 + 1)
            body += b"\0" + bytes(size)  # properties length 0, the payload
            out.append(b"\x32" + _vbi(len(body)) + body)
        return b"".join(out)

    for size, count in ((64, n), (65536 + 45, n // 5)):  # 64 KiB records: less memory
        client = _offline_client()
        got = [0]
        client.on_message = lambda *_a, g=got: g.__setitem__(0, g[0] + 1)
        sock = _MemorySocket(publishes(size, count))
        client._sock = sock  # type: ignore[assignment]
        t0 = time.process_time()
        while got[0] < count:
            client.loop_read()
        dt = (time.process_time() - t0) / count
        lines.append(
            f"  {f'receive a {size} B PUBLISH, queue its PUBACK':46} {dt * 1e6:6.1f} µs "
            f"({sock.recvs / count:.0f} reads, {sock.sends / count:.0f} write)"
        )
    for size in (64, 65536):
        client = _offline_client()
        client._sock = _MemorySocket()  # type: ignore[assignment]
        payload = bytes(size)
        t0 = time.process_time()
        for _ in range(n):
            client.publish(REQUEST_TOPIC, payload, qos=1)
        dt = (time.process_time() - t0) / n
        lines.append(f"  {f'publish {size} B':46} {dt * 1e6:6.1f} µs")
    client = _offline_client()
    client._sock = _MemorySocket()  # type: ignore[assignment]
    acked = [0]
    client.on_publish = lambda *_a: acked.__setitem__(0, acked[0] + 1)
    mids = [client.publish(REQUEST_TOPIC, b"x", qos=1).mid for _ in range(n)]
    client._sock = _MemorySocket(  # type: ignore[assignment]
        b"".join(b"\x40\x02" + struct.pack("!H", m) for m in mids)
    )
    t0 = time.process_time()
    while acked[0] < n:
        client.loop_read()
    dt = (time.process_time() - t0) / n
    lines.append(f"  {'receive a PUBACK':46} {dt * 1e6:6.1f} µs")
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    t0 = time.process_time()
    for _ in range(n):
        Properties(PacketTypes.PUBLISH).unpack(b"\0")  # type: ignore[no-untyped-call]
    dt = (time.process_time() - t0) / n
    lines.append(f"  {'  one empty MQTT 5 property set, decoded':46} {dt * 1e6:6.1f} µs")
    return "\n".join(lines)


def main() -> None:
    """Parse the subcommand and run it."""
    parser = argparse.ArgumentParser(prog="python -m bench.mqtt")
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo", help="republish request-topic messages on the reply topic")
    e.add_argument("--port", type=int, required=True)
    r = sub.add_parser("rtt", help="time publish -> echo round trips")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--reps", type=int, default=1000)
    r.add_argument("--warmup", type=int, default=20)
    r.add_argument("--size", type=int, default=64)
    c = sub.add_parser("cpu", help="wall and CPU time per round trip, by process")
    c.add_argument("--reps", type=int, default=2000)
    c.add_argument("--rounds", type=int, default=4)
    sub.add_parser("paho", help="paho's own CPU per packet, the socket replaced by memory")
    for worker in (e, r):
        worker.add_argument(
            "--quickack", action="store_true", help="bench.experiments.quickack_after_reads"
        )
    args = parser.parse_args()
    if getattr(args, "quickack", False):
        from bench.experiments import quickack_after_reads

        quickack_after_reads()
    if args.cmd == "paho":
        print(paho_costs())
    elif args.cmd == "echo":
        echo_worker(args.port)
    elif args.cmd == "rtt":
        emit(rtt_worker(args.port, args.reps, args.warmup, args.size))
    else:
        print(cpu_breakdown(args.reps, args.rounds))


if __name__ == "__main__":
    main()
