"""The attackers of the soak test (tests/daemon/test_soak.py), run as their own process.

    python -m tests.daemon.soak_attacker PORT SECONDS KEYLESS PEERS [RATE]

For SECONDS it keeps KEYLESS keyless connections open to 127.0.0.1:PORT from
many loopback source addresses (reopening each one the daemon sheds a second
later, at most RATE new connections a second in all, default 500; 0 means as
fast as it can, a connection-rate flood, see docs/security.md), and runs
PEERS misbehaving paired peers (ids ``m0``..; keys from :func:`peer_key`) in
three groups: ping floods, refused requests, and peers that send heartbeat
PINGs but never read.  At the end it prints one JSON line of counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import sys
import time

from pstp.asyncio.client import connect
from pstp.client.remote import run_exec
from pstp.exceptions import ChannelError, PstpError
from pstp.protocol.config import Config
from pstp.protocol.connection import Connection, ConnectionState, Role


def peer_key(i: int) -> bytes:
    """The pair key of misbehaving peer ``m{i}``."""
    return bytes((i * 7 + j) % 256 for j in range(32))


class Counts:
    """What the attackers managed."""

    def __init__(self) -> None:
        self.keyless_opened = 0
        self.keyless_shed = 0
        self.pings = 0
        self.refused = 0
        self.silent_sessions = 0
        self.errors = 0


class Pace:
    """At most ``rate`` starts a second in all (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.gap = 1 / rate if rate else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        self.next = max(now, self.next) + self.gap
        if self.next - self.gap > now:
            await asyncio.sleep(self.next - self.gap - now)


async def keyless(port: int, slot: int, stop: float, counts: Counts, pace: Pace) -> None:
    """Hold one keyless connection open; reopen it a second after the daemon sheds it."""
    source = f"127.1.{slot // 200}.{1 + slot % 200}"
    while time.monotonic() < stop:
        await pace.wait()
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0)
            )
        except OSError:
            await asyncio.sleep(0.1)
            continue
        counts.keyless_opened += 1
        if slot % 2:
            writer.write(os.urandom(40))  # garbage, or an idle half-open connection
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(reader.read(1), max(0.01, stop - time.monotonic()))
            counts.keyless_shed += 1
        writer.close()
        await asyncio.sleep(1.0 if pace.gap else 0.02)


async def ping_flood(port: int, i: int, stop: float, counts: Counts) -> None:
    """A paired peer that pings 64 KiB as fast as it can."""
    while time.monotonic() < stop:
        try:
            async with await connect(
                "127.0.0.1", port, pair_key=peer_key(i), device_id="home"
            ) as session:
                while time.monotonic() < stop:
                    await session.request("ping", b"p" * 65536)
                    counts.pings += 1
        except PstpError:
            counts.errors += 1
            await asyncio.sleep(0.1)


async def refused(port: int, i: int, stop: float, counts: Counts) -> None:
    """A paired peer whose every request is refused, with large arguments."""
    big = "A" * 30_000
    while time.monotonic() < stop:
        try:
            async with await connect(
                "127.0.0.1", port, pair_key=peer_key(i), device_id="home"
            ) as session:
                while time.monotonic() < stop:
                    with contextlib.suppress(ChannelError):  # refused, as it should be
                        await run_exec(session, ["cat", "/etc/shadow", big])
                    counts.refused += 1
        except PstpError:
            counts.errors += 1
            await asyncio.sleep(0.1)


async def never_reads(port: int, i: int, stop: float, counts: Counts) -> None:
    """A paired peer that sends heartbeat PINGs and never reads an answer."""
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = peer_key(i)
        conn = Connection(
            Role.CLIENT, Config(), pair_key=key, responder_id="home", timestamp=time.time_ns()
        )
        conn.start(time.monotonic())
        try:
            writer.write(conn.data_to_send())
            while conn.state is not ConnectionState.ESTABLISHED:
                data = await asyncio.wait_for(reader.read(65536), 10)
                if not data:
                    raise ConnectionError("refused")
                conn.receive_data(data, time.monotonic())
                writer.write(conn.data_to_send())
            counts.silent_sessions += 1
            while time.monotonic() < stop:  # from now on: write only
                for _ in range(200):
                    conn.send_ping()
                writer.write(conn.data_to_send())
                await asyncio.wait_for(writer.drain(), 10)
                await asyncio.sleep(0.005)
        except (OSError, ConnectionError, TimeoutError):
            counts.errors += 1
            await asyncio.sleep(0.1)
        finally:
            writer.close()


async def main(port: int, seconds: float, n_keyless: int, n_peers: int, rate: float) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    stop = time.monotonic() + seconds
    counts = Counts()
    pace = Pace(rate)
    tasks = [keyless(port, slot, stop, counts, pace) for slot in range(n_keyless)]
    kinds = (ping_flood, refused, never_reads)
    tasks += [kinds[i % 3](port, i, stop, counts) for i in range(n_peers)]
    print("started", flush=True)
    await asyncio.gather(*tasks)
    print(json.dumps(vars(counts)), flush=True)


if __name__ == "__main__":
    port, seconds, n_keyless, n_peers = sys.argv[1:5]
    rate = float(sys.argv[5]) if len(sys.argv) > 5 else 500.0
    asyncio.run(main(int(port), float(seconds), int(n_keyless), int(n_peers), rate))
