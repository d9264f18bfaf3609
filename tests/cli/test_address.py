"""`--address` is used alone, as ssh uses the host it is given (issue: no silent fallback)."""

from __future__ import annotations

import os
from pathlib import Path

from pstp.settings import add_peer, create
from tests.cli.test_pair import free_port, pstp
from tests.daemon.serving import PHONE, serve

HOME = """\
[device]
id = "home"
listen = ["127.0.0.1:{port}"]
discovery = false

[peers.phone]
key = "{phone}"
[peers.phone.policy]
"""


def test_ping_with_an_unreachable_address_fails_instead_of_using_the_remembered_one(
    tmp_path: Path,
) -> None:
    """home answers at its remembered address; `--address` elsewhere must still fail.

    Before, `pstp ping --address 10.77.0.1:9999 home` reported "connected" through
    the remembered address, and an unreachable one fell back to discovery.
    """
    served = serve(tmp_path, HOME)
    try:
        phone = create(tmp_path / "phone.toml", "phone")
        os.chmod(phone, 0o600)
        add_peer(phone, "home", PHONE, address=f"127.0.0.1:{served.port}")
        dead = free_port()
        failed = pstp("ping", "--address", f"127.0.0.1:{dead}", "home", config=phone)
        assert failed.returncode != 0, failed.stdout
        assert f"127.0.0.1:{dead}" in failed.stderr and "used alone" in failed.stderr
        assert "connected" not in failed.stdout
        ok = pstp("ping", "--address", f"127.0.0.1:{served.port}", "home", config=phone)
        assert ok.returncode == 0, ok.stderr
        remembered = pstp("ping", "home", config=phone)
        assert remembered.returncode == 0, remembered.stderr
    finally:
        served.stop()
