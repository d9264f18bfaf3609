"""`pstp demo`: two real processes, said in plain words, ending with what to do next."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.cli.test_pair import env_for
from tests.helpers import ROOT, TIMEOUT

#: Names from docs/protocol.md that mean nothing to someone trying PSTP for the first time.
JARGON = ("e_R", "e_I", "confirm_I", "confirm_R", "HS_INIT", "HS_RESP", "kid", "psk", "Noise")


def test_demo_speaks_plain_words_and_ends_with_the_next_steps() -> None:
    """Exit 0; no spec jargon; the proof, the key exchange, the encrypted session and the
    round trips are each said; the last lines name init, pair and the README walkthrough."""
    out = subprocess.run(
        [sys.executable, "-m", "pstp", "demo"],
        capture_output=True,
        text=True,
        env=env_for(ROOT / "no-such-config.toml"),
        timeout=TIMEOUT * 6,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    words = set(re.findall(r"[A-Za-z_]+", text))
    assert not words & set(JARGON), words & set(JARGON)
    assert "without sending it" in text and "fresh key exchange" in text
    assert re.search(r"Encrypted session [0-9a-f]{16}\.\.\. is open \(AES-256-GCM", text)
    assert len(re.findall(r"device answered '.*' \([0-9.]+ ms\)", text)) == 2
    assert "closed cleanly" in text
    tail = text[text.index("Next,") :]
    assert "pstp init --id NAME" in tail and "pstp pair --allow" in tail
    assert "pstp pair HOST" in tail and "README.md" in tail
