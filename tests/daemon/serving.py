"""A real `pstp serve` process for tests that attack or measure the daemon."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pstp.protocol.config import Config
from pstp.protocol.connection import Connection, ConnectionState, Role
from tests.cli.test_pair import env_for, free_port
from tests.helpers import TIMEOUT

#: Pair keys of the peers the tests' configurations name.
PHONE = bytes(range(32))
GUEST = bytes(range(2, 34))


@dataclass
class Served:
    """A running daemon: its port, folder, process and what it wrote to stderr."""

    port: int
    dir: Path
    proc: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    @property
    def audit(self) -> Path:
        """The daemon's audit database."""
        return self.dir / "audit.sqlite"

    def rss_kib(self) -> int:
        """The daemon's resident set size now, in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        """Descriptors the daemon holds open now."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stderr(self) -> str:
        """Everything the daemon logged so far."""
        return "".join(self.log)

    def stop(self) -> None:
        """Terminate the daemon and wait for it."""
        self.proc.terminate()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


def serve(dir: Path, config: str, *, preexec: object = None, **env: str) -> Served:
    """Start `pstp serve` with ``config`` (``{port}`` and ``{python}`` are filled in).

    ``{phone}`` and ``{guest}`` are replaced by the hex pair keys above.
    """
    port = free_port()
    cfg = dir / "pstp.toml"
    cfg.write_text(
        config.format(port=port, python=sys.executable, phone=PHONE.hex(), guest=GUEST.hex())
    )
    os.chmod(cfg, 0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pstp", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(cfg, **env),
        preexec_fn=preexec,  # type: ignore[arg-type]
    )
    assert proc.stdout is not None and proc.stderr is not None
    served = Served(port, dir, proc)
    err = proc.stderr

    def drain() -> None:  # keep the daemon's stderr pipe from filling up
        for line in err:
            served.log.append(line)

    threading.Thread(target=drain, daemon=True).start()
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.wait(TIMEOUT)
        raise AssertionError(f"daemon did not start: {line!r} {served.stderr()}")
    return served


def raw_session(
    port: int, key: bytes, *, rcvbuf: int | None = None
) -> tuple[socket.socket, Connection]:
    """An established sans-I/O client session over a blocking socket (for misbehaving peers).

    ``rcvbuf`` shrinks the socket's receive buffer before connecting (a peer that
    reads nothing then fills up quickly).
    """
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    conn = Connection(
        Role.CLIENT, Config(), pair_key=key, responder_id="home", timestamp=time.time_ns()
    )
    conn.start(time.monotonic())
    sock.sendall(conn.data_to_send())
    while conn.state is not ConnectionState.ESTABLISHED:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"handshake failed: {conn.close_exc}")
        conn.receive_data(data, time.monotonic())
        if out := conn.data_to_send():
            sock.sendall(out)
    return sock, conn
