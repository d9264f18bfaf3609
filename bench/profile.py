"""Profiles that explain the table (one process, no sockets unless said).

    python -m bench.profile handshake  # CPU per handshake and side, key-ring size, top functions
    python -m bench.profile records    # per-record cost, 64 KiB records, page faults
    python -m bench.profile alloc      # the record path's allocations: glibc default vs tuned
    python -m bench.profile memory     # bytes per server-side Connection, handshake leftovers
    python -m bench.profile request    # Session.request() in one event loop: syscalls, top calls
    python -m bench.profile coalesce   # round trips today vs with writes coalesced (experiment)
    python -m bench.profile all
    python -m bench.profile layers FILE  # self time by layer of a cProfile dump, e.g. from
                                         # python -m bench.server --profile FILE

Each prints plain text.  Numbers are CPU time (``time.process_time``), so they
hold up better than wall time on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import resource
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pstp.protocol.connection import Connection
    from pstp.protocol.handshake import KeyRing


def _top(profiler: cProfile.Profile, n: int = 15, sort: str = "tottime") -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(n)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join(lines[start:])


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _ring(n: int, key: bytes) -> KeyRing:
    from pstp.protocol.handshake import KeyRing

    ring = KeyRing()
    ring.add("c", key)
    for i in range(n - 1):
        ring.add(f"other{i}", os.urandom(32))
    return ring


def _pair(key: bytes, ring: KeyRing, split: list[float] | None = None) -> tuple[Connection, ...]:
    """One sans-I/O handshake; ``split`` accumulates [client CPU, server CPU]."""
    from pstp.asyncio.connection import next_timestamp
    from pstp.protocol.config import Config
    from pstp.protocol.connection import Connection, Role

    clock = time.process_time
    t0 = clock()
    c = Connection(Role.CLIENT, Config(), pair_key=key, timestamp=next_timestamp(), own_id="c")
    c.start(0.0)
    hs_init = c.data_to_send()
    t1 = clock()
    s = Connection(Role.SERVER, Config(), keyring=ring, own_id="s")
    s.start(0.0)
    s.receive_data(hs_init, 0.0)
    hs_resp = s.data_to_send()
    t2 = clock()
    c.receive_data(hs_resp, 0.0)
    confirm = c.data_to_send()
    t3 = clock()
    s.receive_data(confirm, 0.0)
    t4 = clock()
    c.events_received()
    s.events_received()
    if split is not None:
        split[0] += (t1 - t0) + (t3 - t2)
        split[1] += (t2 - t1) + (t4 - t3)
    return c, s


def handshake(n: int = 1000) -> None:
    """CPU per full handshake on each side, by key-ring size, and where it goes."""
    key = os.urandom(32)
    print("== handshake (sans-I/O, CPU per handshake)")
    for size in (1, 12, 100):
        ring = _ring(size, key)
        for _ in range(50):
            _pair(key, ring)
        split = [0.0, 0.0]
        for _ in range(n):
            _pair(key, ring, split)
        print(
            f"key ring of {size:3d}: client {split[0] / n * 1e6:5.0f} µs, "
            f"server {split[1] / n * 1e6:5.0f} µs"
        )
    from cryptography.hazmat.primitives.asymmetric import ec

    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    t0 = time.process_time()
    for _ in range(n):
        ec.generate_private_key(ec.SECP256R1()).exchange(ec.ECDH(), peer)
    print(f"floor: P-256 keygen + ECDH alone {(time.process_time() - t0) / n * 1e6:.0f} µs")
    ring = _ring(1, key)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        _pair(key, ring)
    prof.disable()
    print(f"top functions, both sides, {n} handshakes:")
    print(_top(prof, 18))


def records(n: int = 20000) -> None:
    """Per-record cost on an established pair, and 64 KiB records with page faults."""
    from pstp.crypto.aead import Aead

    key = os.urandom(32)
    c, s = _pair(key, _ring(1, key))
    print("== records (sans-I/O, seal on one side and open on the other, one core)")
    small = b"x" * 64

    def session_data() -> None:
        c.send_data(small)
        s.receive_data(c.data_to_send(), 0.0)
        s.events_received()

    cid = c.open_channel("bench")
    s.receive_data(c.data_to_send(), 0.0)
    s.accept_channel(cid)
    s.events_received()
    c.receive_data(s.data_to_send(), 0.0)
    c.events_received()

    def channel(payload: bytes) -> Callable[[], None]:
        def step() -> None:
            c.send_channel_data(cid, payload)
            s.receive_data(c.data_to_send(), 0.0)
            s.events_received()
            s.acknowledge_channel_data(cid, len(payload))
            back = s.data_to_send()
            if back:
                c.receive_data(back, 0.0)
                c.events_received()

        return step

    def timed(fn: Callable[[], object], reps: int) -> tuple[float, int]:
        for _ in range(min(reps, 200)):
            fn()
        gc.collect()
        f0, t0 = _faults(), time.process_time()
        for _ in range(reps):
            fn()
        return (time.process_time() - t0) / reps, _faults() - f0

    t, _ = timed(session_data, n)
    print(f"64 B DATA record, seal + open: {t * 1e6:.1f} µs")
    t, _ = timed(channel(small), n)
    print(f"64 B CHANNEL_DATA record, seal + open + acknowledge: {t * 1e6:.1f} µs")
    aead = Aead("AESGCM", key)
    ad = bytes(13)
    t, _ = timed(lambda: aead.seal(1, ad, small), n)
    print(f"floor: AES-256-GCM seal of 64 B alone: {t * 1e6:.1f} µs")
    big = os.urandom(65536 - 4)
    reps = n // 4
    t, faults = timed(channel(big), reps)
    print(
        f"64 KiB CHANNEL_DATA records: {len(big) / t / 1e6:.0f} MB/s through seal + open, "
        f"{faults / reps:.1f} page faults per record ({faults / reps * 4096 / len(big):.1f} "
        f"per 4 KiB of payload)"
    )
    t, faults = timed(lambda: aead.seal(1, ad, big), reps)
    print(f"floor: AES-256-GCM seal of 64 KiB alone: {len(big) / t / 1e6:.0f} MB/s")
    prof = cProfile.Profile()
    prof.enable()
    step = channel(big)
    for _ in range(reps):
        step()
    prof.disable()
    print(f"top functions, {reps} records of 64 KiB:")
    print(_top(prof, 14))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def memory_one(what: str, n: int = 3000) -> float:
    """KiB per object for one kind of object, measured in this (fresh) process."""
    from pstp.protocol.connection import Connection

    key = os.urandom(32)
    ring = _ring(1, key)
    if what == "dropped":
        original = Connection._established

        def established(self: Connection) -> None:
            original(self)
            self._responder = None  # HandshakeState, ephemeral EC key, Noise AEAD objects
            self._initiator = None

        Connection._established = established  # type: ignore[method-assign]
    make: Callable[[], object]
    if what in ("as-built", "dropped"):
        for _ in range(50):
            _pair(key, ring)

        def make() -> object:
            return _pair(key, ring)[1]
    elif what == "aesgcm":
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        def make() -> object:
            return AESGCM(os.urandom(32))
    else:
        from cryptography.hazmat.primitives.asymmetric import ec

        def make() -> object:
            return ec.generate_private_key(ec.SECP256R1())

    gc.collect()
    r0 = _rss_kib()
    keep = [make() for _ in range(n)]
    gc.collect()
    per = (_rss_kib() - r0) / n
    del keep
    return per


def memory() -> None:
    """Bytes per established server-side Connection, and what dropping handshake state saves.

    Each figure comes from a fresh process, so freed memory from one does not
    flatter the next.
    """
    import subprocess

    print("== memory (RSS per object, each in a fresh process; no sockets or asyncio)")
    labels = {
        "as-built": "server-side Connection, established, as built",
        "dropped": "same, handshake objects dropped once established (experiment)",
        "aesgcm": "one AESGCM object (OpenSSL context)",
        "eckey": "one P-256 private key",
    }
    for what, label in labels.items():
        out = subprocess.run(
            [sys.executable, "-m", "bench.profile", "memory-one", what],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        print(f"{label}: {float(out):.1f} KiB")


#: The record path's allocations for one 64 KiB record, in a process that imports
#: nothing else (so the buffers sit at the top of the heap, the case glibc trims).
_ALLOC_CODE = """
import os, resource, time
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
body, aead, nonce, hdr = os.urandom(65532), AESGCM(os.urandom(32)), bytes(12), bytes(13)
def record():
    data = b"\\0\\0\\0\\1" + body        # encode_channel_data: channel id + data
    plain = b"\\x11" + data              # RecordSender._seal: inner type + body
    frame = hdr + aead.encrypt(nonce, plain, hdr)   # aad + ciphertext
    sealed = bytes(memoryview(frame)[13:])        # RecordReceiver.open: bytes(view[hdr_end:])
    out = aead.decrypt(nonce, sealed, hdr)
    return out[1:]                        # inner type split
for _ in range(200):
    record()
n = 5000
f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
for _ in range(n):
    record()
t = (time.process_time() - t0) / n
f = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n
print(f"{t * 1e6:.0f} µs per 64 KiB record, {f:.0f} page faults per record")
"""


def alloc() -> None:
    """The record path's allocation pattern alone, under glibc's default and tuned malloc."""
    import subprocess

    from bench.run import MALLOC_TUNED

    print("== alloc: one 64 KiB record's buffers (id+data, type+body, encrypt, header+ct,")
    print("   body copy, decrypt, type strip), in a bare process")
    for label, env in (("glibc defaults", {}), ("MALLOC_TUNED  ", MALLOC_TUNED)):
        out = subprocess.run(
            [sys.executable, "-c", _ALLOC_CODE],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **env},
        ).stdout
        print(f"{label}: {out.strip()}")


_CRYPTO_C = (
    "AESGCM",
    "HMAC",
    "HKDF",
    "exchange",
    "generate_private_key",
    "from_public_bytes",
    "from_encoded_point",
    "public_bytes",
)


def _by_layer(stats: pstats.Stats) -> dict[str, float]:
    """Share of busy self time per layer (time blocked in epoll is left out).

    cProfile counts wall time, so a call during which the process was
    descheduled (a ``send`` that woke the peer on a busy machine) looks long.
    """
    layers: dict[str, float] = {}
    total = 0.0
    for (path, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        tottime = row[2]
        if "epoll" in name:
            continue
        total += tottime
        if "/pstp/asyncio/" in path:
            layer = "pstp.asyncio (driver)"
        elif "/pstp/" in path:
            layer = "pstp core (protocol, wire, crypto glue)"
        elif any(c in name for c in _CRYPTO_C):
            layer = "cryptography C calls (AEAD, HMAC, ECDH)"
        elif "_socket.socket" in name or "socket.close" in name:
            layer = "socket system calls"
        elif "/asyncio/" in path or "_contextvars" in name:
            layer = "asyncio event loop"
        elif "/cryptography/" in path:
            layer = "cryptography Python wrappers"
        else:
            layer = "other (enum, dict, abc, builtins, ...)"
        layers[layer] = layers.get(layer, 0.0) + tottime
    return {k: v / total for k, v in sorted(layers.items(), key=lambda kv: -kv[1])}


def request(n: int = 3000) -> None:
    """Session.request() with client and server in one event loop: writes and top functions."""
    from bench.server import _echo
    from pstp.asyncio.client import connect
    from pstp.asyncio.server import serve

    async def main() -> None:
        key = os.urandom(32)
        server = await serve(
            None, "127.0.0.1", 0, keyring=_ring(1, key), own_id="s", handlers={"echo": _echo}
        )
        session = await connect("127.0.0.1", server.port, pair_key=key, device_id="s")
        payload = b"x" * 64
        for _ in range(200):
            await session.request("echo", payload)
        t0 = time.process_time()
        for _ in range(n):
            await session.request("echo", payload)
        cpu = (time.process_time() - t0) / n
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            await session.request("echo", payload)
        prof.disable()
        await session.close()
        await server.close()
        stats = pstats.Stats(prof)
        counts = {
            name: int(stats.stats[k][1])  # type: ignore[attr-defined]
            for k in stats.stats  # type: ignore[attr-defined]
            for name in ("send", "recv", "_seal", "_run_once", "_schedule_timer", "call_at")
            if k[2] == name or k[2] == f"<method '{name}' of '_socket.socket' objects>"
        }
        print("== request (client and server in one event loop, 64 B echo)")
        print(f"CPU per request, both sides together: {cpu * 1e6:.0f} µs")
        print("per request: " + ", ".join(f"{k} x{v / n:.1f}" for k, v in sorted(counts.items())))
        print("self time by layer (cProfile inflates Python-heavy layers alike):")
        for layer, share in _by_layer(stats).items():
            print(f"  {layer:40s} {share:5.1%}")
        print(_top(prof, 18))

    asyncio.run(main())


def coalesce(rounds: int = 3, reps: int = 500) -> None:
    """Round trips with today's driver and with writes coalesced per loop iteration.

    Server and client run in separate processes, both patched or both not
    (bench.experiments.coalesce_writes), alternating so load elsewhere hits both.
    """
    from bench.common import ServerProcess, make_keys, median, run_worker

    keys = make_keys(1)
    results: dict[str, dict[str, list[float]]] = {"today": {}, "coalesced": {}}
    for _ in range(rounds):
        for label, flag in (("today", []), ("coalesced", ["--coalesce"])):
            with ServerProcess(keys, "--session-echo", *flag) as srv:
                r = run_worker(
                    "bench.client", "rtt", "--port", srv.port, "--reps", reps, *flag, keys=keys
                )
            for k, v in r.items():
                results[label].setdefault(k, []).append(median(v))
    print("== coalesce (64 B round trips, separate processes, median of medians)")
    for label, res in results.items():
        print(f"{label:9s}: " + ", ".join(f"{k} {median(v) * 1e6:.0f} µs" for k, v in res.items()))


def main() -> None:
    """Run the chosen profiles."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument(
        "what",
        choices=[
            "handshake",
            "records",
            "alloc",
            "memory",
            "request",
            "coalesce",
            "all",
            "layers",
            "memory-one",
        ],
        default="all",
    )
    parser.add_argument("arg", nargs="?", default="")
    args = parser.parse_args()
    if args.what == "memory-one":
        print(memory_one(args.arg))
        return
    if args.what == "layers":
        stats = pstats.Stats(args.arg)
        for layer, share in _by_layer(stats).items():
            print(f"{layer:40s} {share:5.1%}")
        stats.strip_dirs().sort_stats("tottime").print_stats(20)
        return
    todo = (
        ["handshake", "records", "alloc", "memory", "request", "coalesce"]
        if args.what == "all"
        else [args.what]
    )
    fns: dict[str, Callable[[], None]] = {
        "handshake": handshake,
        "records": records,
        "alloc": alloc,
        "memory": memory,
        "request": request,
        "coalesce": coalesce,
    }
    for name in todo:
        fns[name]()
        print()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
