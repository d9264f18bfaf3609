"""``pstp forward``: carry TCP connections through a peer (``-L``) or from it (``-R``)."""

from __future__ import annotations

import argparse

from pstp.cli.common import load_settings, run, stop_event
from pstp.cli.main import Console

__all__ = ["forward"]


def forward(args: argparse.Namespace, console: Console) -> int:
    """Run every ``-L`` and ``-R`` forward over one session until interrupted."""
    import asyncio

    from pstp.client.api import connect_peer
    from pstp.client.forward import Forwarder, parse_spec, show
    from pstp.exceptions import ChannelError
    from pstp.protocol.config import Config

    try:
        local = [parse_spec(text) for text in [*args.local, *args.specs]]
        remote = [parse_spec(text, reverse=True) for text in args.remote]
    except ValueError as exc:
        console.error(str(exc))
        return 2
    if not local and not remote:
        console.error("nothing to forward: give [ADDR:]PORT:HOST:PORT, -L or -R")
        return 2
    settings = load_settings(args)
    if args.peer not in settings.peers:
        console.error(f"no peer {args.peer!r} in {settings.path} (pair first: pstp pair HOST)")
        return 2

    from pstp.asyncio.runner import tune_malloc

    tune_malloc()  # bulk through records: keep freed buffers (docs/benchmarks.md)

    async def main() -> int:
        stop = stop_event()
        forwarder = Forwarder(console.note, args.reason)
        session = await connect_peer(
            settings,
            args.peer,
            address=args.address,
            handlers=forwarder.handlers,
            # Bulk through a forward (a camera's stream, a download) wants the
            # transfers' window and records, as pstp put and get use.
            config=Config(max_record_size=256 << 10, channel_window=4 << 20),
        )
        try:
            for spec in local:
                bound = await forwarder.local(session, spec)
                console.print(
                    f"forwarding {bound} -> {show(spec.host, spec.port)} from {args.peer}"
                )
            for spec in remote:
                try:
                    bound = await forwarder.remote(session, spec)
                except ChannelError as exc:
                    console.error(f"-R {spec}: refused by {args.peer}: {exc.reason or exc}")
                    return 1
                console.print(
                    f"{args.peer} listens on {bound} -> {show(spec.host, spec.port)} here"
                )
            console.note("Ctrl-C stops")
            # Shielded: cancelling the wait must not cancel the session's own end.
            ended: asyncio.Future[object] = asyncio.shield(session.wait_closed())
            stopped: asyncio.Future[object] = asyncio.ensure_future(stop.wait())
            await asyncio.wait({ended, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if ended.done():
                console.error(f"the session with {args.peer} ended")
                return 4
            ended.cancel()
            return 0
        except OSError as exc:
            console.error(f"cannot listen: {exc.strerror or exc}")
            return 4  # bind failed (the exit table's 4)
        finally:
            await forwarder.close()
            await session.close()
            failed = f", {forwarder.failed} failed on the way" if forwarder.failed else ""
            console.note(
                f"{forwarder.carried} connection(s) carried, {forwarder.refused} refused{failed}"
            )

    return run(main())
