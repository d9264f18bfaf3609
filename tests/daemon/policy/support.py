"""Configurations and policies the policy tests share."""

from __future__ import annotations

import tomllib
from datetime import datetime
from pathlib import Path

from pstp.daemon.policy import (
    Policy,
)

__all__ = [
    "ACTIONS",
    "AT",
    "FULL",
    "KEY",
    "MON",
    "config_text",
    "line_of",
    "make_policy",
    "write_config",
]


KEY = "ab" * 32
ACTIONS = """\
[actions."kettle.on"]
argv = ["/usr/local/bin/kettle", "on", "{temp}"]
args = { temp = { type = "int", min = 40, max = 100, default = 100 } }

[actions."lights.on"]
argv = ["/usr/local/bin/lights", "{room}"]
args = { room = { type = "str", choices = ["hall", "kitchen"] } }

[actions.say]
args.text = { type = "str", max_len = 20, pattern = "[a-z ]+" }
args.loud = { type = "bool", default = false }
args.volume = { type = "float", min = 0, max = 1.5, default = 0.5 }
"""
FULL = """\
[peers.phone.policy]
actions = ["kettle.*", "say"]
exec = [["uptime"], ["systemctl", "status", "*"], ["ls", "-l", "/srv/**"], ["echo", "**"]]
shell = true
files = [ { root = "/srv/share" }, { root = "/srv/share/inbox", write = true } ]
forward = ["127.0.0.1:554", "Camera.Local:80", "[::1]:22"]
"""
#: A Monday, mid-morning, local (naive) time.
MON = datetime(2026, 11, 23, 10, 0)
AT = MON


def config_text(policy: str = "", *, actions: str = ACTIONS, peers: str = "phone") -> str:
    """A whole configuration: device, actions, the peers (with keys), then ``policy``."""
    peer_tables = "".join(f'[peers.{p}]\nkey = "{KEY}"\n\n' for p in peers.split())
    return f'[device]\nid = "home"\n\n{actions}\n{peer_tables}{policy}'


def make_policy(policy: str = FULL, **kw: str) -> Policy:
    """A Policy from configuration text."""
    text = config_text(policy, **kw)
    return Policy.from_data(tomllib.loads(text), path="pstp.toml", text=text)


def write_config(tmp_path: Path, text: str) -> Path:
    """Write a private configuration file."""
    path = tmp_path / "pstp.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- config errors


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line containing ``needle``."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)
