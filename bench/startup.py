"""``python -m bench.startup``: how long ``pstp --version`` and ``pstp --help`` take to start.

Beside them, on the same machine and in the same run: ``ssh -V`` (skipped if ssh is
absent), ``python -c pass`` with the same interpreter (the floor for any Python CLI),
``python -S -c pass`` (the same without ``site`` and its ``.pth`` files) and the
``python3`` on ``PATH``.  Each command runs ``--runs`` times, the commands taking turns
so that a burst of load elsewhere hits them all alike; the table shows the median and
the fastest run.

``pstp ...`` rows run what the console script of ``pip install`` runs (``from
pstp.cli.main import main``) with this checkout's ``src/`` first on the path, so the
code measured is the checkout's and no pyenv shim (≈ 90 ms here) is counted.  With
``PYTHONDONTWRITEBYTECODE`` set (as on this machine) every start compiles pstp's modules
from source; ``--bytecode`` lets the children write and use ``__pycache__`` (after one
warm-up run), which is what an installed pstp gets.

Usage::

    python -m bench.startup                 # 30 runs of each
    python -m bench.startup --runs 100 --bytecode --markdown FILE
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: What pip's generated ``pstp`` script does (pyproject.toml: ``pstp.cli.main:main``).
CONSOLE_SCRIPT = (
    "import re, sys\n"
    "from pstp.cli.main import main\n"
    "sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
    "sys.exit(main())\n"
)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commands() -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The rows to time, and a note for each one skipped."""
    py = sys.executable
    rows: list[tuple[str, list[str]]] = [
        ("pstp --version", [py, "-c", CONSOLE_SCRIPT, "--version"]),
        ("pstp --help", [py, "-c", CONSOLE_SCRIPT, "--help"]),
        ("python -m pstp --version", [py, "-m", "pstp", "--version"]),
        ("python -c 'import pstp.cli.main'", [py, "-c", "import pstp.cli.main"]),
        ("python -c pass", [py, "-c", "pass"]),
        ("python -S -c pass", [py, "-S", "-c", "pass"]),
    ]
    skipped: list[str] = []
    python3 = shutil.which("python3")
    if python3 is not None:
        rows.append((f"python3 -c pass ({os.path.realpath(python3)})", [python3, "-c", "pass"]))
    else:
        skipped.append("python3 -c pass: skipped, no python3 on PATH")
    ssh = shutil.which("ssh")
    if ssh is not None:
        rows.append(("ssh -V", [ssh, "-V"]))
    else:
        skipped.append("ssh -V: skipped, ssh is not installed (apt-get install openssh-client)")
    return rows, skipped


def environment(bytecode: bool) -> dict[str, str]:
    """The children's environment: the checkout's src/ first; bytecode caching as asked."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_once(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from spawn to exit of one run (output discarded; a failure is an error)."""
    started = time.perf_counter()
    done = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv!r} exited with {done.returncode}")
    return took


def measure(runs: int, bytecode: bool) -> tuple[list[tuple[str, list[float]]], list[str]]:
    """Time every row ``runs`` times, the rows taking turns; one warm-up run each first."""
    rows, skipped = commands()
    env = environment(bytecode)
    for _, argv in rows:
        run_once(argv, env)  # warm the page cache (and __pycache__ with --bytecode)
    times: list[list[float]] = [[] for _ in rows]
    for _ in range(runs):
        for i, (_, argv) in enumerate(rows):
            times[i].append(run_once(argv, env))
    return [(name, t) for (name, _), t in zip(rows, times, strict=True)], skipped


def render(results: list[tuple[str, list[float]]], skipped: list[str]) -> str:
    """A Markdown table: median and fastest run, and the median against ``python -c pass``."""
    floor = statistics.median(dict(results)["python -c pass"])
    lines = [
        "| command | median | fastest | vs `python -c pass` |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, t in results:
        med = statistics.median(t)
        lines.append(
            f"| `{name}` | {med * 1000:.1f} ms | {min(t) * 1000:.1f} ms | {med / floor:.2f}x |"
        )
    lines += [f"| {note} | | | |" for note in skipped]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the start-up rows and print the table (and write it with ``--markdown``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=30, help="runs of each command (30)")
    parser.add_argument(
        "--bytecode", action="store_true", help="let the children write and use __pycache__"
    )
    parser.add_argument("--markdown", metavar="FILE", help="also write the table here")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    load_before = os.getloadavg()[0]
    started = time.time()
    results, skipped = measure(args.runs, args.bytecode)
    caching = (
        "on (--bytecode)"
        if args.bytecode or "PYTHONDONTWRITEBYTECODE" not in os.environ
        else "off (PYTHONDONTWRITEBYTECODE is set: pstp's modules compile on every start)"
    )
    header = (
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, {cpu_name()}, "
        f"{os.cpu_count()} cores, CPython {platform.python_version()}, "
        f"{args.runs} runs each, bytecode caching {caching}, "
        f"load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after"
    )
    table = render(results, skipped)
    print(header)
    print()
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(header + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
