"""A throw-away CA and a real nginx TLS reverse proxy in front of a ``ws://`` device.

Used by tests/daemon/test_websocket.py and by the benchmark (``bench`` may import this
module; it imports nothing from pytest or bench).  The nginx ``server`` block is the one
docs/howto/outside.md shows, read from the how-to and filled in with this run's ports and
files, so the documented configuration is the tested one.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers import ROOT

__all__ = ["HOWTO", "Certs", "Nginx", "howto_nginx_block", "make_certs", "nginx_config"]

#: The how-to whose nginx block is tested.
HOWTO = ROOT / "docs" / "howto" / "outside.md"

# What the how-to's block says, and what a run puts in its place (each must occur once).
_LISTEN = "listen 443 ssl;"
_CERT = "/etc/letsencrypt/live/home.example.org/fullchain.pem"
_KEY = "/etc/letsencrypt/live/home.example.org/privkey.pem"
_UPSTREAM = "http://127.0.0.1:8080;"


@dataclass(frozen=True)
class Certs:
    """PEM files: the CA a client trusts, and the server's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certs(dir: Path) -> Certs:
    """A fresh CA and a server certificate it signed, for 127.0.0.1 and ``localhost``.

    Both are P-256 and valid for a day, with the extensions a strict verifier wants
    (basic constraints, key usage, key identifiers); the CA's key is not kept.
    """
    dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pstp test CA (throw-away)")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certs = Certs(dir / "ca.pem", dir / "server.pem", dir / "server.key")
    certs.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certs.key.touch(mode=0o600)
    certs.key.write_bytes(_pem_key(key))
    return certs


def howto_nginx_block(howto: Path = HOWTO) -> str:
    """The first ```nginx block of the how-to, as written.

    Raises:
        AssertionError: the how-to has no such block.
    """
    lines = howto.read_text().splitlines()
    try:
        start = lines.index("```nginx") + 1
        end = lines.index("```", start)
    except ValueError:
        raise AssertionError(f"{howto}: no ```nginx block") from None
    return "\n".join(lines[start:end]) + "\n"


def nginx_config(dir: Path, port: int, upstream: int, certs: Certs) -> str:
    """A whole nginx.conf: the how-to's server block on 127.0.0.1:``port`` with ``certs``,
    proxying to ``ws://127.0.0.1:upstream``; pid, logs and temporary files in ``dir``.

    Raises:
        AssertionError: the how-to's block no longer says what is replaced here once.
    """
    block = howto_nginx_block()
    for old, new in (
        (_LISTEN, f"listen 127.0.0.1:{port} ssl;"),
        (_CERT, str(certs.cert)),
        (_KEY, str(certs.key)),
        (_UPSTREAM, f"http://127.0.0.1:{upstream};"),
    ):
        if block.count(old) != 1:
            raise AssertionError(f"{HOWTO}'s nginx block must contain {old!r} exactly once")
        block = block.replace(old, new)
    temp = "\n".join(
        f"    {kind}_temp_path {dir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    server = "".join(f"    {line}\n" if line else "\n" for line in block.splitlines())
    return (
        f"worker_processes 1;\npid {dir / 'nginx.pid'};\nerror_log {dir / 'error.log'} warn;\n"
        f"events {{\n    worker_connections 1024;\n}}\n"
        f"http {{\n    access_log off;\n{temp}\n\n{server}}}\n"
    )


class Nginx:
    """nginx in the foreground, a child of this process, proxying ``wss://`` to a device.

    Use as a context manager: it serves ``wss://127.0.0.1:{port}/pstp`` once entered,
    and is stopped (SIGTERM, then SIGKILL) on exit.

    Raises:
        AssertionError: nginx is not installed (``apt-get install nginx``; .ci/run does),
            or did not start; its error log is in the message.
    """

    def __init__(self, dir: Path, upstream: int, certs: Certs, port: int, timeout: float) -> None:
        self.dir = dir
        self.port = port
        self.timeout = timeout
        self.conf = dir / "nginx.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        binary = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
        )
        if binary is None:
            raise AssertionError(
                "nginx is not installed: the wss:// tests and benchmark rows run a real nginx "
                "TLS proxy (apt-get install nginx; .ci/run installs it)"
            )
        self.binary = binary
        dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(nginx_config(dir, port, upstream, certs))

    def error_log(self) -> str:
        """What nginx wrote to its error log so far."""
        logs = (self.dir / name for name in ("stderr.log", "error.log"))
        return "".join(p.read_text(errors="replace") for p in logs if p.exists())

    def __enter__(self) -> Nginx:
        self._stderr = (self.dir / "stderr.log").open("wb")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "-p",
                str(self.dir),
                "-e",
                str(self.dir / "error.log"),
                "-c",
                str(self.conf),
                "-g",
                "daemon off;",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.__exit__()
                raise AssertionError(f"nginx exited {code}: {self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise AssertionError(
                        f"nginx did not listen on 127.0.0.1:{self.port}: {self.error_log()}"
                    ) from None
                time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(self.timeout)
