"""The OpenSSH peer: a private sshd on 127.0.0.1 and the ssh client figures.

The sshd runs from a temporary directory with its own host key, config and
authorized key (a temporary client key), on a free loopback port, as
``sshd -D -f CONFIG -e``.  PAM is off, only public-key authentication is
offered, and the only cipher is ``aes256-gcm@openssh.com``.

Remote commands see ``HOME`` set to an empty temporary directory
(``SetEnv HOME=...``): bash sources ``~/.bashrc`` for commands run by sshd, and
this machine's root ``.bashrc`` (pyenv, cargo) alone costs over 100 ms, which
would measure the shell set-up rather than SSH.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import HOST, free_port

#: The classical key exchange, like for like with PSTP's P-256 ECDH.  OpenSSH
#: 9.x prefers the post-quantum hybrid sntrup761x25519-sha512, which we time too.
CLASSICAL_KEX = "curve25519-sha256"
CIPHER = "aes256-gcm@openssh.com"

_SSHD_CONFIG = """\
Port {port}
ListenAddress {host}
HostKey {dir}/host_ed25519
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin yes
StrictModes no
Ciphers {cipher}
PrintMotd no
PrintLastLog no
UseDNS no
X11Forwarding no
MaxStartups 1000
MaxSessions 1000
LogLevel ERROR
SetEnv HOME={dir}/home
Subsystem sftp internal-sftp
"""


def openssh_missing() -> str | None:
    """Why the OpenSSH peer cannot run here, or ``None`` if it can."""
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        return "sshd not installed (apt-get install -y openssh-server openssh-client)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "ssh not installed (apt-get install -y openssh-client)"
    if os.geteuid() != 0:
        return "the private sshd needs root (it logs in as root)"
    return None


class Sshd:
    """A private sshd on a free loopback port; use as a context manager."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pstp-bench-ssh-"))
        self.port = free_port()
        self.client_key = self.dir / "client_ed25519"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sshd:
        d = self.dir
        (d / "home").mkdir()
        for name in ("host_ed25519", "client_ed25519"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
            )
        shutil.copy(d / "client_ed25519.pub", d / "authorized_keys")
        (d / "sshd_config").write_text(
            _SSHD_CONFIG.format(port=self.port, host=HOST, dir=d, cipher=CIPHER)
        )
        # sshd refuses to start without its privilege-separation directory,
        # which the init system normally creates at boot.
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self._log = (d / "sshd.log").open("wb")
        self.proc = subprocess.Popen(
            [sshd, "-D", "-f", str(d / "sshd_config"), "-e"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(d / 'sshd.log').read_text()[-500:]}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("sshd did not start listening")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def ssh(self, *remote: str, kex: str | None = CLASSICAL_KEX) -> list[str]:
        """The ssh command line for ``remote`` (``kex=None``: OpenSSH's default order)."""
        cmd = [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"Ciphers={CIPHER}",
        ]
        if kex:
            cmd += ["-o", f"KexAlgorithms={kex}"]
        return [*cmd, "-i", str(self.client_key), "-p", str(self.port), f"root@{HOST}", *remote]

    def time_true(self, reps: int, kex: str | None = CLASSICAL_KEX) -> list[float]:
        """Wall time of ``ssh ... true``, ``reps`` times (after one warm-up)."""
        times = []
        for i in range(reps + 1):
            t0 = time.perf_counter()
            subprocess.run(self.ssh("true", kex=kex), check=True, stdin=subprocess.DEVNULL)
            if i:
                times.append(time.perf_counter() - t0)
        return times

    def time_cat(self, nbytes: int, reps: int) -> list[float]:
        """Wall time of ``head -c N /dev/zero | ssh ... 'cat > /dev/null'``, ``reps`` times."""
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            head = subprocess.Popen(
                ["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE
            )
            assert head.stdout is not None
            subprocess.run(self.ssh("cat > /dev/null"), stdin=head.stdout, check=True)
            head.stdout.close()
            head.wait()
            times.append(time.perf_counter() - t0)
        return times
