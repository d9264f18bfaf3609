"""The daemon's control socket: local commands for a running ``pstp serve``.

``pstp serve`` listens on a Unix socket (:func:`pstp.settings.control_path`,
``pstp.sock`` beside the configuration, mode 0600).  Only a process of the
daemon's own user, or root, is served: the peer's credentials are checked
with ``SO_PEERCRED`` on every connection, so a socket file left readable by
mistake still admits nobody else.

The protocol is one JSON object per line.  Today it has one request,
``{"op": "pair", "code": "12345678", "timeout": 600}``, which opens a pairing
window on the running daemon (so pairing a new device does not need the
service stopped).  The daemon answers ``{"event": "open", "port": P,
"device_id": ID}``, and when the window closes ``{"event": "paired", "peer":
ID}`` or ``{"event": "closed", "why": TEXT, "failures": N}``; or at once
``{"event": "error", "message": TEXT}``.  Closing the connection closes the
window.  A request with ``"progress": true`` is also sent, for each wrong code
while the window is open, ``{"event": "failed", "from": "HOST:PORT", "left":
N}`` (the tries the window has left); a client that does not ask never sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from pstp.daemon.pairing import PairingWindow
from pstp.exceptions import PstpError
from pstp.settings import Settings, control_path, peer_uid

__all__ = ["ControlServer", "PairingHost"]

_log = logging.getLogger("pstp.control")

#: The longest request line accepted (a pairing request is far shorter).
_MAX_LINE = 4096
#: Seconds a client has to send its request line.
_REQUEST_TIMEOUT = 10.0
#: Longest pairing window a request may ask for, in seconds.
_MAX_WINDOW = 3600.0


class PairingHost(Protocol):
    """What the control socket needs of the daemon it serves.

    :class:`pstp.daemon.app.Daemon` satisfies it; the control socket knows
    nothing else of the daemon (and does not import it).
    """

    @property
    def settings(self) -> Settings:
        """The daemon's loaded configuration (device id, path)."""

    @property
    def pairing(self) -> PairingWindow | None:
        """The open pairing window, if any."""

    @property
    def pairing_port(self) -> int:
        """The port a pairing window announces (0 if the daemon listens nowhere)."""

    def open_pairing(self, window: PairingWindow) -> None:
        """Offer ``window``'s code to new connections.

        Raises:
            PstpError: another window is open.
        """

    def close_pairing(self) -> None:
        """Close the open pairing window, if any."""

    async def run_pairing(self, *, stop: asyncio.Future[Any] | None = None) -> str | None:
        """Wait until the window closes or ``stop`` is done; the new peer's id, if any."""


class ControlServer:
    """The control socket of one daemon.

    Args:
        daemon: the running daemon whose pairing window the commands act on.
        path: the socket's path (default: :func:`pstp.settings.control_path`).
    """

    def __init__(self, daemon: PairingHost, path: Path | None = None) -> None:
        self.daemon = daemon
        self.path = path or control_path(daemon.settings)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket (replacing a stale one left by a daemon that died).

        Raises:
            PstpError: another daemon is serving this configuration.
            OSError: the socket could not be bound.
        """
        if self.path.is_socket():
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # nobody listens: a daemon that died left it
            else:
                raise PstpError(
                    f"another pstp serve is running for this configuration ({self.path})"
                )
        old = os.umask(0o177)  # the socket file is created 0600
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
        finally:
            os.umask(old)
        _log.info("control socket %s", self.path)

    async def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        await self._server.wait_closed()
        self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock)
            if uid not in (0, os.getuid()):
                _log.warning("control socket: refused a client of uid %d", uid)
                await _send(writer, {"event": "error", "message": "not allowed"})
                return
            line = await asyncio.wait_for(reader.readline(), _REQUEST_TIMEOUT)
            if len(line) > _MAX_LINE:
                await _send(writer, {"event": "error", "message": "request too long"})
                return
            try:
                request = json.loads(line)
            except ValueError:
                request = None
            if not isinstance(request, dict) or request.get("op") != "pair":
                await _send(writer, {"event": "error", "message": "unknown request"})
                return
            await self._pair(request, reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            _log.info("control client went away: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _pair(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        daemon = self.daemon
        code, timeout = request.get("code"), request.get("timeout", 600)
        if not isinstance(code, str) or not code.strip():
            await _send(writer, {"event": "error", "message": "no code"})
            return
        if not isinstance(timeout, int | float) or not 0 < timeout <= _MAX_WINDOW:
            await _send(writer, {"event": "error", "message": "timeout out of range"})
            return
        port = daemon.pairing_port
        # PBKDF2 takes a moment: not on the event loop.
        window = await asyncio.to_thread(
            PairingWindow.open,
            code.encode(),
            daemon.settings.device_id,
            str(daemon.settings.path),
            port,
            timeout=float(timeout),
            now=time.monotonic(),
        )
        if request.get("progress") is True:
            # Called on the event loop as the failed attempt ends; the line is small,
            # so it goes out without waiting for drain.
            window.on_failed = lambda peer, left: _post(
                writer, {"event": "failed", "from": peer, "left": left}
            )
        try:
            daemon.open_pairing(window)
        except PstpError as exc:
            await _send(writer, {"event": "error", "message": str(exc)})
            return
        try:
            await _send(
                writer, {"event": "open", "port": port, "device_id": daemon.settings.device_id}
            )
            async with asyncio.TaskGroup() as tasks:
                hung_up = tasks.create_task(_hang_up(reader))  # the client leaving closes it
                try:
                    peer = await daemon.run_pairing(stop=hung_up)
                finally:
                    hung_up.cancel()
        finally:
            if daemon.pairing is window:
                daemon.close_pairing()
        v = window.verifier
        if peer is not None:
            await _send(writer, {"event": "paired", "peer": peer})
            return
        if v.successes:
            why = "the code was right but the pairing exchange did not complete"
        elif v.max_failures is not None and v.failures >= v.max_failures:
            why = f"{v.failures} wrong codes"
        elif v.expires_at is not None and time.monotonic() >= v.expires_at:
            why = "timeout"
        else:
            why = "cancelled"
        await _send(writer, {"event": "closed", "why": why, "failures": v.failures})


async def _hang_up(reader: asyncio.StreamReader) -> None:
    """Return when the client sends anything or goes away (a reset is going away)."""
    with contextlib.suppress(OSError):
        await reader.read(1)


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    _post(writer, message)
    await writer.drain()


def _post(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    if not writer.is_closing():
        writer.write(json.dumps(message).encode() + b"\n")
