"""Talk to a running ``pstp serve`` through its control socket (blocking).

See :mod:`pstp.daemon.control` for the protocol.  The daemon's user id is
checked with ``SO_PEERCRED`` before anything is sent: a socket planted by
another user never sees a pairing code.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Generator
from typing import Any

from pstp.exceptions import PstpError
from pstp.settings import Settings, control_path, peer_uid

__all__ = ["ControlError", "NoDaemon", "pair_through_daemon"]


class NoDaemon(PstpError):
    """No ``pstp serve`` answers on this configuration's control socket."""


class ControlError(PstpError):
    """The daemon refused the request or broke the control protocol."""


def pair_through_daemon(
    settings: Settings, code: str, timeout: float
) -> Generator[dict[str, Any], None, None]:
    """Ask the running daemon to open a pairing window; yield its events.

    The first event is ``{"event": "open", ...}``; then one ``failed`` per
    wrong code (``from``, ``left``: the tries the window has left); the last
    ``paired`` or ``closed``.  Closing the generator (or leaving the loop) closes the
    connection, and with it the window.

    Raises:
        NoDaemon: nothing listens on the control socket.
        ControlError: the daemon refused (another window is open, ...), or it
            is not run by our user or root.
    """
    path = control_path(settings)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoDaemon(f"no pstp serve on {path}") from exc
        uid = peer_uid(sock)
        if uid not in (0, os.getuid()):
            raise ControlError(f"{path} is served by uid {uid}, not by us or root: not trusted")
        request = {"op": "pair", "code": code, "timeout": timeout, "progress": True}
        sock.sendall(json.dumps(request).encode() + b"\n")
        with sock.makefile("rb") as lines:
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise ControlError("the daemon sent a malformed reply") from exc
                if not isinstance(event, dict):
                    raise ControlError("the daemon sent a malformed reply")
                if event.get("event") == "error":
                    raise ControlError(str(event.get("message", "refused")))
                yield event
                if event.get("event") in ("paired", "closed"):
                    return
        raise ControlError("the daemon closed the control connection")
    finally:
        sock.close()
