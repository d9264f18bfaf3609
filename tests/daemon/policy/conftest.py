"""Fixtures of the policy tests: a local time zone switch and the `pstp policy check` command."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pstp.cli.main import main
from tests.daemon.policy.support import (
    FULL,
    config_text,
    write_config,
)


@pytest.fixture
def set_tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Switch the process's local time zone (POSIX TZ strings need no tz database)."""

    def switch(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield switch
    monkeypatch.undo()
    time.tzset()


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., tuple[int, str, str]]:
    """Run `pstp --config FILE policy check ...` against the FULL policy plus windows."""
    policy = FULL + (
        'require_reason = true\nwhen = [{ days = ["mon", "tue", "wed", "thu", "fri"], '
        'from = "07:00", to = "22:30" }]\n'
    )
    path = write_config(tmp_path, config_text(policy))

    def run(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        code = main(["--config", str(path), "policy", "check", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
