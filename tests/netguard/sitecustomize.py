"""The test suite's guard: no datagram leaves the machine (issue 12 item 16).

This one file is both imported by tests/conftest.py into the pytest process and,
being named ``sitecustomize`` in a directory that tests/conftest.py puts first on
``PYTHONPATH``, run at start-up by every Python child the tests start
(``pstp serve``, ``python -m pstp discover``, ...).  Standard library only.

It installs an audit hook (:func:`sys.addaudithook`, PEP 578) on the
``socket.sendto`` and ``socket.sendmsg`` events, which CPython raises inside
the socket module for every datagram sent to an address, whoever sends it
(asyncio transports, zeroconf's threads, a raw socket): no monkeypatching to
get around.  A datagram is refused, and recorded, when it would leave this
machine: its destination is not loopback, not unspecified and not a unicast
address of this host, or it is multicast and the socket's multicast interface
is not loopback -- unless the sending thread is in another network namespace
than the one the test session started in (the namespaces that tests build with
``ip netns``: what is sent there cannot leave them).  Refusing raises
:class:`PermissionError` in the sender, so nothing goes out; recording makes
the test fail: every process appends a line to the file named by
:data:`LOG_ENV`, and the autouse fixture in tests/conftest.py fails the test in
whose time a line was added.

Tests of the guard itself: tests/test_netguard.py.

Not seen: ``send()`` on a *connected* UDP socket (CPython raises no audit
event for it; the code under test sends with ``sendto``), a child whose
environment a test builds from nothing (tests/conftest.py puts the guard back
on a ``PYTHONPATH`` that a test only replaces), and programs that are not
Python.  CI runs the whole suite inside a namespace with no route off the
machine besides.
"""

from __future__ import annotations

import os
import sys
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (children start fast)

if TYPE_CHECKING:
    import ipaddress
    import socket

    IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["LOG_ENV", "NETNS_ENV", "PYTEST_ENV", "install", "leak", "recorded"]

#: The network namespace the test session started in (``net:[inode]``).
NETNS_ENV = "PSTP_TEST_NETNS"
#: The file to which child processes append the datagrams they were refused.
LOG_ENV = "PSTP_TEST_LEAKS"
#: The pid of the pytest process (to say who sent).
PYTEST_ENV = "PSTP_TEST_PYTEST_PID"

#: Leaks refused in this process, in order.
recorded: list[str] = []
_state = threading.local()
_installed = False


def netns() -> str:
    """This thread's network namespace, as ``net:[inode]``."""
    try:
        return os.readlink("/proc/thread-self/ns/net")
    except OSError:
        return os.readlink("/proc/self/ns/net")


def _local_addresses() -> set[str]:
    """The unicast addresses of this host (network namespace): IPv4 and IPv6."""
    import ipaddress

    found: set[str] = set()
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as f:
            last = ""
            for line in f:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif text == "/32 host LOCAL" and last:
                    found.add(last)
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                raw = line.split()[0]
                found.add(str(ipaddress.IPv6Address(int(raw, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return found


def _multicast_on_loopback(sock: socket.socket, ip: IPAddress) -> bool:
    import ipaddress
    import socket

    try:
        if ip.version == 4:
            raw = sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
            return ipaddress.IPv4Address(raw).is_loopback
        index = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF)
        return index != 0 and index == socket.if_nametoindex("lo")
    except OSError:
        return False


def leak(sock: object, address: object) -> str | None:
    """Why a datagram from ``sock`` to ``address`` would leave the machine, or ``None``."""
    import ipaddress
    import socket

    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return None  # AF_UNIX, AF_PACKET with an interface name, a connected socket
    host = address[0].split("%", 1)[0]
    if host in ("", "localhost"):
        return None
    if host == "<broadcast>":
        host = "255.255.255.255"
    try:
        ips = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            ips = [ipaddress.ip_address(str(a[4][0])) for a in socket.getaddrinfo(host, None)]
        except (OSError, ValueError):
            return None  # the send fails as well
    local: set[str] | None = None
    for ip in ips:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip.is_unspecified:
            continue
        if ip.is_multicast:
            if isinstance(sock, socket.socket) and _multicast_on_loopback(sock, ip):
                continue
            return f"multicast to {ip} on an interface that is not loopback"
        if local is None:
            local = _local_addresses()
        if str(ip) not in local:
            return f"datagram to {ip} (not loopback, not an address of this host)"
    return None


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event != "socket.sendto" and event != "socket.sendmsg":
        return
    session = os.environ.get(NETNS_ENV)
    if not session or getattr(_state, "busy", False):
        return
    _state.busy = True
    try:
        why = leak(args[0], args[1] if len(args) > 1 else None)
        if why is None or netns() != session:
            return
        port = args[1][1] if isinstance(args[1], tuple) and len(args[1]) > 1 else "?"
        if os.environ.get(PYTEST_ENV) == str(os.getpid()):
            who = "the test itself (pytest process)"
        else:
            who = f"child pid {os.getpid()}: {' '.join(sys.argv)[:120]}"
        line = f"{who}: {why}, port {port}"
        recorded.append(line)
        log = os.environ.get(LOG_ENV)
        if log:
            try:
                fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, (line.replace("\n", " ") + "\n").encode())
                finally:
                    os.close(fd)
            except OSError:
                pass
    finally:
        _state.busy = False
    raise PermissionError(f"tests/netguard: refused, it would leave the machine: {why}")


def install() -> None:
    """Install the audit hook (once per process); it acts only where NETNS_ENV is set."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True


install()
