"""The blocking fast path of ``pstp run``: a fresh process that never imports asyncio.

A one-shot command spends most of its life starting Python, and importing
asyncio is a large share of that (docs/benchmarks.md).  When a peer has an
address to try (``--address``, or the one remembered from last time), the
command connects with the blocking driver (:mod:`pstp.sync`) and runs the
action on that session.  Only when no such address answers does it fall back
to discovery, which needs asyncio (:func:`pstp.client.api.discover_peer`).

Nothing here may import asyncio, directly or through another module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pstp.exceptions import ChannelError, PstpError
from pstp.protocol.config import Config
from pstp.protocol.streams import (
    EXIT_REMOTE_FAILURE,
    STDOUT,
    Direction,
    FrameDecoder,
    failure_status,
)
from pstp.settings import Settings, parse_address, set_peer_address
from pstp.sync.client import connect
from pstp.sync.connection import SyncSession
from pstp.wire.messages import ChannelCode, Params

__all__ = ["connect_known", "remember_address", "run_action"]

Output = Callable[[bytes], object]


def remember_address(settings: Settings, peer_id: str, address: str) -> None:
    """Store ``address`` as the peer's last good one (a failure is only logged)."""
    try:
        set_peer_address(settings.path, peer_id, address)
    except (OSError, PstpError) as exc:  # remembering is a convenience, never fatal
        import logging  # only here: logging costs ~3 ms of start-up

        logging.getLogger("pstp.client").warning(
            "could not remember %s for %s: %s", address, peer_id, exc
        )


def connect_known(
    settings: Settings,
    peer_id: str,
    *,
    address: str | None = None,
    config: Config | None = None,
) -> tuple[SyncSession | None, list[str]]:
    """Try ``address``, then the peer's remembered address, with the blocking driver.

    Args:
        settings: our configuration (holds the peer's pair key).
        peer_id: the peer's device id.
        address: ``host[:port]`` to try before the remembered one.
        config: protocol limits.

    Returns:
        The session (``None`` if no address answered) and a note per address
        that failed, for the error message if discovery fails too.

    Raises:
        KeyError: no such peer in the configuration.
        HandshakeFailed: a device answered but did not prove the pair key.
    """
    peer = settings.peers[peer_id]
    tried: list[str] = []
    for candidate in dict.fromkeys(a for a in (address, peer.address) if a):
        host, port = parse_address(candidate)
        try:
            session = connect(
                host,
                port,
                pair_key=peer.key,
                device_id=peer_id,
                config=config,
                own_id=settings.device_id,
            )
        except OSError as exc:
            tried.append(f"{candidate} ({exc.strerror or exc})")
            continue
        if candidate != peer.address:
            remember_address(settings, peer_id, candidate)
        return session, tried
    return None, tried


def run_action(
    session: SyncSession,
    name: str,
    args: Mapping[str, str | int | float | bool] | None = None,
    *,
    reason: str | None = None,
    stdout: Output,
    stderr: Output,
) -> int:
    """Run the peer's configured action ``name`` (the blocking twin of
    :func:`pstp.client.remote.run_action`, same channel, same results).

    Returns:
        The action's exit status (124 if it timed out, 127 if there is no
        such action, 255 if the server failed otherwise).

    Raises:
        ChannelError: the peer refused the action (its policy).
        ConnectionClosed: the session ended.
        RemoteProtocolError: the peer sent a malformed stream frame.
    """
    params: Params = {"name": name, "reason": reason}
    for key, value in (args or {}).items():
        params[f"arg.{key}"] = value
    # OPEN and EOF leave together; a refusal surfaces on the first read.
    channel = session.open_channel("action", params, wait_accepted=False)
    try:
        decoder = FrameDecoder(Direction.TO_CLIENT)
        try:
            # An action reads no input.  If the device has already ended the
            # channel (an unknown action), this raises what the reads would.
            channel.write_eof()
            for data in channel:
                for frame in decoder.feed(data):
                    (stdout if frame.type == STDOUT else stderr)(frame.payload)
            decoder.eof()
            status = channel.wait_closed()
        except ChannelError as exc:
            failed = failure_status(exc.code, exc.reason)
            if failed is None:
                raise
            stderr(f"pstp: {exc.reason or 'the remote command failed'}\n".encode())
            return failed
        return EXIT_REMOTE_FAILURE if status is None else status
    except BaseException:
        channel.close(code=ChannelCode.CANCELLED)
        raise
