"""``pstp serve``: run this device until SIGTERM or SIGINT; SIGHUP reloads the config."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os

from pstp.cli.common import load_settings, run, stop_event
from pstp.cli.main import Console

__all__ = ["serve"]


def serve(args: argparse.Namespace, console: Console) -> int:
    """Serve the configured peers on the configured addresses."""
    settings = load_settings(args)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
            stream=console.err,
        )

    async def main() -> int:
        import asyncio
        import signal

        from pstp.daemon.app import Daemon
        from pstp.settings import ConfigError

        daemon = Daemon(settings)
        await daemon.start()
        # `pstp device remove` signals this pid so the removed peer's sessions end now.
        pidfile = settings.path.with_name("pstp.pid")
        pidfile.write_text(f"{os.getpid()}\n")
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
        console.print(f"{settings.device_id}: serving {len(settings.peers)} peer(s) on {ports}")
        try:
            await stop_event().wait()
        finally:
            await daemon.close()
            pidfile.unlink(missing_ok=True)
        console.print("stopped")
        return 0

    return run(main())
