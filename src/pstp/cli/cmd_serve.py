"""``pstp serve``: run this device until SIGTERM or SIGINT; SIGHUP reloads the config."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pstp.cli.common import load_settings, run, stop_event
from pstp.cli.main import Console

if TYPE_CHECKING:
    from pstp.asyncio.server import Server

__all__ = ["serve"]


def serve(args: argparse.Namespace, console: Console) -> int:
    """Serve the configured peers on the configured addresses."""
    from pstp.daemon.harden import harden
    from pstp.daemon.logsafe import RateLimit, install

    limit: RateLimit | None = None
    if not logging.getLogger().handlers:
        # Peer text is escaped and floods of one message are cut (pstp.daemon.logsafe).
        _, limit = install(console.err)
    harden()  # before the keys are read: no core dumps; a higher descriptor limit
    settings = load_settings(args)

    from pstp.asyncio.runner import tune_malloc

    tune_malloc()  # bulk through records: keep freed buffers (docs/benchmarks.md)

    async def main() -> int:
        import asyncio
        import signal

        from pstp.daemon.app import Daemon
        from pstp.settings import ConfigError

        daemon = Daemon(settings)
        await daemon.start()
        # `pstp device remove` signals this pid so the removed peer's sessions end now.
        # It is locked while this daemon runs: a pid in an unlocked file is stale.
        pidfile = settings.path.with_name("pstp.pid")
        pid_fd = _write_pidfile(pidfile)
        loop = asyncio.get_running_loop()

        async def reload() -> None:
            try:
                await daemon.reload()
            except ConfigError as exc:
                console.error(f"reload refused, keeping the running configuration: {exc}")

        def on_sighup() -> None:
            # The daemon's task group owns the reload; close() ends it.  A SIGHUP
            # while the daemon is stopping has nothing left to reload.
            with contextlib.suppress(RuntimeError):
                daemon.spawn(reload())

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        pairs = zip(settings.listen, daemon.servers, strict=True)
        ports = ", ".join(f"{host}:{server.port}" for (host, _), server in pairs)
        ws = zip(settings.websocket, daemon.websocket_servers, strict=True)
        ports += "".join(f", ws://{where.netloc}{where.path}" for where, _ in ws)
        ports += "".join(f", through {where}" for where in settings.mqtt)
        console.print(f"{settings.device_id}: serving {len(settings.peers)} peer(s) on {ports}")
        for where, server in zip(settings.mqtt, daemon.mqtt_servers, strict=True):
            daemon.spawn(_say_connected(console, str(where), server))
        if settings.advertise:
            shown = ", ".join(str(a) for a in settings.advertise)
            console.print(f"advertised to peers as: {shown}")
        try:
            await stop_event().wait()
        finally:
            await daemon.close()
            if pid_fd is not None:
                pidfile.unlink(missing_ok=True)
                os.close(pid_fd)
        console.print("stopped")
        return 0

    try:
        return run(main())
    finally:
        if limit is not None:
            limit.flush()


async def _say_connected(console: Console, where: str, server: Server) -> None:
    """Print once that the broker took the device's connection (a lost one is logged)."""
    if server.mqtt is not None:
        await server.mqtt.ready.wait()
        console.print(f"{where}: connected to the broker; reachable through it")


def _write_pidfile(path: Path) -> int | None:
    """Write this process's pid to ``path`` under an exclusive flock kept until exit.

    Returns the descriptor holding the lock, or ``None`` (logged) when the file
    cannot be written or another process holds its lock.
    """
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        logging.getLogger("pstp.daemon").warning("no pid file %s: %s", path, exc)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:
        os.close(fd)
        logging.getLogger("pstp.daemon").warning("no pid file %s: %s", path, exc)
        return None
    return fd
