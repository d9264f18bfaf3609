"""`pstp --version` and `pstp --help` start as a plain interpreter does: nothing heavy loads.

These are tests on what gets imported, not on timing (`python -m bench.startup` times it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT, TIMEOUT

#: What a session needs and `--version`/`--help` must not pay for.
HEAVY = ("asyncio", "cryptography", "msgspec", "ecdsa", "zeroconf", "rich", "tomlkit", "segno")


def _python(*args: str) -> str:
    """Run ``python ARGS`` with the checkout's src/ on the path; return its stdout."""
    out = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        timeout=TIMEOUT * 6,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_version_and_help_import_no_asyncio_cryptography_or_msgspec() -> None:
    """The console script's path (`from pstp.cli.main import main`, then `--version` and
    `--help`) loads none of the session's dependencies."""
    code = (
        "import json, sys\n"
        "from pstp.cli.main import main\n"
        "for argv in (['--version'], ['--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    stdout = _python("-c", code)
    assert "pstp 0.1.0" in stdout and "usage: pstp" in stdout
    assert json.loads(stdout.splitlines()[-1]) == []


def test_python_m_pstp_version_exits_0() -> None:
    """`python -m pstp --version` prints the version."""
    assert _python("-m", "pstp", "--version").strip().startswith("pstp ")


def test_import_pstp_imports_nothing_but_itself_and_still_offers_its_api() -> None:
    """`import pstp` adds no module but itself (not even typing or importlib; -S keeps
    site's own imports out of the picture), and the public names still load on use."""
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import pstp\n"
        "print(json.dumps([sorted(set(sys.modules) - before), 'typing' in before]))\n"
    )
    added, typing_before = json.loads(_python("-S", "-c", code).splitlines()[-1])
    assert not typing_before  # else the check below would prove nothing
    assert set(added) <= {"pstp", "__future__"}, added
    code = "import pstp; print(pstp.connect.__name__, pstp.SyncSession.__name__, pstp.Config)"
    assert _python("-c", code).split() == [
        "connect",
        "SyncSession",
        "<class",
        "'pstp.protocol.config.Config'>",
    ]


def test_reading_the_configuration_and_its_addresses_loads_no_cryptography() -> None:
    """Every command loads the settings, which parse channel addresses (MQTT prefixes
    among them): that path must not pull in cryptography (its Rust bindings alone cost
    about 10 ms)."""
    code = (
        "import sys\n"
        "from pstp.settings import check_channel\n"
        "check_channel('mqtt://broker.example.net/home/pstp')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))\n"
    )
    assert _python("-c", code).strip() == "[]"
