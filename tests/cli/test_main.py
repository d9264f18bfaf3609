"""The conventions every `pstp` command shares: exit statuses, -v/-q, --json, help, EPIPE."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pstp.cli.main import EXIT_TABLE, build_parser, main
from pstp.settings import add_peer, create
from tests.cli.test_pair import env_for, free_port
from tests.daemon.serving import PHONE, Served, serve
from tests.helpers import TIMEOUT

CONFIG = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[peers.phone]
key = "{phone}"
[peers.phone.policy]
exec = [["sh", "-c", "*"]]
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real `pstp serve` that lets phone run `sh -c ...`."""
    served = serve(tmp_path_factory.mktemp("home"), CONFIG)
    yield served
    served.stop()


@pytest.fixture
def phone(tmp_path: Path, home: Served) -> Path:
    """phone's configuration: it knows home at its address."""
    cfg = create(tmp_path / "phone.toml", "phone", listen="127.0.0.1:1")
    add_peer(cfg, "home", PHONE, address=f"127.0.0.1:{home.port}")
    return cfg


@pytest.fixture
def dead(tmp_path: Path) -> Path:
    """A configuration whose peer `home` is remembered at a port nobody listens on."""
    cfg = create(tmp_path / "dead.toml", "phone", listen="127.0.0.1:1")
    add_peer(cfg, "home", PHONE, address=f"127.0.0.1:{free_port()}")
    return cfg


def pstp(cfg: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run `python -m pstp ARGV` with ``cfg`` as its configuration."""
    return subprocess.run(
        [sys.executable, "-m", "pstp", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env_for(cfg),
        timeout=4 * TIMEOUT,
    )


# --- exit statuses (issue 12 item 4) ---------------------------------------------------


@pytest.mark.parametrize("status", [1, 2, 3, 4, 78, 130])
def test_exec_passes_every_remote_status_through(phone: Path, status: int) -> None:
    """A remote `exit 4` is 4, and nothing pstp says about itself is 1-254."""
    done = pstp(phone, "exec", "home", "--", "sh", "-c", f"exit {status}")
    assert done.returncode == status, done.stderr
    assert "pstp:" not in done.stderr


def test_a_pstp_failure_is_255_under_exec_run_and_shell(dead: Path, tmp_path: Path) -> None:
    """Not reached, a usage error or a bad configuration: 255, as ssh says its own failures."""
    for argv in (["exec", "home", "--", "true"], ["run", "home", "x"], ["shell", "home"]):
        done = pstp(dead, *argv)
        assert done.returncode == 255, (argv, done.stderr)
        assert "home not reached" in done.stderr and "pstp doctor home" in done.stderr
    assert pstp(dead, "exec").returncode == 255  # argparse: no peer
    assert pstp(dead, "exec", "nobody", "--", "true").returncode == 255  # unknown peer
    missing = tmp_path / "none.toml"
    assert pstp(missing, "exec", "home", "--", "true").returncode == 255
    assert pstp(missing, "ping", "home").returncode == 78


def test_other_commands_keep_their_own_statuses(dead: Path) -> None:
    """ping: 4 when not reached, 2 on a usage error; the help lists every status."""
    done = pstp(dead, "ping", "home")
    assert done.returncode == 4, done.stderr
    assert "connection refused" in done.stderr and "pstp doctor home" in done.stderr
    assert "Connect call failed" not in done.stderr
    assert pstp(dead, "ping").returncode == 2
    top = pstp(dead, "--help").stdout
    assert "exit status:" in top and "255" in top and "141" in top
    assert EXIT_TABLE.splitlines()[0] in top


# --- -v and -q anywhere (item 11) ------------------------------------------------------


def test_verbose_and_quiet_are_accepted_after_the_command(phone: Path) -> None:
    """`pstp ping -v home` logs; `pstp ping -q home` and `pstp -q ping home` work."""
    loud = pstp(phone, "ping", "-v", "home")
    assert loud.returncode == 0, loud.stderr
    assert "INFO" in loud.stderr or "DEBUG" in loud.stderr
    for argv in (["ping", "-q", "home"], ["-q", "ping", "home"]):
        done = pstp(phone, *argv)
        assert done.returncode == 0 and done.stderr == "", done.stderr
    before = pstp(phone, "-v", "ping", "home")
    assert before.returncode == 0 and before.stderr  # a later -v default does not reset it
    config_after = pstp(Path("/nonexistent.toml"), "ping", "--config", str(phone), "home")
    assert config_after.returncode == 0, config_after.stderr


# --- --json (item 11) ------------------------------------------------------------------


def test_ping_json(phone: Path) -> None:
    """One JSON object: the peer, the connect time and each round trip."""
    done = pstp(phone, "ping", "--json", "-c", "2", "home")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["peer"] == "home" and len(report["rtt_ms"]) == 2
    assert report["connect_ms"] > 0


def test_device_list_has_a_header_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A header line, then one peer per line; --json gives the same as a list."""
    cfg = create(tmp_path / "p.toml", "home", listen="127.0.0.1:1")
    add_peer(cfg, "phone", PHONE, address="10.0.0.2:9000")
    assert main(["--config", str(cfg), "device", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["PEER", "ADDRESS", "ALLOWED"]
    assert lines[1].split()[:2] == ["phone", "10.0.0.2:9000"]
    assert main(["--config", str(cfg), "device", "list", "--json"]) == 0
    (peer,) = json.loads(capsys.readouterr().out)
    assert peer["id"] == "phone" and peer["address"] == "10.0.0.2:9000"
    assert "key" not in peer and PHONE.hex() not in json.dumps(peer)


def test_audit_verify_and_head_json(home: Served, phone: Path) -> None:
    """verify --json and head --json agree on the head."""
    assert pstp(phone, "ping", "home").returncode == 0  # at least one row
    daemon_cfg = home.dir / "pstp.toml"
    verify = pstp(daemon_cfg, "audit", "verify", "--json")
    head = pstp(daemon_cfg, "audit", "head", "--json")
    assert verify.returncode == 0 and head.returncode == 0, verify.stderr + head.stderr
    report, top = json.loads(verify.stdout), json.loads(head.stdout)
    assert report["ok"] is True and report["rows"] >= 1 and report["first_bad_seq"] is None
    assert report["head"] == top["hash"] and top["seq"] >= 1


def test_policy_check_json(home: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """--json before or after WHAT; the exit status still says allow (0) or deny (1)."""
    cfg = str(home.dir / "pstp.toml")
    argv = ["--config", cfg, "policy", "check", "phone"]
    assert main([*argv, "--json", "exec", "--", "sh", "-c", "true"]) == 0
    allowed = json.loads(capsys.readouterr().out)
    assert allowed["allowed"] is True and allowed["argv"] == ["sh", "-c", "true"]
    assert main([*argv, "shell", "--json"]) == 1
    denied = json.loads(capsys.readouterr().out)
    assert denied["allowed"] is False and denied["rule"]


# --- help (item 11) --------------------------------------------------------------------


def _commands() -> Iterator[tuple[str, ...]]:
    def walk(parser: object, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        import argparse

        assert isinstance(parser, argparse.ArgumentParser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield (*path, name)
                    yield from walk(child, (*path, name))

    yield from walk(build_parser(), ())


def test_every_command_has_a_description_and_leaves_have_examples() -> None:
    """`pstp X --help` says what X does, and shows how (policy check's WHATs excepted)."""
    import argparse

    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def collect(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    parsers[(*path, name)] = child
                    collect(child, (*path, name))

    collect(build_parser(), ())
    for path, parser in parsers.items():
        if path[:2] == ("policy", "check") and len(path) == 3:
            continue  # the WHAT words of policy check, shown by its own examples
        assert parser.description, f"pstp {' '.join(path)} has no description"
        has_children = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        if not has_children:
            assert parser.epilog and "examples:" in parser.epilog, f"pstp {' '.join(path)}"


# --- EPIPE and bind errors (item 8) ----------------------------------------------------


def test_a_closed_stdout_ends_quietly(home: Served, phone: Path) -> None:
    """`pstp audit list | head -1`: no "connection failed: Broken pipe", status 141."""
    for _ in range(3):
        assert pstp(phone, "ping", "home").returncode == 0
    daemon_cfg = home.dir / "pstp.toml"
    done = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m pstp audit list | head -1; echo s=${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        env=env_for(daemon_cfg),
        timeout=4 * TIMEOUT,
    )
    # head may take the first line before pstp writes the rest (then 141) or after (0)
    assert done.stdout.splitlines()[-1] in ("s=141", "s=0"), done.stdout
    assert "Broken pipe" not in done.stderr and "connection failed" not in done.stderr
    assert done.stderr == "", done.stderr


def test_a_closed_stdout_with_much_output_is_141(home: Served, phone: Path) -> None:
    """The reader is gone before pstp writes its first row: exactly 141."""
    assert pstp(phone, "ping", "home").returncode == 0
    daemon_cfg = home.dir / "pstp.toml"
    script = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'pstp', 'audit', 'list'],"
        " stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)\n"
        "p.stdout.close()\n"  # the reader is gone before pstp writes a byte
        "err = p.stderr.read(); print(p.wait()); print(err, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env_for(daemon_cfg),
        timeout=4 * TIMEOUT,
    )
    assert done.stdout.strip() == "141", (done.stdout, done.stderr)
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr


def test_a_bind_error_is_not_called_a_connection_failure(tmp_path: Path, home: Served) -> None:
    """`pstp serve` on a busy port says it cannot serve, and why."""
    cfg = create(tmp_path / "busy.toml", "other", listen=f"127.0.0.1:{home.port}")
    cfg.write_text(cfg.read_text().replace("discovery = true", "discovery = false"))
    done = pstp(cfg, "serve")
    assert done.returncode == 4, done.stderr
    assert "cannot serve" in done.stderr and "connection failed" not in done.stderr
    assert "pstp serve" in done.stderr  # the likely cause: another daemon


# --- completion (item 11) --------------------------------------------------------------


def test_bash_completion_completes_commands_options_and_peers(tmp_path: Path) -> None:
    """The generated script, sourced in a real bash, completes what the parser knows."""
    cfg = create(tmp_path / "c.toml", "laptop", listen="127.0.0.1:1")
    add_peer(cfg, "home", PHONE, address="127.0.0.1:1")
    script = pstp(cfg, "completion", "bash")
    assert script.returncode == 0, script.stderr
    (tmp_path / "c.bash").write_text(script.stdout)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pstp").write_text(f'#!/bin/sh\nexec {sys.executable} -m pstp "$@"\n')
    (bin_dir / "pstp").chmod(0o755)

    def complete(*words: str) -> list[str]:
        quoted = " ".join(f"'{w}'" for w in words)
        probe = (
            f"source {tmp_path / 'c.bash'}; COMP_WORDS=(pstp {quoted});"
            f" COMP_CWORD={len(words)}; _pstp; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        )
        env = env_for(cfg, PATH=f"{bin_dir}:/usr/bin:/bin")
        done = subprocess.run(
            ["bash", "-c", probe], capture_output=True, text=True, env=env, timeout=4 * TIMEOUT
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("dev") == ["device"]
    assert complete("device", "") == ["add", "list", "remove"]
    assert "--reason" in complete("exec", "--re")
    assert complete("-v", "ping", "") == ["home"]
    assert "--peers" not in complete("completion", "--")  # hidden options are not offered


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_every_command(shell: str, tmp_path: Path) -> None:
    """Every top-level command appears in the script (checked by the shell if installed)."""
    done = pstp(tmp_path / "none.toml", "completion", shell)
    assert done.returncode == 0, done.stderr
    for path in _commands():
        if len(path) == 1:
            assert f" {path[0]}" in done.stdout, path
    import shutil

    binary = shutil.which(shell)
    if binary is not None:  # a syntax check by the real shell
        flag = ["-n"] if shell == "zsh" else ["--no-execute"]
        (tmp_path / "script").write_text(done.stdout)
        check = subprocess.run([binary, *flag, str(tmp_path / "script")], capture_output=True)
        assert check.returncode == 0, check.stderr


def test_docs_cli_holds_the_same_exit_table() -> None:
    """docs/cli.md shows exactly the table `pstp --help` prints."""
    from tests.helpers import ROOT

    assert EXIT_TABLE in (ROOT / "docs" / "cli.md").read_text()
