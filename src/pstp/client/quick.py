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
from typing import Any

from pstp.address import Address
from pstp.exceptions import ChannelError, PstpError
from pstp.protocol.config import Config
from pstp.protocol.kinds import ActionOpen
from pstp.protocol.streams import (
    EXIT_REMOTE_FAILURE,
    STDOUT,
    Direction,
    FrameDecoder,
    failure_status,
)
from pstp.settings import Settings, check_channel, set_peer_address
from pstp.sync.client import connect
from pstp.sync.connection import SyncSession
from pstp.wire.messages import ChannelCode, Params

__all__ = [
    "Attempts",
    "PeerNotFound",
    "action_params",
    "connect_known",
    "failure_note",
    "os_reason",
    "remember_address",
    "run_action",
    "run_peer_action",
]

Output = Callable[[bytes], object]


def os_reason(exc: OSError) -> str:
    """Why a connect failed, in words (``connection refused``, ``timed out``...).

    asyncio's ``Connect call failed ('10.0.0.1', 9000)`` repeats the address and
    hides the cause; the errno says it.
    """
    import os

    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if verify := getattr(exc, "verify_message", None):  # ssl.SSLCertVerificationError
        return f"TLS certificate not trusted: {verify}"
    if type(exc).__module__ == "ssl":
        return f"TLS failed: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, ConnectionRefusedError) and not exc.errno:
        return str(exc)  # a refused WebSocket upgrade says its HTTP status
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def info(message: str, *args: object) -> None:
    """Log at INFO for ``-v``, without importing logging when nobody configured it.

    logging costs about 3 ms of a fresh process's start-up; ``pstp -v`` imports it.
    """
    import sys

    if "logging" in sys.modules:
        sys.modules["logging"].getLogger("pstp.client").info(message, *args)


def remember_address(settings: Settings, peer_id: str, address: str) -> None:
    """Store ``address`` as the peer's last good one (a failure is only logged)."""
    try:
        set_peer_address(settings.path, peer_id, address)
    except (OSError, PstpError) as exc:  # remembering is a convenience, never fatal
        import logging  # only here: logging costs ~3 ms of start-up

        logging.getLogger("pstp.client").warning(
            "could not remember %s for %s: %s", address, peer_id, exc
        )


class PeerNotFound(PstpError):
    """The peer answered at no address tried (and, unless one was given, not to discovery)."""


class Attempts:
    """The reach ladder for a peer: the addresses to try, in order, and how each went (no I/O).

    Both drivers' connect loops (:func:`connect_known` here and
    :func:`pstp.client.api.connect_peer`) share it.  An explicit ``address``
    (``--address``) is tried alone: if it fails, that is the answer, with no
    other address and no discovery behind it.  Without one, the peer's
    ``reach`` order is followed: ``direct`` (the remembered address, then the
    TCP addresses in ``via``), ``lan`` (discovery, done by the caller),
    ``websocket`` and ``mqtt`` (those addresses in ``via``).  A direct address
    that works and is new is remembered.

    Args:
        settings: our configuration (holds the peer's pair key).
        peer_id: the peer's device id.
        address: a channel address to use alone.
        config: protocol limits.

    Raises:
        KeyError: no such peer in the configuration.
        ValueError: ``address`` is not a channel address.
    """

    def __init__(
        self, settings: Settings, peer_id: str, address: str | None, config: Config | None
    ) -> None:
        peer = settings.peers[peer_id]
        self.settings, self.peer_id, self.remembered = settings, peer_id, peer.address
        #: An address was given: it is the only one tried, and no discovery follows.
        self.explicit = address is not None
        #: (step, [(address as written, parsed)]) in the order to try them.
        self.steps: list[tuple[str, list[tuple[str, Address]]]] = []
        if address is not None:
            self.steps.append(("given", [(address, check_channel(address))]))
        else:
            via = [(a, check_channel(a)) for a in peer.via]
            for step in peer.reach:
                if step == "direct":
                    found = [(peer.address, check_channel(peer.address))] if peer.address else []
                    found += [(a, w) for a, w in via if w.scheme == "tcp"]
                elif step == "websocket":
                    found = [(a, w) for a, w in via if w.websocket]
                elif step == "mqtt":
                    found = [(a, w) for a, w in via if w.mqtt]
                else:
                    found = []
                self.steps.append((step, list(dict.fromkeys(found))))
        #: The CA file for a ``wss://`` address of this peer (None: the system's).
        self.ca_file = peer.ca_file
        #: The keyword arguments of either driver's ``connect``.
        self.options: dict[str, Any] = {
            "pair_key": peer.key,
            "device_id": peer.device_id,
            "config": config,
            "own_id": settings.device_id,
        }
        #: A note per address that failed, for the error message.
        self.tried: list[str] = []
        #: The addresses tried so far (the asyncio driver skips them).
        self.done: set[str] = set()

    @property
    def candidates(self) -> list[tuple[str, Address]]:
        """Every address of the ladder, in order (discovery aside)."""
        return [c for _, found in self.steps for c in found]

    def failed(self, candidate: str, exc: OSError, step: str = "direct") -> None:
        """Note that ``candidate`` could not be reached."""
        self.tried.append(f"{candidate} ({self._label(candidate, step)}): {os_reason(exc)}")
        info("%s: %s", self.peer_id, self.tried[-1])

    def give_up(self) -> None:
        """After every candidate failed: raise if an address was given (no discovery then).

        Raises:
            PeerNotFound: the given address did not answer.
        """
        if self.explicit:
            raise PeerNotFound(
                f"{self.peer_id} not reached: tried {'; '.join(self.tried)}"
                f" (--address is used alone, without discovery)."
                f" `pstp doctor {self.peer_id}` says why"
            )

    def worked(self, candidate: str, step: str = "direct") -> None:
        """Say which way worked; remember a given or direct address that is new."""
        which = self._label(candidate, step)
        info("%s: connected at %s (%s)", self.peer_id, candidate, _STEP_WORDS.get(which, which))
        if which in ("given", "direct") and candidate != self.remembered:
            remember_address(self.settings, self.peer_id, candidate)

    def _label(self, candidate: str, step: str) -> str:
        if self.explicit:
            return "given"
        if step == "direct" and candidate == self.remembered:
            return "remembered"
        return step


_STEP_WORDS = {
    "given": "given address",
    "remembered": "remembered address",
    "direct": "direct address",
    "websocket": "WebSocket",
    "mqtt": "through the MQTT broker",
}


def connect_known(
    settings: Settings,
    peer_id: str,
    *,
    address: str | None = None,
    config: Config | None = None,
) -> tuple[SyncSession | None, Attempts]:
    """Try the first rung of the ladder with the blocking driver: given or direct TCP addresses.

    It stops at the first address the blocking driver cannot reach (WebSocket,
    MQTT) and when the ladder does not start with a direct step: the asyncio
    driver goes on from there (:func:`pstp.client.api.connect_peer` with
    ``attempts=``).

    Args:
        settings: our configuration (holds the peer's pair key).
        peer_id: the peer's device id.
        address: a channel address to use alone.
        config: protocol limits.

    Returns:
        The session (``None`` if no address answered here) and the ladder, with
        what was tried so far.

    Raises:
        KeyError: no such peer in the configuration.
        HandshakeFailed: a device answered but did not prove the pair key.
        PeerNotFound: ``address`` was given, is TCP, and did not answer.
    """
    attempts = Attempts(settings, peer_id, address, config)
    step, found = attempts.steps[0] if attempts.steps else ("", [])
    if step not in ("given", "direct"):
        return None, attempts
    for candidate, where in found:
        if where.scheme != "tcp":  # the blocking driver speaks TCP only: asyncio takes it
            return None, attempts
        attempts.done.add(candidate)
        try:
            session = connect(where.host, where.port, **attempts.options)
        except OSError as exc:
            attempts.failed(candidate, exc, step)
            continue
        attempts.worked(candidate, step)
        session.reached = (step, candidate)
        return session, attempts
    attempts.give_up()
    return None, attempts


def action_params(
    name: str, args: Mapping[str, str | int | float | bool] | None, reason: str | None
) -> Params:
    """The OPEN params of an ``action`` channel (docs/protocol.md §17.6)."""
    return ActionOpen(name=name, reason=reason, args=dict(args or {})).to_params()


def failure_note(exc: ChannelError) -> tuple[int, bytes]:
    """The exit status and stderr note for a channel that failed on the remote side.

    Shared by both drivers' clients (docs/protocol.md §17.3, §17.9).

    Raises:
        ChannelError: ``exc`` itself, if its code is no failure of what ran (a
            refusal, a cancellation...): the caller reports it.
    """
    status = failure_status(exc.code, exc.reason)
    if status is None:
        raise exc
    return status, f"pstp: {exc.reason or 'the remote command failed'}\n".encode()


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
    params = action_params(name, args, reason)
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
            status, note = failure_note(exc)
            stderr(note)
            return status
        return EXIT_REMOTE_FAILURE if status is None else status
    except BaseException:
        channel.close(code=ChannelCode.CANCELLED)
        raise


def run_peer_action(
    settings: Settings,
    peer_id: str,
    name: str,
    args: Mapping[str, str | int | float | bool] | None = None,
    *,
    reason: str | None = None,
    address: str | None = None,
    stdout: Output,
    stderr: Output,
) -> int:
    """Connect to a configured peer and run its action ``name``: the driver is chosen here.

    With an address to try (``address`` or the remembered one) this runs on the
    blocking driver and never imports asyncio; only when none answers does it
    discover the peer, on asyncio (imported then).

    Returns:
        As :func:`run_action`.

    Raises:
        KeyError: no such peer in the configuration.
        PeerNotFound: no address worked and discovery found nothing.
        HandshakeFailed: a device answered but did not prove the pair key.
        ChannelError: the peer refused the action (its policy).
        ConnectionClosed: the session ended.
    """
    session, attempts = connect_known(settings, peer_id, address=address)
    if session is not None:
        with session:
            return run_action(session, name, args, reason=reason, stdout=stdout, stderr=stderr)

    # Imported only here: asyncio costs start-up time the fast path avoids.
    from pstp.asyncio.runner import run as run_loop
    from pstp.client import api, remote

    async def rest() -> int:
        # The rest of the ladder (discovery, WebSocket, MQTT) runs on asyncio.
        opened = api.connect_peer(settings, peer_id, address=address, attempts=attempts)
        async with await opened as found:
            return await remote.run_action(
                found, name, args, reason=reason, stdout=stdout, stderr=stderr
            )

    return run_loop(rest())
