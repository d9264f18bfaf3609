"""``pstp init``: create this node's configuration."""

from __future__ import annotations

import argparse
import re
import socket

from pstp.cli.main import Console
from pstp.settings import config_path, create

__all__ = ["run"]


def default_device_id() -> str:
    """This host's name, cut down to a valid device id."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0])[:64]
    return name.strip("-._") or "pstp-device"


def run(args: argparse.Namespace, console: Console) -> int:
    """Write a default configuration (never overwriting one)."""
    path = create(config_path(args.config), args.id or default_device_id(), listen=args.listen)
    console.print(f"created {path} (mode 0600) for device {args.id or default_device_id()!r}")
    console.print("next: `pstp serve` on this device; pair another one with `pstp pair --allow`")
    return 0
