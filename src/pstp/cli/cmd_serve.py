"""``pstp serve``: run this device until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging

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
        from pstp.daemon.app import Daemon

        daemon = Daemon(settings)
        await daemon.start()
        ports = ", ".join(
            f"{h}:{s.port}" for (h, _), s in zip(settings.listen, daemon.servers, strict=True)
        )
        console.print(f"{settings.device_id}: serving {len(settings.peers)} peer(s) on {ports}")
        await stop_event().wait()
        await daemon.close()
        console.print("stopped")
        return 0

    return run(main())
