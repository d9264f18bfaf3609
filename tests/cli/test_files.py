"""`pstp put` and `pstp get`: real processes, killed mid-way and run again."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pstp.cli.cmd_files import _progress_bar, parse_rate
from pstp.cli.main import Console, main
from pstp.client.files import Progress
from pstp.files.disk import part_names
from tests.cli.test_pair import env_for
from tests.daemon.test_files import Served, make_tree, sha256, snapshot
from tests.helpers import TIMEOUT

MiB = 1 << 20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One daemon for the module's tests."""
    s = Served.make(tmp_path_factory.mktemp("cli-files"))
    s.start()
    yield s
    s.stop()


def cli(served: Served, *args: str) -> tuple[int, str, str]:
    """Run `pstp ARGS` in this process; return the exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(served.client_config), *args], Console(out, err))
    return code, out.getvalue(), err.getvalue()


def spawn(served: Served, *args: str) -> subprocess.Popen[str]:
    """Start `python -m pstp ARGS` as the client "phone"."""
    return subprocess.Popen(
        [sys.executable, "-m", "pstp", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(served.client_config),
    )


def wait_for_size(path: Path, size: int, proc: subprocess.Popen[str]) -> None:
    """Poll until ``path`` holds at least ``size`` bytes (the transfer is under way)."""
    deadline = time.monotonic() + TIMEOUT * 4
    while time.monotonic() < deadline:
        try:
            if path.stat().st_size >= size:
                return
        except FileNotFoundError:
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.002)
    raise AssertionError(f"{path} never reached {size} bytes")


def summary(stdout: str) -> dict[str, Any]:
    """The --json summary line."""
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def test_put_and_get_print_json_summaries_and_round_trip_a_tree(
    served: Served, tmp_path: Path
) -> None:
    """`pstp put --json` then `pstp get --json`: counts in JSON, the same tree back."""
    src = make_tree(tmp_path / "tree", big=4 * MiB)
    code, out, err = cli(served, "put", "home", str(src), f"{served.rw}/cli/", "--json")
    assert code == 0, err
    up = summary(out)
    assert (up["ok"], up["files"], up["dirs"], up["failed"]) == (True, 5, 4, [])
    assert up["bytes_sent"] == up["bytes_total"] > 4 * MiB
    back = tmp_path / "back"
    code, out, err = cli(served, "get", "home", f"{served.rw}/cli/tree", f"{back}/")
    assert code == 0, err
    assert out.startswith("received 5 file(s)") and snapshot(back / "tree") == snapshot(src)
    code, out, _ = cli(served, "get", "home", f"{served.rw}/cli/tree", f"{back}/")
    assert code == 0 and out.startswith("received 0 file(s)") and "5 already there" in out


def test_sigkill_of_the_sending_process_then_the_same_put_resumes(
    served: Served, tmp_path: Path
) -> None:
    """`pstp put` killed with SIGKILL mid-way; run again, it sends measurably less."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(50 * MiB))
    target = served.rw / "killed-sender.bin"
    args = ("put", "home", str(src), str(target), "--json")
    proc = spawn(served, *args, "--limit", "25M")
    wait_for_size(served.rw / part_names(target.name)[0], 12 * MiB, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(TIMEOUT)
    assert not target.exists()
    code, out, err = cli(served, *args)
    assert code == 0, err
    again = summary(out)
    assert again["bytes_resumed"] >= 8 * MiB
    assert again["bytes_sent"] == 50 * MiB - again["bytes_resumed"] <= 42 * MiB
    assert sha256(target) == sha256(src)


def _mib(text: str, pattern: str) -> float:
    """The MiB figure ``pattern`` (a regex with one group) finds in ``text``."""
    m = re.search(pattern, text)
    assert m is not None, text
    return float(m[1])


def test_ctrl_c_of_put_says_what_was_kept_and_the_same_put_resumes(
    served: Served, tmp_path: Path
) -> None:
    """`pstp put` sent SIGINT mid-file: exit 130, the complete files and the bytes of the
    partial one are named, with "run the same command again"; run again, it resumes."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-small.txt").write_text("small\n")
    (src / "b-big.bin").write_bytes(os.urandom(40 * MiB))
    args = ("put", "home", str(src), f"{served.rw}/ctrl-c/")
    proc = spawn(served, *args, "--limit", "20M")
    target = served.rw / "ctrl-c" / "src" / "b-big.bin"
    wait_for_size(target.parent / part_names(target.name)[0], 8 * MiB, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT * 2)
    assert proc.returncode == 130, err
    assert "interrupted: 1 file(s) sent" in err
    sent = _mib(err, r"src/b-big\.bin: up to ([0-9.]+) MiB of 40\.0 MiB sent")
    assert 8 <= sent < 40
    assert "hidden partial file" in err and "run the same command again to resume" in err
    assert not target.exists() and (served.rw / "ctrl-c" / "src" / "a-small.txt").exists()
    code, out, err = cli(served, *args, "--json")
    assert code == 0, err
    again = summary(out)
    assert again["skipped"] == 1 and again["files"] == 1
    assert 4 * MiB <= again["bytes_resumed"] <= sent * MiB + 0.05 * MiB
    assert again["bytes_sent"] == 40 * MiB - again["bytes_resumed"]
    assert sha256(target) == sha256(src / "b-big.bin")


def test_ctrl_c_of_get_names_the_local_partial_file_and_the_same_get_resumes(
    served: Served, tmp_path: Path
) -> None:
    """`pstp get` sent SIGINT mid-file: the local hidden partial file and its kept bytes
    are named (in JSON too); run again, the get resumes from exactly those bytes."""
    remote = served.rw / "ctrl-c-get.bin"
    remote.write_bytes(os.urandom(30 * MiB))
    local = tmp_path / "got.bin"
    part = tmp_path / part_names(local.name)[0]
    args = ("get", "home", str(remote), str(local))
    proc = spawn(served, *args, "--limit", "20M")
    wait_for_size(part, 8 * MiB, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT * 2)
    assert proc.returncode == 130, err
    kept = _mib(err, r"ctrl-c-get\.bin: ([0-9.]+) MiB of 30\.0 MiB kept in its hidden partial file")
    assert f"partial file {part}\n" in err
    assert "interrupted: 0 file(s) received" in err and "run the same command again" in err
    assert not local.exists() and part.exists()
    code, out, err = cli(served, *args, "--json")
    assert code == 0, err
    again = summary(out)
    assert abs(again["bytes_resumed"] - kept * MiB) <= 0.05 * MiB
    assert sha256(local) == sha256(remote)


def test_ctrl_c_with_json_prints_what_was_kept(served: Served, tmp_path: Path) -> None:
    """--json: an interrupted get prints {"ok": false, "interrupted": true, ...}."""
    remote = served.rw / "ctrl-c-json.bin"
    remote.write_bytes(os.urandom(30 * MiB))
    local = tmp_path / "got.bin"
    part = tmp_path / part_names(local.name)[0]
    proc = spawn(served, "get", "home", str(remote), str(local), "--json", "--limit", "20M")
    wait_for_size(part, 4 * MiB, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT * 2)
    assert proc.returncode == 130, err
    result = summary(out)
    assert (result["ok"], result["interrupted"], result["files"]) == (False, True, 0)
    partial = result["partial"]
    assert partial["path"] == "ctrl-c-json.bin" and partial["part"] == str(part)
    assert MiB <= partial["bytes"] < partial["size"] == 30 * MiB  # verified: a chunk behind


def test_sigkill_of_the_daemon_then_the_same_put_resumes(tmp_path: Path) -> None:
    """The receiving daemon killed with SIGKILL mid-put; restarted, the put resumes."""
    daemon = Served.make(tmp_path / "d")
    daemon.start()
    try:
        src = tmp_path / "big.bin"
        src.write_bytes(os.urandom(50 * MiB))
        target = daemon.rw / "killed-daemon.bin"
        args = ("put", "home", str(src), str(target), "--json")
        proc = spawn(daemon, *args, "--limit", "25M")
        wait_for_size(daemon.rw / part_names(target.name)[0], 12 * MiB, proc)
        daemon.stop(signal.SIGKILL)
        out, err = proc.communicate(timeout=TIMEOUT * 2)
        assert proc.returncode == 4 and "connection closed" in err  # as pstp reports it
        assert summary(out)["ok"] is False
        assert not target.exists()
        daemon.start()
        code, out, err = cli(daemon, *args)
        assert code == 0, err
        again = summary(out)
        assert again["bytes_resumed"] >= 8 * MiB and again["bytes_sent"] <= 42 * MiB
        assert sha256(target) == sha256(src)
    finally:
        daemon.stop()


def test_sigkill_of_the_receiving_process_then_the_same_get_resumes(
    served: Served, tmp_path: Path
) -> None:
    """`pstp get` killed with SIGKILL mid-way; run again, it receives measurably less."""
    remote = served.rw / "for-get.bin"
    remote.write_bytes(os.urandom(40 * MiB))
    local = tmp_path / "got.bin"
    args = ("get", "home", str(remote), str(local), "--json")
    proc = spawn(served, *args, "--limit", "25M")
    wait_for_size(tmp_path / part_names(local.name)[0], 12 * MiB, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(TIMEOUT)
    assert not local.exists()
    code, out, err = cli(served, *args)
    assert code == 0, err
    again = summary(out)
    assert again["bytes_resumed"] >= 8 * MiB and again["bytes_sent"] <= 32 * MiB
    assert sha256(local) == sha256(remote)


def test_refusals_and_failed_entries_exit_1_and_say_why(served: Served, tmp_path: Path) -> None:
    """A refused path, an existing file without --force: exit 1 with the reason (and JSON)."""
    src = tmp_path / "f.txt"
    src.write_text("new")
    code, out, err = cli(served, "put", "home", str(src), "/etc/pstp-cli.txt", "--json")
    assert code == 1 and not Path("/etc/pstp-cli.txt").exists()
    assert summary(out) == {"ok": False, "error": err.strip().removeprefix("pstp: ")}
    assert "refused by home" in err and "outside the roots" in err
    (served.rw / "f.txt").write_text("older")
    code, out, err = cli(served, "put", "home", str(src), str(served.rw))
    assert code == 1 and f"the target home:{served.rw}," in err and "--force replaces it" in err
    assert "0 file(s)" in out and "1 failed" in out
    assert (served.rw / "f.txt").read_text() == "older"
    code, out, err = cli(served, "put", "home", str(src), f"{served.rw}/")
    assert code == 1 and f"f.txt: home:{served.rw}/f.txt exists, not replaced" in err
    assert "--force replaces it" in err and (served.rw / "f.txt").read_text() == "older"
    code, _, err = cli(served, "put", "home", str(src), str(served.rw), "--force")
    assert code == 0, err
    assert (served.rw / "f.txt").read_text() == "new"


def test_get_refusing_to_overwrite_names_both_ends(served: Served, tmp_path: Path) -> None:
    """An existing local file is not replaced: the message names it, the remote source
    (PEER:/path) and --force, for a single file and for a file inside a tree."""
    tree = served.rw / "get-exists"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x.txt").write_text("remote")
    (tmp_path / "x.txt").write_text("local!!")
    code, _, err = cli(served, "get", "home", str(tree / "sub" / "x.txt"), str(tmp_path))
    assert code == 1
    assert f"{tmp_path}/x.txt: exists here, not replaced by home:{tree}/sub/x.txt" in err
    assert "--force replaces it" in err and (tmp_path / "x.txt").read_text() == "local!!"
    mine = tmp_path / "mine.txt"
    mine.write_text("mine")
    code, _, err = cli(served, "get", "home", str(tree / "sub" / "x.txt"), str(mine))
    assert code == 1 and f"{mine}: exists here, not replaced by home:{tree}/sub/x.txt" in err
    (tmp_path / "get-exists" / "sub").mkdir(parents=True)
    (tmp_path / "get-exists" / "sub" / "x.txt").write_text("local!!")
    code, _, err = cli(served, "get", "home", str(tree), f"{tmp_path}/")
    assert code == 1
    assert (
        f"{tmp_path}/get-exists/sub/x.txt: exists here, not replaced by home:{tree}/sub/x.txt"
        in err
    )
    code, _, err = cli(served, "get", "home", str(tree), f"{tmp_path}/", "--force")
    assert code == 0, err
    assert (tmp_path / "get-exists" / "sub" / "x.txt").read_text() == "remote"


def test_get_of_a_tree_says_what_the_device_left_out(served: Served, tmp_path: Path) -> None:
    """Symlinks and FIFOs in a remote tree are not copied, and `pstp get` says so (exit 1),
    as `pstp put` does for local ones: a copy that looks complete but is not never exits 0."""
    tree = served.rw / "mixed"
    tree.mkdir()
    (tree / "a.txt").write_text("a")
    (tree / "link").symlink_to("a.txt")
    os.mkfifo(tree / "pipe")
    code, out, err = cli(served, "get", "home", str(tree), str(tmp_path / "got"), "--json")
    assert code == 1, err
    result = summary(out)
    assert result["files"] == 1 and not result["ok"]
    assert sorted((f["path"], f["error"]) for f in result["failed"]) == [
        ("mixed/link", "left out: symlink (not followed)"),
        ("mixed/pipe", "left out: not a regular file or directory"),
    ]
    assert sorted(p.name for p in (tmp_path / "got").rglob("*")) == ["a.txt"]


def test_usage_errors_exit_2(served: Served, tmp_path: Path) -> None:
    """Too few paths, a bad --limit, an unknown peer: exit 2 with a message."""
    assert cli(served, "put", "home", "/only-one")[0] == 2
    code, _, err = cli(served, "get", "home", "/a", str(tmp_path), "--limit", "fast")
    assert code == 2 and "--limit" in err
    code, _, err = cli(served, "put", "nobody", str(tmp_path), "/x")
    assert code == 2 and "no peer 'nobody'" in err


def test_parse_rate_reads_binary_units() -> None:
    """--limit takes bytes per second with K, M, G (binary) suffixes."""
    assert parse_rate("4096") == 4096
    assert parse_rate("500K") == 500 * 1024
    assert parse_rate("20M") == parse_rate("20MiB/s") == 20 * MiB
    assert parse_rate("1.5g") == 1.5 * (1 << 30)
    assert parse_rate(None) is None
    for bad in ("", "0", "-1M", "10 parsecs"):
        with pytest.raises(ValueError):
            parse_rate(bad)


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_is_drawn_only_on_a_terminal_and_when_wanted() -> None:
    """No bar for a pipe or with --no-progress; on a terminal, rich draws one."""
    with _progress_bar(Console(io.StringIO(), io.StringIO()), True) as cb:
        assert cb is None
    with _progress_bar(Console(io.StringIO(), _Terminal()), False) as cb:
        assert cb is None
    err = _Terminal()
    with _progress_bar(Console(io.StringIO(), err), True) as cb:
        assert cb is not None
        cb(Progress("a/b.bin", MiB, 2 * MiB, MiB, 4 * MiB))
    assert "a/b.bin" in err.getvalue() or err.getvalue() == ""  # rich may not refresh in time
