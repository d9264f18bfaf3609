"""Helpers shared by the benchmark orchestrator and its worker processes.

Secrets never travel in argv (which ``ps`` shows to every user): a worker gets
its pair keys from the environment variable :data:`KEYS_ENV`, and a server
from the first line of its standard input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

#: The repository root (bench/ lives beside src/).
ROOT = Path(__file__).resolve().parent.parent

#: Environment variable carrying a worker's pair keys: ``id=hex,id=hex,...``.
KEYS_ENV = "PSTP_BENCH_KEYS"

#: The device id every benchmark server states.
SERVER_ID = "bench-server"

#: Loopback only: benchmark traffic never leaves this machine.
HOST = "127.0.0.1"

T = TypeVar("T")


# -- keys -----------------------------------------------------------------------


def make_keys(n: int, prefix: str = "c") -> dict[str, bytes]:
    """``n`` fresh pair keys named ``{prefix}0``, ``{prefix}1``, ..."""
    return {f"{prefix}{i}": os.urandom(32) for i in range(n)}


def encode_keys(keys: Mapping[str, bytes]) -> str:
    """Encode keys for :data:`KEYS_ENV` or a server's stdin line."""
    return ",".join(f"{name}={key.hex()}" for name, key in keys.items())


def decode_keys(text: str) -> dict[str, bytes]:
    """Inverse of :func:`encode_keys`."""
    out: dict[str, bytes] = {}
    for item in text.strip().split(","):
        if item:
            name, _, hexkey = item.partition("=")
            out[name] = bytes.fromhex(hexkey)
    return out


def keys_from_env() -> dict[str, bytes]:
    """The keys a worker was given in :data:`KEYS_ENV`."""
    return decode_keys(os.environ.get(KEYS_ENV, ""))


# -- processes ------------------------------------------------------------------


def child_env(keys: Mapping[str, bytes] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a worker: bench importable, keys (if any) attached."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    env.pop(KEYS_ENV, None)
    if keys:
        env[KEYS_ENV] = encode_keys(keys)
    env.update(extra)
    return env


def python_cmd(module: str, *args: object) -> list[str]:
    """``[sys.executable, -m, module, *args]`` (the real interpreter, not a shim)."""
    return [sys.executable, "-m", module, *(str(a) for a in args)]


def run_worker(
    module: str,
    *args: object,
    keys: Mapping[str, bytes] | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Run a worker to completion and return the JSON object on its last stdout line.

    Raises:
        RuntimeError: the worker failed or printed no JSON.
    """
    proc = subprocess.run(
        python_cmd(module, *args),
        env=child_env(keys),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return parse_result(proc.returncode, proc.stdout, proc.stderr, module)


def parse_result(code: int | None, out: str, err: str, what: str) -> dict[str, Any]:
    """The JSON result a worker printed last, or a RuntimeError with its stderr."""
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if code != 0 or not lines:
        raise RuntimeError(f"{what} failed (exit {code}): {err.strip()[-800:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def spawn_worker(
    module: str,
    *args: object,
    keys: Mapping[str, bytes] | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start a worker whose stdin we hold (closing it tells the worker to stop).

    ``env`` adds variables to the worker's environment.
    """
    return subprocess.Popen(
        python_cmd(module, *args),
        env=child_env(keys, **(env or {})),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(stream: IO[str], timeout: float, proc: subprocess.Popen[str] | None = None) -> str:
    """Read one line from a child's pipe, giving up after ``timeout`` seconds.

    Raises:
        RuntimeError: nothing came in time, or the child exited.
    """
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise RuntimeError(f"no answer from child within {timeout:.0f} s")
        line = stream.readline()
    finally:
        sel.close()
    if not line:
        err = proc.stderr.read() if proc is not None and proc.stderr is not None else ""
        raise RuntimeError(f"child exited early: {err.strip()[-800:]}")
    return line.strip()


def stop_child(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Close the child's stdin (its signal to stop) and wait; kill it (by pid) if stuck."""
    with contextlib.suppress(Exception):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class ServerProcess:
    """A PSTP server in its own process (``python -m bench.server``).

    Args:
        keys: the pair keys it accepts (sent on its stdin, never in argv).
        args: extra command-line options for bench.server.
        env: extra environment variables for it.
    """

    def __init__(
        self, keys: Mapping[str, bytes], *args: object, env: Mapping[str, str] | None = None
    ) -> None:
        self.proc = spawn_worker("bench.server", *args, env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(encode_keys(keys) + "\n")
        self.proc.stdin.flush()
        ready = read_line(self.proc.stdout, 30.0, self.proc).split()
        if ready[:1] != ["READY"]:
            raise RuntimeError(f"bench.server said {ready!r}")
        self.port = int(ready[1])
        self.pid = self.proc.pid

    def command(self, line: str, timeout: float = 30.0) -> str:
        """Send a command line to the server and return its one-line answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return read_line(self.proc.stdout, timeout, self.proc)

    def close(self) -> None:
        """Stop the server."""
        stop_child(self.proc)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- measuring ------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    if not values:
        return float("nan")
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def raise_nofile(want: int = 1 << 20) -> int:
    """Raise RLIMIT_NOFILE's soft limit as far as the hard limit allows; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_status_kib(pid: int, field: str = "VmRSS") -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS by default)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def pss_kib(pid: int) -> int:
    """Proportional set size from /proc/PID/smaps_rollup (shared pages split fairly)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise KeyError("Pss")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Minor page faults a process has taken so far (each one zero-fills a fresh page)."""
    return int(_stat_fields(pid)[7])


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` leaves the elapsed seconds in ``t[0]``."""
    out = [0.0]
    start = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - start


def run_async(main: Callable[[], Coroutine[Any, Any, T]], use_uvloop: bool = False) -> T:
    """Run ``main()`` on a fresh loop: uvloop's if asked (and installed), else asyncio's."""
    factory = None
    if use_uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def emit(result: Mapping[str, Any]) -> None:
    """Print a worker's result as one JSON line (the orchestrator reads the last one)."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def have_uvloop() -> bool:
    """True if uvloop can be imported."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
