"""The port-forwarding rows (``python -m bench --only forward``): ``pstp forward`` vs ``ssh -L``.

Everything is on loopback and in one run: a target process (``python -m
bench.forward targets``) serves a bulk source and a 64 B echo on two ports; a real
``pstp serve`` daemon (its policy allows exactly those two targets) and a real
``pstp forward bench-home L1:127.0.0.1:SRC L2:127.0.0.1:ECHO`` client process carry
them, and beside them ``ssh -N -L L3:127.0.0.1:SRC -L L4:127.0.0.1:ECHO`` through the
bench's private sshd (``bench.sshpeer``: aes256-gcm, curve25519-sha256).  The
client workers of this module then reach the targets through each forward and
straight (the reference rows), taking turns:

* **bulk**: the client sends an 8-byte length N, the source writes N bytes from a
  preallocated 4 MiB buffer (``socket.sendall`` of memoryviews, so the source is far
  faster than any forward), the client reads them with ``recv_into``; timed from
  ``connect`` to the last byte;
* **rtt**: 64 B written, 64 B read back, on one connection (``TCP_NODELAY``), after
  20 warm-up round trips;
* **idle**: N connections opened through a forward, one 64 B echo on each (so the
  whole path, forward to target, is up), then held open while the orchestrator reads
  the resident memory of ``pstp serve`` (and of sshd's processes for ``ssh -L``).

Beside the real pair, three more ``pstp serve`` + ``pstp forward`` pairs run the
bulk and round-trip rows as experiments (nothing in ``src/`` changes): with
``bench.experiments.buffered_splice_reads`` (the TCP side read into a reused buffer
instead of a StreamReader), with glibc's malloc thresholds raised
(``bench.run.MALLOC_TUNED``), and on asyncio's own loop instead of uvloop.  CPU time
per GB and per round trip comes from /proc/PID/task/*/schedstat (nanoseconds), page
faults from /proc/PID/stat.

Workers::

    python -m bench.forward targets                  # prints "READY SRC ECHO"; until stdin ends
    python -m bench.forward bulk --port P --size N   # {"bytes": N, "times": [...]}
    python -m bench.forward rtt --port P --reps N [--wait]  # {"times": [...]}
    python -m bench.forward idle --port P --count N  # {"opened": N}; holds them until stdin ends
    python -m bench.forward profile [bulk|rtt] [--tool perf]  # both PSTP processes, profiled
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    HOST,
    child_env,
    emit,
    free_port,
    median,
    proc_status_kib,
    python_cmd,
    raise_nofile,
    read_line,
    run_worker,
    spawn_worker,
    stop_child,
)

if TYPE_CHECKING:
    from bench.run import Peers, Plan, Row

MiB = 1 << 20
KiB = 1 << 10
#: The source's buffer: written again and again (random, so nothing could compress it).
SOURCE_BUFFER = 4 * MiB
#: The client's receive buffer.
READ_BUFFER = 4 * MiB
ECHO_SIZE = 64


# -- the targets ----------------------------------------------------------------------


def _serve(sock: socket.socket, handle: Any) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _source(conn: socket.socket, buf: memoryview) -> None:
    """Read an 8-byte length, write that many bytes, half-close, wait for the client's end."""
    with conn:
        head = b""
        while len(head) < 8:
            got = conn.recv(8 - len(head))
            if not got:
                return
            head += got
        (left,) = struct.unpack("!Q", head)
        try:
            while left:
                n = min(left, len(buf))
                conn.sendall(buf[:n])
                left -= n
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
        except OSError:
            return


def _echo(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            return


def targets_worker() -> None:
    """Serve the bulk source and the echo (a thread per connection) until stdin ends."""
    raise_nofile()
    buf = memoryview(os.urandom(SOURCE_BUFFER))
    socks = []
    for handle in (lambda c: _source(c, buf), _echo):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, 0))
        s.listen(1024)
        socks.append(s)
        threading.Thread(target=_serve, args=(s, handle), daemon=True).start()
    print("READY", *(s.getsockname()[1] for s in socks), flush=True)
    sys.stdin.read()


# -- the client workers ------------------------------------------------------------------


def bulk_worker(port: int, size: int, reps: int) -> dict[str, Any]:
    """Download ``size`` bytes from the source through ``port``, ``reps`` times."""
    buf = bytearray(READ_BUFFER)
    view = memoryview(buf)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        with socket.create_connection((HOST, port)) as s:
            s.sendall(struct.pack("!Q", size))
            got = 0
            while got < size:
                n = s.recv_into(view)
                if not n:
                    raise RuntimeError(f"the source ended after {got} of {size} bytes")
                got += n
            times.append(time.perf_counter() - t0)
            s.shutdown(socket.SHUT_WR)
            if s.recv(1):
                raise RuntimeError("the source sent more than asked")
    return {"bytes": size, "times": times}


def _echo_once(s: socket.socket, payload: bytes) -> None:
    s.sendall(payload)
    got = 0
    while got < len(payload):
        data = s.recv(len(payload) - got)
        if not data:
            raise RuntimeError("the echo ended")
        got += len(data)


def rtt_worker(port: int, reps: int, warmup: int = 20, wait: bool = False) -> dict[str, Any]:
    """64 B round trips through ``port`` on one connection.

    With ``wait``, the worker says ``READY`` once connected and warmed up and starts
    when a line comes on stdin, so that the caller can measure the round trips alone.
    """
    payload = os.urandom(ECHO_SIZE)
    times = []
    with socket.create_connection((HOST, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(warmup):
            _echo_once(s, payload)
        if wait:
            print("READY", flush=True)
            sys.stdin.readline()
        for _ in range(reps):
            t0 = time.perf_counter()
            _echo_once(s, payload)
            times.append(time.perf_counter() - t0)
    return {"times": times}


def _rtt_measured(
    port: int, reps: int, pids: dict[str, list[int]]
) -> tuple[list[float], dict[str, float]]:
    """Round trips through ``port`` and the CPU seconds ``pids`` used during them alone."""
    proc = spawn_worker("bench.forward", "rtt", "--port", port, "--reps", reps, "--wait")
    try:
        assert proc.stdout is not None and proc.stdin is not None
        said = read_line(proc.stdout, 60, proc)
        if said != "READY":
            raise RuntimeError(f"bench.forward rtt said {said!r}")
        c0 = {k: _cpu(v) for k, v in pids.items()}
        proc.stdin.write("go\n")
        proc.stdin.flush()
        result = json.loads(read_line(proc.stdout, 120, proc))
        used = {k: _cpu(v) - c0[k] for k, v in pids.items()}
    finally:
        stop_child(proc)
    return result["times"], used


def idle_worker(port: int, count: int) -> None:
    """Open ``count`` connections, echo once on each, report, hold them until stdin ends."""
    raise_nofile()
    payload = os.urandom(ECHO_SIZE)
    conns = []
    t0 = time.perf_counter()
    for _ in range(count):
        s = socket.create_connection((HOST, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _echo_once(s, payload)
        conns.append(s)
    emit({"opened": len(conns), "seconds": time.perf_counter() - t0})
    sys.stdin.read()
    for s in conns:
        s.close()


# -- the processes: targets, pstp serve + pstp forward, ssh -L ---------------------------


def _wait_listening(port: int, proc: subprocess.Popen[Any], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {port}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def targets() -> Iterator[tuple[int, int, subprocess.Popen[str]]]:
    """The targets process: (bulk source port, echo port, process)."""
    proc = spawn_worker("bench.forward", "targets")
    try:
        assert proc.stdout is not None
        said = read_line(proc.stdout, 30, proc).split()
        if said[:1] != ["READY"]:
            raise RuntimeError(f"bench.forward targets said {said!r}")
        yield int(said[1]), int(said[2]), proc
    finally:
        stop_child(proc)


@dataclass
class PstpForward:
    """A ``pstp serve`` daemon and a ``pstp forward`` client process carrying two targets."""

    daemon: subprocess.Popen[str]
    client: subprocess.Popen[str]
    ports: list[int] = field(default_factory=list)  # local ports, in the targets' order
    log: Path | None = None


def _pstp_cmd(*args: str, uvloop: bool = True, patch: str | None = None) -> list[str]:
    """``python -m pstp ARGS``, or the same after an experiment: uvloop hidden (the CLI
    then runs asyncio's own loop) or ``bench.experiments.PATCH()`` applied first."""
    if uvloop and patch is None:
        return python_cmd("pstp", *args)
    code = "import sys\n"
    if not uvloop:
        code += "import pstp.asyncio.runner as r\nr.uvloop_available = lambda: False\n"
    if patch is not None:
        code += f"from bench.experiments import {patch}\n{patch}()\n"
    code += "from pstp.cli.main import main\nsys.exit(main())\n"
    return [sys.executable, "-c", code, *args]


@contextlib.contextmanager
def pstp_forward(
    work: Path,
    target_ports: list[int],
    env: dict[str, str] | None = None,
    uvloop: bool = True,
    patch: str | None = None,
) -> Iterator[PstpForward]:
    """``pstp serve`` ("bench-home": policy ``forward`` = the targets) and ``pstp forward
    bench-home L:127.0.0.1:T ...`` ("bench-phone"), both real CLI processes.

    ``env`` adds variables to both processes' environment; ``uvloop=False`` runs both on
    asyncio's own loop (the CLI uses uvloop whenever it is installed); ``patch`` names a
    function of bench.experiments both call first: experiments.
    """
    from pstp.settings import add_peer, create

    key = os.urandom(32)
    port = free_port()
    home = work / "home" / "pstp.toml"
    create(home, "bench-home", listen=f"{HOST}:{port}")
    add_peer(home, "bench-phone", key)
    allowed = ", ".join(f'"{HOST}:{p}"' for p in target_ports)
    text = home.read_text().replace("discovery = true", "discovery = false")
    text += f"\n[peers.bench-phone.policy]\nforward = [{allowed}]\n"
    home.write_text(text)
    phone = work / "phone" / "pstp.toml"
    create(phone, "bench-phone", listen=f"{HOST}:1")
    add_peer(phone, "bench-home", key, address=f"{HOST}:{port}")
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        err = stack.enter_context(open(logs / "serve.log", "w"))
        daemon = subprocess.Popen(
            _pstp_cmd("serve", uvloop=uvloop, patch=patch),
            env=child_env(None, PSTP_CONFIG=str(home), **(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        stack.callback(_terminate, daemon)
        assert daemon.stdout is not None
        if "serving" not in read_line(daemon.stdout, 30, daemon):
            raise RuntimeError("pstp serve did not start")
        local = [free_port() for _ in target_ports]
        specs = [f"{lp}:{HOST}:{tp}" for lp, tp in zip(local, target_ports, strict=True)]
        ferr = stack.enter_context(open(logs / "forward.log", "w"))
        client = subprocess.Popen(
            _pstp_cmd("forward", "bench-home", *specs, uvloop=uvloop, patch=patch),
            env=child_env(None, PSTP_CONFIG=str(phone), **(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=ferr,
            text=True,
        )
        stack.callback(_terminate, client)
        try:
            said = _read_lines(client, len(specs), 30)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {(logs / 'forward.log').read_text()[-400:]}") from None
        if not all(line.startswith("forwarding") for line in said):
            raise RuntimeError(f"pstp forward said {said!r}")
        yield PstpForward(daemon, client, local, logs)


def _read_lines(proc: subprocess.Popen[str], n: int, timeout: float) -> list[str]:
    """``n`` lines from a child's stdout (read_line would miss a second line already
    in the text buffer: select sees only the descriptor)."""
    import selectors

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while data.count(b"\n") < n:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise RuntimeError(f"no answer from child within {timeout:.0f} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"child exited early ({proc.poll()})")
            data += chunk
    return [line.strip() for line in data.decode().splitlines()][:n]


def _terminate(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def ssh_forward(peers: Peers, target_ports: list[int]) -> Iterator[tuple[list[int], int]]:
    """``ssh -N -L L:127.0.0.1:T ...`` through the private sshd: (local ports, ssh's pid)."""
    assert peers.sshd is not None
    local = [free_port() for _ in target_ports]
    opts = []
    for lp, tp in zip(local, target_ports, strict=True):
        opts += ["-L", f"{HOST}:{lp}:{HOST}:{tp}"]
    cmd = peers.sshd.ssh()
    # `ssh ... -N -L ... root@127.0.0.1`: the options go before the destination.
    at = cmd.index(f"root@{HOST}")
    cmd[at:at] = ["-N", "-o", "ExitOnForwardFailure=yes", *opts]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(local[-1], proc, "ssh -L", 20)
        yield local, proc.pid
    finally:
        _terminate(proc)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                out += kids
                todo += kids
    return out


def _cpu(pids: list[int]) -> float:
    """CPU seconds of ``pids`` so far, to the nanosecond: the sum of their threads'
    /proc/PID/task/TID/schedstat (clock ticks, 10 ms, are too coarse for a batch of
    round trips); a thread that has ended no longer counts, so only long-lived
    threads' processes are measured with it."""
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
    return total / 1e9


def _rss(pids: list[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, KeyError):
            total += proc_status_kib(p)
    return total


# -- the orchestrator's part -------------------------------------------------------------

#: The paths compared, in the order they take turns.  The experiments are more
#: ``pstp serve`` + ``pstp forward`` pairs: with bench.experiments.buffered_splice_reads,
#: with glibc's malloc thresholds raised (bench.run.MALLOC_TUNED), on asyncio's own loop.
PATHS = ("pstp", "ssh", "direct", "pstp-bufread", "pstp-malloc", "pstp-asyncio")
EXPERIMENTS = {
    "pstp-bufread": "TCP read into a reused buffer (experiment)",
    "pstp-malloc": "glibc malloc thresholds raised (experiment)",
    "pstp-asyncio": "asyncio's loop instead of uvloop (experiment)",
}


@dataclass
class Measured:
    """What a run of the forward rows found (lists hold one entry per repetition)."""

    rates: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    rtt: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    #: CPU seconds per GB of the bulk rows, by path and process.
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Minor page faults per GB (thousands), by path and process.
    faults: dict[str, dict[str, float]] = field(default_factory=dict)
    #: CPU µs per 64 B round trip, by path and process.
    rtt_cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    mem: dict[str, Any] = field(default_factory=dict)


def _idle_growth(
    port: int, count: int, pids_of: Any, settle: float = 1.0
) -> tuple[float, float, dict[str, Any]]:
    """(KiB per connection, seconds to open them, raw) for ``count`` idle connections.

    ``pids_of()`` gives {name: [pids]} of the processes whose VmRSS is summed; the
    first name is the one the figure is about, the others go in ``raw``.
    """
    # Warm-up: the paths a connection takes are loaded and their caches filled.
    warm = spawn_worker("bench.forward", "idle", "--port", port, "--count", 8)
    assert warm.stdout is not None
    read_line(warm.stdout, 60, warm)
    stop_child(warm)
    time.sleep(settle)
    before = {name: _rss(pids) for name, pids in pids_of().items()}
    proc = spawn_worker("bench.forward", "idle", "--port", port, "--count", count)
    try:
        assert proc.stdout is not None
        said = json.loads(read_line(proc.stdout, 240, proc))
        time.sleep(settle)
        after = {name: _rss(pids) for name, pids in pids_of().items()}
    finally:
        stop_child(proc, timeout=60)
    opened = said["opened"]
    raw = {name: {"before_kib": before[name], "after_kib": after[name]} for name in before}
    first = next(iter(before))
    return (after[first] - before[first]) / opened, said["seconds"], raw | {"opened": opened}


def _faults(pids: list[int]) -> int:
    from bench.common import minor_faults

    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            total += minor_faults(p)
    return total


def bench_forward(plan: Plan, peers: Peers, extra: dict[str, Any]) -> list[Row]:
    """``pstp forward`` beside ``ssh -L`` and direct TCP: bulk, 64 B round trips, memory."""
    from bench.run import MALLOC_TUNED, log

    nbytes = plan.bulk_bytes  # 1 GiB (256 MiB with --quick)
    reps = plan.bulk_reps
    rounds = 4
    idle_count = 100 if plan.quick else 400
    m = Measured()
    work = Path(tempfile.mkdtemp(prefix="pstp-bench-fwd-"))
    try:
        with targets() as (src, echo, _), contextlib.ExitStack() as stack:
            fwd = stack.enter_context(pstp_forward(work / "pstp", [src, echo]))
            ports = {"pstp": fwd.ports, "direct": [src, echo]}
            procs: dict[str, dict[str, Any]] = {
                "pstp": {
                    "pstp serve": lambda: [fwd.daemon.pid],
                    "pstp forward": lambda: [fwd.client.pid],
                },
                "direct": {},
            }
            if peers.sshd is not None and peers.sshd.proc is not None:
                ssh_ports, ssh_pid = stack.enter_context(ssh_forward(peers, [src, echo]))
                sshd_pid = peers.sshd.proc.pid
                ports["ssh"] = ssh_ports
                procs["ssh"] = {
                    "sshd": lambda: descendants(sshd_pid),
                    "ssh": lambda: [ssh_pid],
                }
            for name, env, uv, patch in (
                ("pstp-bufread", None, True, "buffered_splice_reads"),
                ("pstp-malloc", MALLOC_TUNED, True, None),
                ("pstp-asyncio", None, False, None),
            ):
                if plan.quick or (name == "pstp-asyncio" and not _uvloop_installed()):
                    continue  # --quick: no experiments; without uvloop, the default is asyncio
                f = stack.enter_context(
                    pstp_forward(work / name, [src, echo], env=env, uvloop=uv, patch=patch)
                )
                ports[name] = f.ports
                procs[name] = {
                    "pstp serve": lambda f=f: [f.daemon.pid],
                    "pstp forward": lambda f=f: [f.client.pid],
                }
            paths = [p for p in PATHS if p in ports]
            log(
                "forward: bulk download through "
                + " / ".join(paths)
                + f", {nbytes // MiB} MiB x {reps}"
            )
            cpu = {p: dict.fromkeys(procs[p], 0.0) for p in paths}
            flt = {p: dict.fromkeys(procs[p], 0.0) for p in paths}
            for _ in range(reps):
                for path in paths:
                    pids = {k: f() for k, f in procs[path].items()}
                    c0 = {k: _cpu(v) for k, v in pids.items()}
                    f0 = {k: _faults(v) for k, v in pids.items()}
                    size = nbytes if path in ("pstp", "ssh", "direct") else nbytes // 2
                    r = run_worker(
                        "bench.forward",
                        "bulk",
                        "--port",
                        ports[path][0],
                        "--size",
                        size,
                        timeout=600,
                    )
                    m.rates[path].append(r["bytes"] / r["times"][0] / 1e6)
                    gb = r["bytes"] / 1e9 * reps
                    for k, v in pids.items():
                        cpu[path][k] += (_cpu(v) - c0[k]) / gb
                        flt[path][k] += (_faults(v) - f0[k]) / gb / 1e3
            m.cpu, m.faults = cpu, flt
            log(f"forward: 64 B round trips, {plan.rtt_reps} per path in {rounds} batches")
            per = max(1, plan.rtt_reps // rounds)
            used = {p: dict.fromkeys(procs[p], 0.0) for p in paths}
            for _ in range(rounds):
                for path in paths:
                    pids = {k: f() for k, f in procs[path].items()}
                    times, spent = _rtt_measured(ports[path][1], per, pids)
                    m.rtt[path] += times
                    for k, v in spent.items():
                        used[path][k] += v / (per * rounds) * 1e6
            m.rtt_cpu = used
        # Memory on fresh processes: a daemon (or sshd session) that has carried the bulk
        # rows keeps freed heap resident, which new connections would reuse unseen.
        log(f"forward: memory per idle forwarded connection, {idle_count} connections")
        with targets() as (src, echo, _), contextlib.ExitStack() as stack:
            fresh = stack.enter_context(pstp_forward(work / "pstp-memory", [src, echo]))
            per_pstp, t_pstp, raw = _idle_growth(
                fresh.ports[1],
                idle_count,
                lambda: {"pstp serve": [fresh.daemon.pid], "pstp forward": [fresh.client.pid]},
            )
            m.mem["pstp"] = {"per_kib": per_pstp, "open_seconds": t_pstp, **raw}
            if peers.sshd is not None and peers.sshd.proc is not None:
                sshd_pid = peers.sshd.proc.pid
                others = set(descendants(sshd_pid))  # none once the first session has gone
                ssh_ports, ssh_pid = stack.enter_context(ssh_forward(peers, [src, echo]))
                per_ssh, t_ssh, raw = _idle_growth(
                    ssh_ports[1],
                    idle_count,
                    lambda: {
                        "sshd": [p for p in descendants(sshd_pid) if p not in others],
                        "ssh": [ssh_pid],
                    },
                )
                m.mem["ssh"] = {"per_kib": per_ssh, "open_seconds": t_ssh, **raw}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    extra["forward"] = {
        "bulk_mbps": {p: median(v) for p, v in m.rates.items() if v},
        "bulk_runs_mbps": {p: v for p, v in m.rates.items() if v},
        "rtt_us": {p: median(v) * 1e6 for p, v in m.rtt.items() if v},
        "rtt_p90_us": {p: _p90(v) * 1e6 for p, v in m.rtt.items() if v},
        "cpu_per_gb": m.cpu,
        "kfaults_per_gb": m.faults,
        "rtt_cpu_us": m.rtt_cpu,
        "memory": m.mem,
    }
    return forward_rows(m, nbytes, reps, rounds, plan.rtt_reps, idle_count, peers)


def _uvloop_installed() -> bool:
    from pstp.asyncio.runner import uvloop_available

    return uvloop_available()


def _p90(values: list[float]) -> float:
    from bench.run import p90

    return p90(values)


def forward_rows(
    m: Measured,
    nbytes: int,
    reps: int,
    rounds: int,
    rtt_reps: int,
    idle_count: int,
    peers: Peers,
) -> list[Row]:
    """The table rows of :func:`bench_forward`."""
    from bench.run import Row, ms_p90, verdict

    have_ssh = bool(m.rates["ssh"])
    skip = f"skipped: {peers.ssh_skip}"
    loop = "uvloop" if _uvloop_installed() else "asyncio's loop"

    def cost(path: str) -> str:
        return ", ".join(
            f"{k} {v:.2f} s ({m.faults[path][k]:.0f} k faults)"
            for k, v in m.cpu.get(path, {}).items()
        )

    def rtt_cost(path: str) -> str:
        return ", ".join(f"{k} {v:.0f}" for k, v in m.rtt_cpu.get(path, {}).items())

    def total(path: str) -> float:
        return sum(m.cpu.get(path, {}).values())

    def rtt_total(path: str) -> float:
        return sum(m.rtt_cpu.get(path, {}).values())

    def runs(path: str) -> str:
        return ", ".join(f"{v:.0f}" for v in m.rates[path])

    p_rate = median(m.rates["pstp"])
    d_rate = median(m.rates["direct"])
    rows = []
    bulk_note = (
        f"{nbytes // MiB} MiB downloaded from a local source (a thread writing a 4 MiB buffer "
        f"with sendall) through each path, {reps} times each, taking turns; timed from connect "
        f"to the last byte; real `pstp serve` and `pstp forward` processes (on {loop}, as the "
        f"CLI runs when it is installed); runs: pstp {runs('pstp')}"
        + (f", ssh -L {runs('ssh')}" if have_ssh else "")
        + f" MB/s. CPU per GB and minor page faults per GB: pstp: {cost('pstp')}"
        + (f"; ssh -L: {cost('ssh')}" if have_ssh else "")
    )
    if have_ssh:
        s_rate = median(m.rates["ssh"])
        rows.append(
            Row(
                "bulk download through the forward",
                f"{p_rate:.0f} MB/s",
                f"{s_rate:.0f} MB/s (ssh -L)",
                f"{p_rate / s_rate:.2f}x",
                "≥ 2x ssh -L",
                verdict(p_rate >= 2 * s_rate),
                bulk_note,
            )
        )
    else:
        rows.append(
            Row("bulk download through the forward", f"{p_rate:.0f} MB/s", skip, note=bulk_note)
        )
    rows.append(
        Row(
            "  same, direct TCP to the source",
            f"{d_rate:.0f} MB/s",
            ratio=f"pstp at {p_rate / d_rate:.2f}x",
            note="the ceiling: the same worker and source with no forward in between",
        )
    )
    for path, what in EXPERIMENTS.items():
        if m.rates[path]:
            rate = median(m.rates[path])
            rows.append(
                Row(
                    f"  pstp forward, {what}",
                    f"{rate:.0f} MB/s",
                    f"{p_rate:.0f} MB/s (pstp)",
                    f"{rate / p_rate:.2f}x; CPU {total(path):.2f} s/GB vs {total('pstp'):.2f}",
                    note=(
                        f"a second `pstp serve` + `pstp forward` pair, {nbytes // 2 // MiB} MiB "
                        f"per run, taking turns with the others; runs {runs(path)} MB/s; CPU "
                        f"per GB: {cost(path)}"
                    ),
                )
            )
    rtt = m.rtt
    rtt_note = (
        f"64 B written and read back on one connection through each path (TCP_NODELAY, "
        f"20 warm-up round trips), {rtt_reps} per path in {rounds} batches taking turns; the "
        f"target is a thread-per-connection echo. CPU µs per round trip (the timed ones alone, "
        f"from /proc schedstat): pstp: "
        f"{rtt_cost('pstp')}" + (f"; ssh -L: {rtt_cost('ssh')}" if have_ssh else "")
    )
    p_med = median(rtt["pstp"])
    if have_ssh:
        s_med = median(rtt["ssh"])
        rows.append(
            Row(
                "64 B round trip through the forward, median / p90",
                ms_p90(rtt["pstp"]),
                f"{ms_p90(rtt['ssh'])} (ssh -L)",
                f"{p_med / s_med:.2f}x",
                "≤ ssh -L",
                verdict(p_med <= s_med),
                rtt_note,
            )
        )
    else:
        rows.append(
            Row(
                "64 B round trip through the forward, median / p90",
                ms_p90(rtt["pstp"]),
                skip,
                note=rtt_note,
            )
        )
    rows.append(
        Row(
            "  same, direct TCP to the echo",
            ms_p90(rtt["direct"]),
            ratio=f"pstp +{(p_med - median(rtt['direct'])) * 1e6:.0f} µs",
        )
    )
    for path, what in EXPERIMENTS.items():
        if rtt[path]:
            rows.append(
                Row(
                    f"  pstp forward, {what}",
                    ms_p90(rtt[path]),
                    f"{ms_p90(rtt['pstp'])} (pstp)",
                    f"{median(rtt[path]) / p_med:.2f}x; CPU {rtt_total(path):.0f} µs vs "
                    f"{rtt_total('pstp'):.0f}",
                    note=f"CPU µs per round trip: {rtt_cost(path)}",
                )
            )
    mp = m.mem["pstp"]
    fwd_per = (mp["pstp forward"]["after_kib"] - mp["pstp forward"]["before_kib"]) / mp["opened"]
    mem_note = (
        f"a fresh `pstp serve` + `pstp forward` pair (not the one of the rows above, whose "
        f"heap the bulk rows grew); {mp['opened']} connections opened through it (one 64 B "
        f"echo on each, then idle), pstp serve's VmRSS "
        f"{mp['pstp serve']['before_kib'] / 1024:.1f} → "
        f"{mp['pstp serve']['after_kib'] / 1024:.1f} MiB (after a warm-up of 8 opened and "
        f"closed); pstp forward (the client) grew {fwd_per:.1f} KiB per connection; opening "
        f"them one after the other (connect, then one echo each) took "
        f"{mp['open_seconds'] / mp['opened'] * 1e3:.2f} ms each. Reference figures (not "
        "measured here): rathole 35.8 KiB, frp 113.7 KiB per connection"
    )
    peer = "-"
    if "ssh" in m.mem:
        mss = m.mem["ssh"]
        ssh_per = (mss["ssh"]["after_kib"] - mss["ssh"]["before_kib"]) / mss["opened"]
        peer = f"{mss['per_kib']:.1f} KiB (sshd)"
        mem_note += (
            f". Peer: VmRSS of the sshd processes of a fresh ssh -L session, "
            f"{mss['sshd']['before_kib'] / 1024:.1f} → {mss['sshd']['after_kib'] / 1024:.1f} "
            f"MiB for as many connections; the ssh client grew {ssh_per:.1f} KiB per connection; "
            f"opening took {mss['open_seconds'] / mss['opened'] * 1e3:.2f} ms each"
        )
    rows.append(
        Row(
            f"memory per forwarded connection, {idle_count} idle",
            f"{mp['per_kib']:.1f} KiB",
            peer,
            "-",
            "≤ 40 KiB",
            verdict(mp["per_kib"] <= 40),
            mem_note,
        )
    )
    return rows


# -- profile: where the time goes -------------------------------------------------------------

#: py-spy frames -> stage, innermost match first: (function name prefix, file part, stage).
_STAGES = (
    ("Aead.seal", "", "AES-GCM seal"),
    ("Aead.open", "", "AES-GCM open"),
    ("StreamReader.feed_data", "", "TCP in: StreamReader buffer (feed_data)"),
    ("StreamReaderProtocol.data_received", "", "TCP in: StreamReader buffer (feed_data)"),
    ("StreamReader.read", "", "TCP in: StreamReader.read (copy out)"),
    ("StreamWriter.write", "", "TCP out: StreamWriter.write (send)"),
    ("StreamWriter.drain", "", "TCP out: StreamWriter.write (send)"),
    ("encode_channel_data", "", "records out: framing, copies, join"),
    ("RecordSender.", "", "records out: framing, copies, join"),
    ("Connection._seal", "", "records out: framing, copies, join"),
    ("Connection.data_to_send", "", "records out: framing, copies, join"),
    ("Connection.send_channel_data", "", "records out: framing, copies, join"),
    ("SessionProtocol._flush", "", "session out: transport.write (send)"),
    ("RecordReceiver.", "", "records in: parsing, copies"),
    ("decode_channel_data", "", "records in: parsing, copies"),
    ("Connection.receive_data", "", "records in: parsing, copies"),
    ("Connection._on_record", "", "records in: parsing, copies"),
    ("", "pstp/", "pstp: session core, channels, splice"),
    ("", "asyncio/", "asyncio: tasks, futures, events"),
)
_LOOP_C = "event loop's own C code (socket reads, callbacks)"


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        func, _, where = frame.partition(" (")
        for prefix, part, stage in _STAGES:
            if func.startswith(prefix) and part in where:
                if stage.startswith("asyncio") and func.startswith("Runner.run"):
                    return _LOOP_C
                return stage
    return _LOOP_C


def _stages(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stage = _stage(stack.split(";"))
                out[stage] = out.get(stage, 0) + int(count)
    return out


#: perf symbols whose inclusive share (callers included) says where native time goes.
_PERF_SYMBOLS = (
    ("asm_exc_page_fault", "page faults (kernel, fresh memory zeroed in)"),
    ("__memmove_avx_unaligned_erms", "memmove (copies; its page faults included)"),
    ("_aesni_ctr32_ghash_6x", "AES-GCM (OpenSSL's AES-NI routine)"),
    ("entry_SYSCALL_64_after_hwframe", "system calls (socket reads/writes, epoll, brk)"),
    ("_PyEval_EvalFrameDefault", "Python bytecode interpreter (self time)"),
)


def _perf_shares(data: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(share by library, inclusive share of :data:`_PERF_SYMBOLS`) from a perf.data."""

    def report(*opts: str) -> list[tuple[float, str]]:
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "-g", "none", *opts],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        rows = []
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0].endswith("%") and not line.startswith("#"):
                with contextlib.suppress(ValueError):
                    rows.append((float(parts[0].rstrip("%")), line))
        return rows

    dsos = {}
    for pct, line in report("--no-children", "--sort", "dso"):
        dsos[line.split()[-1]] = pct
    syms = {}
    for pct, line in report("--children", "--sort", "sym"):
        name = line.split()[-1]
        if any(name == s for s, _ in _PERF_SYMBOLS) and name not in syms:
            syms[name] = pct
    return dsos, syms


def profile(what: str, size: int, reps: int, rate: int, tool: str) -> str:
    """py-spy (Python frames) or perf (native) of both PSTP processes during a bulk
    download or round trips through ``pstp forward``; plain text."""
    import signal

    from bench.startup import cpu_name

    exe = shutil.which(tool)
    if exe is None:
        return f"{tool} is not installed"
    work = Path(tempfile.mkdtemp(prefix="pstp-bench-fwdprof-"))
    names = ("pstp serve", "pstp forward")
    try:
        with targets() as (src, echo, _), pstp_forward(work, [src, echo]) as fwd:
            pids = (fwd.daemon.pid, fwd.client.pid)
            port = fwd.ports[0 if what == "bulk" else 1]
            args: list[object] = (
                ["bulk", "--port", port, "--size", size]
                if what == "bulk"
                else ["rtt", "--port", port, "--reps", reps]
            )
            warm = ["--size", 32 * MiB] if what == "bulk" else ["--reps", 200]
            run_worker("bench.forward", *args[:3], *warm)
            outs = [work / f"{tool}-{i}.out" for i in range(len(pids))]
            if tool == "py-spy":
                spy_opts = ["--rate", str(rate), "--format", "raw", "--nonblocking"]
                cmds = [
                    [exe, "record", "--pid", str(pid), *spy_opts, "--output", str(out)]
                    for pid, out in zip(pids, outs, strict=True)
                ]
            else:
                cmds = [
                    [exe, "record", "-F", str(rate), "-g", "-o", str(out), "-p", str(pid)]
                    for pid, out in zip(pids, outs, strict=True)
                ]
            spies = [
                subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for c in cmds
            ]
            time.sleep(1.5)  # attached
            c0 = [_cpu([p]) for p in pids]
            r = run_worker("bench.forward", *args, timeout=600)
            used = [_cpu([p]) - c for p, c in zip(pids, c0, strict=True)]
            for s in spies:
                s.send_signal(signal.SIGINT)
            for s in spies:
                s.wait(60)
            if tool == "py-spy":
                counts = [_stages(out) for out in outs]
            else:
                shares = [_perf_shares(out) for out in outs]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if what == "bulk":
        head = (
            f"bulk download of {size // MiB} MiB through pstp forward under {tool} ({rate} Hz): "
            f"{size / r['times'][0] / 1e6:.0f} MB/s; CPU s per GB: "
            + ", ".join(f"{n} {u / (size / 1e9):.2f}" for n, u in zip(names, used, strict=True))
        )
    else:
        head = (
            f"{reps} round trips of 64 B through pstp forward under {tool} ({rate} Hz): median "
            f"{median(r['times']) * 1e6:.0f} µs; CPU µs per round trip: "
            + ", ".join(f"{n} {u / reps * 1e6:.0f}" for n, u in zip(names, used, strict=True))
        )
    lines = [head, f"{cpu_name()}, load average {os.getloadavg()[0]:.2f}"]
    if tool == "py-spy":
        lines += [
            "shares of each process's busy samples by stage (py-spy sees Python frames only: "
            "time inside the event loop's C code, its socket reads included, is its own row)",
            "",
            f"{'stage':52} {names[0]:>12} {names[1]:>12}",
        ]
        stages = sorted(
            {k for c in counts for k in c}, key=lambda k: -sum(c.get(k, 0) for c in counts)
        )
        totals = [max(1, sum(c.values())) for c in counts]
        for stage in stages:
            cells = [f"{c.get(stage, 0) / t:12.1%}" for c, t in zip(counts, totals, strict=True)]
            lines.append(f"{stage:52} " + " ".join(cells))
        lines.append(f"{'samples':52} " + " ".join(f"{t:12d}" for t in totals))
        return "\n".join(lines)
    lines += ["shares of each process's perf samples", "", "by library (self time):"]
    dsos = sorted(
        {k for d, _ in shares for k in d}, key=lambda k: -sum(d.get(k, 0) for d, _ in shares)
    )
    lines.append(f"  {'':50} {names[0]:>12} {names[1]:>12}")
    for dso in dsos[:8]:
        lines.append(f"  {dso[:50]:50} " + " ".join(f"{d.get(dso, 0.0):11.1f}%" for d, _ in shares))
    lines.append("inclusive (with what they call):")
    for sym, what_ in _PERF_SYMBOLS:
        lines.append(
            f"  {what_[:50]:50} " + " ".join(f"{s.get(sym, 0.0):11.1f}%" for _, s in shares)
        )
    return "\n".join(lines)


def main() -> None:
    """Parse the subcommand and run it."""
    parser = argparse.ArgumentParser(prog="python -m bench.forward")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("targets", help="serve the bulk source and the echo until stdin ends")
    b = sub.add_parser("bulk", help="download N bytes from the source through PORT")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--size", type=int, default=1 << 30)
    b.add_argument("--reps", type=int, default=1)
    r = sub.add_parser("rtt", help="64 B round trips through PORT")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--reps", type=int, default=1000)
    r.add_argument("--wait", action="store_true", help="say READY, start on a line of stdin")
    i = sub.add_parser("idle", help="open N connections through PORT and hold them")
    i.add_argument("--port", type=int, required=True)
    i.add_argument("--count", type=int, default=400)
    pr = sub.add_parser("profile", help="py-spy both PSTP processes during bulk or rtt")
    pr.add_argument("what", choices=("bulk", "rtt"), nargs="?", default="bulk")
    pr.add_argument("--size", type=int, default=512 * MiB)
    pr.add_argument("--reps", type=int, default=3000)
    pr.add_argument("--rate", type=int, default=0, help="samples/s (py-spy 200, perf 999)")
    pr.add_argument("--tool", choices=("py-spy", "perf"), default="py-spy")
    args = parser.parse_args()
    if args.cmd == "profile":
        rate = args.rate or (200 if args.tool == "py-spy" else 999)
        print(profile(args.what, args.size, args.reps, rate, args.tool))
    elif args.cmd == "targets":
        targets_worker()
    elif args.cmd == "bulk":
        emit(bulk_worker(args.port, args.size, args.reps))
    elif args.cmd == "rtt":
        emit(rtt_worker(args.port, args.reps, wait=args.wait))
    elif args.cmd == "idle":
        idle_worker(args.port, args.count)


if __name__ == "__main__":
    main()
