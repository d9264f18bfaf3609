"""The smallest PSTP client: connect, one request, exit (timed as a fresh process).

    PSTP_BENCH_KEYS=id=hex python -m bench.once PORT

It imports nothing from the harness, so its start-up cost is Python's and PSTP's.
"""

from __future__ import annotations

import asyncio
import os
import sys


async def _main(port: int) -> None:
    import pstp

    name, _, hexkey = os.environ["PSTP_BENCH_KEYS"].split(",")[0].partition("=")
    session = await pstp.connect(
        "127.0.0.1", port, pair_key=bytes.fromhex(hexkey), device_id="bench-server", own_id=name
    )
    reply = await session.request("echo", b"ping")
    await session.close()
    if reply != b"ping":
        raise SystemExit("bad reply")


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1])))
