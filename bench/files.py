"""File transfer benchmark: PSTP put/get beside scp, ``cat | ssh`` and asyncssh SFTP, one run.

    python -m bench.files                  # 1 GiB, 3 repetitions, data on /dev/shm
    python -m bench.files --size 256M --reps 2
    python -m bench.files --disk           # data on the disk: fsync and page cache count
    python -m bench.files --profile        # also cProfile both PSTP sides (tuned config)

Every PSTP transfer is verified and atomic: SHA-256 per 1 MiB chunk and a file
digest on both sides, a ``.part`` file, fsync, rename, directory fsync.  The
others are plain copies: scp (OpenSSH 9 speaks SFTP underneath), ``cat |
ssh`` (a single stream) and asyncssh's SFTP client; all use
``aes256-gcm@openssh.com`` against a private sshd on loopback
(:mod:`bench.sshpeer`).  The destination is deleted before each transfer, so
every one is a full copy (PSTP resumes and skips otherwise).

The PSTP daemon is the real one (:class:`pstp.daemon.app.Daemon`, policy,
audit) in its own process, with the protocol limits of each variant; the
client runs :func:`pstp.client.files.put` / ``get`` in another process and
times from opening the channel to its close (the session is already up).
One more row runs the ``pstp put`` / ``pstp get`` commands as fresh processes
(uvloop, 256 KiB records and a 4 MiB window on their side) against a daemon
with ``pstp serve``'s defaults (64 KiB records, 1 MiB window, uvloop if
installed): what a user gets today.
The SSH rows are timed as processes, so they include connection set-up:
``ssh host true`` is timed too and the table shows the stream rate with it
subtracted.  CPU seconds per GB of each PSTP process come from /proc.

Subcommands (used by the orchestrator, one JSON line each):

    python -m bench.files serve CONFIG [--max-record N] [--window N] [--profile F]
    python -m bench.files client {put,get} --port P --src S --dst D [--reps N] ...
    python -m bench.files sftp {put,get} --port P --key K --src S --dst D [--reps N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    child_env,
    cpu_seconds,
    emit,
    free_port,
    have_uvloop,
    keys_from_env,
    median,
    parse_result,
    python_cmd,
    read_line,
    run_async,
    stop_child,
)

_DOC = (__doc__ or "").split("\n")[0]
MiB = 1 << 20
KiB = 1 << 10
SERVER = "home"
CLIENT = "phone"

#: glibc malloc settings (as bench.run's MALLOC_TUNED): stop freed 256 KiB+ record
#: buffers from going back to the kernel and page-faulting in again.
MALLOC_TUNED = {
    "MALLOC_MMAP_THRESHOLD_": str(16 * MiB),
    "MALLOC_TRIM_THRESHOLD_": str(64 * MiB),
    "MALLOC_TOP_PAD_": str(16 * MiB),
}


@dataclass
class Variant:
    """Protocol limits for both PSTP processes."""

    name: str
    max_record: int
    window: int
    malloc: bool = False
    uvloop: bool = False


VARIANTS = [
    Variant("PSTP defaults (64 KiB records, 1 MiB window)", 64 * KiB, MiB),
    Variant("PSTP 256 KiB records, 4 MiB window", 256 * KiB, 4 * MiB),
    Variant("PSTP 256 KiB records, 4 MiB window, malloc tuned", 256 * KiB, 4 * MiB, True),
    Variant("PSTP ... + uvloop", 256 * KiB, 4 * MiB, malloc=True, uvloop=True),
]
#: What `pstp serve` runs with: default limits, uvloop when installed.
SERVE_DEFAULTS = Variant("pstp serve defaults", 64 * KiB, MiB, uvloop=have_uvloop())


# -- workers ------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Any:
    from pstp.protocol.config import Config

    return Config(
        max_record_size=args.max_record, channel_window=args.window, keepalive_interval=None
    )


async def _serve(args: argparse.Namespace) -> None:
    from pstp.daemon.app import Daemon
    from pstp.settings import load

    daemon = Daemon(load(args.config), config=_config(args))
    await daemon.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(f"READY {daemon.servers[0].port}", flush=True)
    await reader.read()  # until the orchestrator closes our stdin
    await daemon.close()


def serve_main(args: argparse.Namespace) -> None:
    """Run the daemon until standard input ends (optionally under cProfile)."""
    if not args.profile:
        run_async(lambda: _serve(args), use_uvloop=args.uvloop)
        return
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        run_async(lambda: _serve(args), use_uvloop=args.uvloop)
    finally:
        prof.disable()
        prof.dump_stats(args.profile)


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    from pstp.asyncio.client import connect
    from pstp.client.files import get, put

    key = keys_from_env()[CLIENT]
    session = await connect(
        HOST, args.port, pair_key=key, device_id=SERVER, own_id=CLIENT, config=_config(args)
    )
    times, sent = [], []
    cpu0 = time.process_time()
    async with session:
        for _ in range(args.reps):
            _remove(args.dst)
            if args.op == "put":
                summary = await put(session, [args.src], args.dst)
            else:
                summary = await get(session, [args.src], args.dst)
            assert summary.ok and summary.files == 1, summary
            times.append(summary.seconds)
            sent.append(summary.bytes_sent)
    return {"times": times, "bytes": sent, "cpu": time.process_time() - cpu0}


def client_main(args: argparse.Namespace) -> None:
    """Run the PSTP client worker (optionally under cProfile) and print its JSON line."""
    if not args.profile:
        emit(run_async(lambda: _client(args), use_uvloop=args.uvloop))
        return
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        result = run_async(lambda: _client(args), use_uvloop=args.uvloop)
    finally:
        prof.disable()
        prof.dump_stats(args.profile)
    emit(result)


async def _sftp(args: argparse.Namespace) -> dict[str, Any]:
    import asyncssh

    from bench.sshpeer import CIPHER, CLASSICAL_KEX

    times = []
    conn = await asyncssh.connect(
        HOST,
        args.port,
        username="root",
        client_keys=[args.key],
        known_hosts=None,
        encryption_algs=[CIPHER],
        kex_algs=[CLASSICAL_KEX],
        compression_algs=None,
        agent_path=None,
    )
    async with conn, conn.start_sftp_client() as sftp:
        for _ in range(args.reps):
            _remove(args.dst)
            t0 = time.perf_counter()
            if args.op == "put":
                await sftp.put(args.src, args.dst)
            else:
                await sftp.get(args.src, args.dst)
            times.append(time.perf_counter() - t0)
    return {"times": times}


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# -- orchestrator -------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: put and get rates (MB/s, medians) and notes."""

    what: str
    put: float | None = None
    get: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"[bench.files] {msg}", file=sys.stderr, flush=True)


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"([0-9]+)([KMG]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 1G, 256M)")
    return int(m[1]) * {"": 1, "K": KiB, "M": MiB, "G": 1 << 30}[m[2].upper()]


def _make_source(path: Path, size: int) -> str:
    """Write ``size`` incompressible bytes (a 64 MiB random block repeated); return its SHA-256."""
    block = os.urandom(min(size, 64 * MiB) or 1)
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            f.write(piece)
            h.update(piece)
            left -= len(piece)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _write_config(conf_dir: Path, root: Path, key: bytes) -> Path:
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "home.toml"
    path.write_text(
        f"""[device]
id = "{SERVER}"
listen = ["{HOST}:{free_port()}"]
discovery = false

[audit]
path = "{conf_dir}/audit.sqlite"

[peers.{CLIENT}]
key = "{key.hex()}"
[peers.{CLIENT}.policy]
files = [{{ root = "{root}", write = true }}]
"""
    )
    path.chmod(0o600)
    return path


class DaemonProcess:
    """``python -m bench.files serve``: the real daemon in its own process."""

    def __init__(self, config: Path, variant: Variant, profile: str | None = None) -> None:
        args: list[object] = ["serve", config, "--max-record", variant.max_record]
        args += ["--window", variant.window, *(["--uvloop"] if variant.uvloop else [])]
        if profile:
            args += ["--profile", profile]
        env = child_env(**(MALLOC_TUNED if variant.malloc else {}))
        self.proc = subprocess.Popen(
            python_cmd("bench.files", *args),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready = read_line(self.proc.stdout, 30.0, self.proc).split()
        if ready[:1] != ["READY"]:
            raise RuntimeError(f"daemon said {ready!r}")
        self.port = int(ready[1])

    def cpu(self) -> float:
        """CPU seconds the daemon used so far."""
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        """Stop the daemon (end of its stdin)."""
        stop_child(self.proc)


def _pstp(
    variant: Variant,
    config: Path,
    keys: dict[str, bytes],
    op: str,
    src: Path,
    dst: Path,
    reps: int,
    size: int,
    profile_dir: Path | None = None,
) -> tuple[float, float, float]:
    """Median MB/s of ``reps`` transfers, and CPU s/GB of the daemon and the client."""
    prof = str(profile_dir / f"daemon-{op}.prof") if profile_dir else None
    daemon = DaemonProcess(config, variant, prof)
    try:
        cpu0 = daemon.cpu()
        args: list[object] = ["client", op, "--port", daemon.port, "--src", src, "--dst", dst]
        args += ["--reps", reps, "--max-record", variant.max_record, "--window", variant.window]
        args += ["--uvloop"] if variant.uvloop else []
        if profile_dir:
            args += ["--profile", profile_dir / f"client-{op}.prof"]
        env = child_env(keys, **(MALLOC_TUNED if variant.malloc else {}))
        proc = subprocess.run(
            python_cmd("bench.files", *args),
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        r = parse_result(proc.returncode, proc.stdout, proc.stderr, f"PSTP {op}")
        daemon_cpu = daemon.cpu() - cpu0
    finally:
        daemon.close()
    gb = size * reps / 1e9
    rate = median([size / t / 1e6 for t in r["times"]])
    return rate, daemon_cpu / gb, r["cpu"] / gb


def _cli(config: Path, keys: dict[str, bytes], src: Path, dst: Path, reps: int, size: int) -> Row:
    """`pstp put` / `pstp get` as fresh processes (their own event loop choice: uvloop if
    installed) against a daemon with `pstp serve`'s default limits."""
    from pstp.settings import add_peer, create

    client = config.with_name("phone.toml")
    daemon = DaemonProcess(config, SERVE_DEFAULTS)
    rates: dict[str, list[float]] = {"put": [], "get": []}
    walls: dict[str, list[float]] = {"put": [], "get": []}
    back = src.with_name("cli-back.bin")
    try:
        if not client.exists():
            create(client, CLIENT, listen=f"{HOST}:1")
        add_peer(client, SERVER, keys[CLIENT], address=f"{HOST}:{daemon.port}")
        for _ in range(reps):
            for op, a, b in (("put", src, dst), ("get", dst, back)):
                _remove(str(b))
                t0 = time.perf_counter()
                proc = subprocess.run(
                    python_cmd("pstp", "--config", client, op, SERVER, a, b, "--json"),
                    env=child_env(),
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
                walls[op].append(time.perf_counter() - t0)
                r = parse_result(proc.returncode, proc.stdout, proc.stderr, f"pstp {op}")
                rates[op].append(r["bytes_sent"] / r["seconds"] / 1e6)
    finally:
        daemon.close()
    return Row(
        "`pstp put` / `pstp get` (CLI vs `pstp serve` defaults)",
        median(rates["put"]),
        median(rates["get"]),
        f"uvloop {'on' if SERVE_DEFAULTS.uvloop else 'off'}; channel open to close; "
        f"{size / median(walls['put']) / 1e6:.0f} / {size / median(walls['get']) / 1e6:.0f} "
        "MB/s with process start and handshake",
    )


def _scp_cmd(sshd: Any, src: str, dst: str) -> list[str]:
    cmd = sshd.ssh()  # ssh -F /dev/null -o ... -i KEY -p PORT root@HOST
    opts = cmd[1 : cmd.index("-p")]
    return ["scp", "-q", *opts, "-P", str(sshd.port), src, dst]


def _time_runs(
    cmd: list[str],
    reps: int,
    dst: Path,
    sync: bool,
    stdin: Path | None = None,
    stdout: Path | None = None,
) -> list[float]:
    """Wall times of ``cmd`` (stdin/stdout from/to files if given), then ``sync`` if asked."""
    times = []
    for _ in range(reps):
        _remove(str(dst))
        with contextlib.ExitStack() as files:
            fin = files.enter_context(stdin.open("rb")) if stdin else None
            fout = files.enter_context(stdout.open("wb")) if stdout else None
            t0 = time.perf_counter()
            subprocess.run(cmd, stdin=fin, stdout=fout, check=True)
            if sync:
                subprocess.run(["sync"], check=True)
            times.append(time.perf_counter() - t0)
    return times


class _CpuMeter:
    """CPU seconds of the SSH side: our reaped children (ssh, scp, the SFTP worker)
    plus sshd's reaped session processes (they end with each connection)."""

    def __init__(self, sshd: Any) -> None:
        self.pid = sshd.proc.pid

    def read(self) -> float:
        import resource

        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        sshd_kids = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        return kids.ru_utime + kids.ru_stime + sshd_kids


def _ssh_rows(
    sshd: Any, src: Path, dst: Path, size: int, reps: int, disk: bool, digest: str
) -> list[Row]:
    import shlex

    t_true = median(sshd.time_true(3))
    remote = f"root@{HOST}"
    rows = []
    meter = _CpuMeter(sshd)
    gb = size * reps / 1e9

    def rate(times: list[float]) -> float:
        return size / max(median(times) - t_true, 1e-9) / 1e6

    def timed(*runs: Any) -> tuple[list[list[float]], str]:
        out, cpus = [], []
        for run in runs:
            cpu0 = meter.read()
            out.append(run())
            cpus.append((meter.read() - cpu0) / gb)
        return out, f"CPU s/GB both sides: put {cpus[0]:.2f}, get {cpus[1]:.2f}"

    _log("scp put / get")
    (put_t, get_t), cpu = timed(
        lambda: _time_runs(_scp_cmd(sshd, str(src), f"{remote}:{dst}"), reps, dst, disk),
        lambda: _time_runs(_scp_cmd(sshd, f"{remote}:{src}", str(dst)), reps, dst, disk),
    )
    assert _sha256(dst) == digest
    rows.append(
        Row(
            "scp" + (" + sync" if disk else ""),
            rate(put_t),
            rate(get_t),
            f"{cpu}; process wall time minus `ssh true` ({t_true * 1e3:.0f} ms): "
            f"{size / median(put_t) / 1e6:.0f} / {size / median(get_t) / 1e6:.0f} MB/s with it",
        )
    )
    _log("cat | ssh put / get")
    put_cmd = sshd.ssh(f"cat > {shlex.quote(str(dst))}")
    get_cmd = sshd.ssh(f"cat {shlex.quote(str(src))}")
    (put_t, get_t), cpu = timed(
        lambda: _time_runs(put_cmd, reps, dst, disk, stdin=src),
        lambda: _time_runs(get_cmd, reps, dst, disk, stdout=dst),
    )
    rows.append(
        Row(
            "cat | ssh" + (" + sync" if disk else ""),
            rate(put_t),
            rate(get_t),
            f"{cpu}; one stream, no file protocol; same subtraction",
        )
    )
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        rows.append(Row("asyncssh SFTP", note="skipped: asyncssh not installed"))
        return rows
    _log("asyncssh SFTP put / get")

    def sftp(op: str) -> list[float]:
        args: list[object] = ["sftp", op, "--port", sshd.port, "--key", sshd.client_key]
        args += ["--src", src, "--dst", dst, "--reps", reps]
        proc = subprocess.run(
            python_cmd("bench.files", *args),
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        times: list[float] = parse_result(proc.returncode, proc.stdout, proc.stderr, op)["times"]
        return times

    (put_t, get_t), cpu = timed(lambda: sftp("put"), lambda: sftp("get"))
    rows.append(
        Row(
            "asyncssh SFTP" + (" (no sync)" if disk else ""),
            size / median(put_t) / 1e6,
            size / median(get_t) / 1e6,
            f"{cpu}; session open; sftp.put/get",
        )
    )
    return rows


def _render(rows: list[Row], scp: Row | None, sftp: Row | None) -> str:
    head = ["what", "put MB/s", "get MB/s", "vs scp", "vs asyncssh SFTP", "note"]
    lines = [head]
    for r in rows:

        def ratio(peer: Row | None, r: Row = r) -> str:
            if peer is None or None in (peer.put, peer.get, r.put, r.get) or r is peer:
                return "-"
            assert peer.put and peer.get and r.put and r.get
            return f"{r.put / peer.put:.2f}x / {r.get / peer.get:.2f}x"

        lines.append(
            [
                r.what,
                f"{r.put:.0f}" if r.put else "-",
                f"{r.get:.0f}" if r.get else "-",
                ratio(scp),
                ratio(sftp),
                r.note,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def _profile_report(profile_dir: Path, n: int = 14) -> str:
    import io
    import pstats

    out = io.StringIO()
    for name in sorted(profile_dir.glob("*.prof")):
        out.write(f"\n== {name.stem} (top {n} by own time)\n")
        stats = pstats.Stats(str(name), stream=out)
        stats.sort_stats("tottime").print_stats(n)
    return re.sub(r"\n{3,}", "\n\n", out.getvalue())


@contextlib.contextmanager
def _workdir(disk: bool) -> Iterator[Path]:
    base = None if disk or not Path("/dev/shm").is_dir() else "/dev/shm"
    if disk:
        base = "/var/tmp"
    path = Path(tempfile.mkdtemp(prefix="pstp-bench-files-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def orchestrate(args: argparse.Namespace) -> int:
    """Run every method in this one run and print the table."""
    from bench.sshpeer import Sshd, openssh_missing

    size, reps = args.size, args.reps
    key = os.urandom(32)
    keys = {CLIENT: key}
    with _workdir(args.disk) as work:
        disk_free = shutil.disk_usage(work).free
        if disk_free < 3 * size:
            _log(f"only {disk_free >> 20} MiB free in {work}; need {3 * size >> 20}")
            return 2
        src_dir, root = work / "src", work / "root"
        src_dir.mkdir()
        root.mkdir()
        src, dst, back = src_dir / "data.bin", root / "data.bin", src_dir / "back.bin"
        _log(f"writing a {size >> 20} MiB source in {work}")
        digest = _make_source(src, size)
        config = _write_config(work / "conf", root, key)
        rows: list[Row] = []
        variants = [v for v in VARIANTS if have_uvloop() or not v.uvloop]
        variants = variants[:1] if args.quick else variants
        for variant in variants:
            _log(f"{variant.name}: put x{reps}")
            put = _pstp(variant, config, keys, "put", src, dst, reps, size)
            assert _sha256(dst) == digest, "PSTP put: content differs"
            _log(f"{variant.name}: get x{reps}")
            get = _pstp(variant, config, keys, "get", dst, back, reps, size)
            assert _sha256(back) == digest, "PSTP get: content differs"
            rows.append(
                Row(
                    variant.name,
                    put[0],
                    get[0],
                    f"CPU s/GB daemon+client: put {put[1]:.2f}+{put[2]:.2f}, "
                    f"get {get[1]:.2f}+{get[2]:.2f}",
                )
            )
        _log(f"pstp put / get CLI x{reps}")
        rows.append(_cli(config, keys, src, dst, reps, size))
        assert _sha256(dst) == digest
        profile_text = ""
        if args.profile:
            prof_dir = work / "profiles"
            prof_dir.mkdir()
            variant = VARIANTS[-1]
            _log("profiling put and get (tuned variant)")
            _pstp(variant, config, keys, "put", src, dst, 1, size, prof_dir)
            _pstp(variant, config, keys, "get", dst, back, 1, size, prof_dir)
            profile_text = _profile_report(prof_dir)
        scp = sftp = None
        missing = openssh_missing()
        if missing:
            rows.append(Row("scp / cat | ssh / asyncssh SFTP", note=f"skipped: {missing}"))
        else:
            with Sshd() as sshd:
                ssh_rows = _ssh_rows(sshd, src, dst, size, reps, args.disk, digest)
            rows += ssh_rows
            scp = ssh_rows[0]
            sftp = next((r for r in ssh_rows if r.what.startswith("asyncssh") and r.put), None)
    where = "disk (/var/tmp), fsync counted" if args.disk else "tmpfs (/dev/shm)"
    print(
        f"\nFile transfer, {size >> 20} MiB, median of {reps}, loopback, data on {where}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end\n"
    )
    print(_render(rows, scp, sftp))
    if profile_text:
        print(profile_text)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0


def main() -> int:
    """Parse the command line and run the orchestrator or a worker."""
    parser = argparse.ArgumentParser(prog="python -m bench.files", description=_DOC)
    parser.add_argument("--size", type=_parse_size, default=1 << 30, help="file size (1G)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--disk", action="store_true", help="data on /var/tmp, not /dev/shm")
    parser.add_argument("--quick", action="store_true", help="only the default PSTP variant")
    parser.add_argument("--profile", action="store_true", help="cProfile both PSTP sides")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    sub = parser.add_subparsers(dest="cmd")
    srv = sub.add_parser("serve")
    srv.add_argument("config")
    for p in (srv, cli := sub.add_parser("client")):
        p.add_argument("--max-record", type=int, default=64 * KiB)
        p.add_argument("--window", type=int, default=MiB)
        p.add_argument("--uvloop", action="store_true")
        p.add_argument("--profile")
    sftp = sub.add_parser("sftp")
    sftp.add_argument("--key", required=True)
    for p in (cli, sftp):
        p.add_argument("op", choices=["put", "get"])
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--src", required=True)
        p.add_argument("--dst", required=True)
        p.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    if args.cmd == "serve":
        serve_main(args)
    elif args.cmd == "client":
        client_main(args)
    elif args.cmd == "sftp":
        emit(run_async(lambda: _sftp(args)))
    else:
        return orchestrate(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
