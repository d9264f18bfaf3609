"""``pstp init``: create this node's configuration."""

from __future__ import annotations

import argparse
import re
import socket

from pstp.cli.main import Console
from pstp.settings import DEFAULT_PORT, check_address, config_path, create

__all__ = ["check_listen", "run"]


def default_device_id() -> str:
    """This host's name, cut down to a valid device id."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0])[:64]
    return name.strip("-._") or "pstp-device"


def check_listen(text: str) -> None:
    """Check that ``pstp serve`` could listen on ``text`` (``HOST:PORT``).

    Beyond the syntax the configuration's loader checks, the host must resolve
    and be an address of this machine: an ephemeral port is bound on it and
    released at once (the port itself may be busy now; that is not judged).

    Raises:
        ValueError: the reason and the fix.
    """
    host, port = check_address(text, listen=True)
    everywhere = f'use "0.0.0.0:{port}" for every interface'
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r} ({exc.strerror}); {everywhere}") from None
    problem: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.bind((sockaddr[0], 0, *sockaddr[2:]))
            except OSError as exc:
                problem = exc
                continue
        return
    reason = problem.strerror if problem else "no address"
    raise ValueError(f"{host!r} is not an address of this machine ({reason}); {everywhere}")


def run(args: argparse.Namespace, console: Console) -> int:
    """Write a default configuration (never overwriting one)."""
    listen = args.listen or f"0.0.0.0:{DEFAULT_PORT}"
    try:
        check_listen(listen)
    except ValueError as exc:
        console.error(f"--listen: {exc}")
        return 2
    device_id = args.id or default_device_id()
    path = create(config_path(args.config), device_id, listen=listen)
    console.print(f"created {path} (mode 0600) for device {device_id!r}")
    console.print("next: `pstp serve` on this device; pair another one with `pstp pair --allow`")
    return 0
