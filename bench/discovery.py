"""Discovery latency over loopback: PING sent to first PONG received.

    python -m bench.discovery [SAMPLES]

Two figures, both medians: the round trip on an open socket (what the protocol
costs), and a whole ``pstp.asyncio.discovery.discover(first=True)`` call (socket
set-up included).  The responder's rate limits are raised so the benchmark
measures answering, not the per-source limit.  Loopback only.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import time

from pstp.asyncio.discovery import discover
from pstp.discovery.protocol import Browser, Responder
from pstp.sync.discovery import ResponderThread

__all__ = ["main", "measure"]

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def measure(samples: int = 500) -> tuple[float, float]:
    """Median seconds: (PING to PONG on an open socket, whole discover(first=True) call)."""
    port = _free_port()
    responder = Responder("bench", port, rate=1e9, burst=1e9, global_rate=1e9)
    thread = ResponderThread(responder, HOST).start()
    try:
        rtt: list[float] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2.0)
            for _ in range(samples):
                browser = Browser()
                t0 = time.perf_counter()
                s.sendto(browser.ping, (HOST, port))
                while True:
                    data, src = s.recvfrom(2048)
                    if browser.receive_datagram(data, (src[0], src[1]), 0.0):
                        break
                rtt.append(time.perf_counter() - t0)

        async def calls() -> list[float]:
            out = []
            for _ in range(samples // 5):
                t0 = time.perf_counter()
                found = await discover(port, 2.0, first=True, addresses=[HOST])
                out.append(time.perf_counter() - t0)
                assert found, "no PONG"
            return out

        whole = asyncio.run(calls())
    finally:
        thread.stop()
    return statistics.median(rtt), statistics.median(whole)


def main(argv: list[str] | None = None) -> int:
    """Print the two medians in microseconds."""
    args = sys.argv[1:] if argv is None else argv
    samples = int(args[0]) if args else 500
    rtt, whole = measure(samples)
    print(f"discovery PING -> first PONG, loopback, median of {samples}: {rtt * 1e6:.0f} us")
    print(f"discover(first=True) whole call, median of {samples // 5}: {whole * 1e6:.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
