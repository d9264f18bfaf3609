"""Process hardening at ``pstp serve`` start-up.

* **No core dumps.**  The daemon's memory holds every peer's pair key, so it
  must never be written to a core file: ``RLIMIT_CORE`` becomes 0 (soft and
  hard) and, on Linux, ``prctl(PR_SET_DUMPABLE, 0)`` also refuses piped core
  handlers and ptrace/``/proc/PID/mem`` access by same-uid processes without
  ``CAP_SYS_PTRACE``.  (Programs the daemon executes are dumpable again after
  ``execve``, as the kernel resets the flag, but inherit the zero core limit.)
* **Descriptors.**  Each connection costs a descriptor, and service managers
  start processes with a soft ``RLIMIT_NOFILE`` of 1 024: the soft limit is
  raised to the hard limit, capped at :data:`MAX_FILES`.

contrib/pstp.service sets ``LimitCORE=0`` and ``LimitNOFILE=65536`` as well.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys

__all__ = ["MAX_FILES", "harden"]

_log = logging.getLogger(__name__)

#: The highest soft RLIMIT_NOFILE :func:`harden` asks for.
MAX_FILES = 65536

_PR_SET_DUMPABLE = 4


def _set_not_dumpable() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        failed = libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0
    except (OSError, AttributeError) as exc:
        _log.warning("could not make the daemon non-dumpable: %s", exc)
        return
    if failed:
        _log.warning(
            "could not make the daemon non-dumpable: %s", ctypes.get_errno() or "prctl failed"
        )


def _raise_nofile(cap: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            _log.warning("could not raise the descriptor limit to %d: %s", target, exc)
            return soft
        return target
    return soft


def harden(*, max_files: int = MAX_FILES) -> int:
    """Disable core dumps and raise the descriptor limit; the soft limit in effect.

    Failures are logged, never raised: a daemon that cannot harden itself
    still serves.
    """
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        _log.warning("could not disable core dumps: %s", exc)
    _set_not_dumpable()
    return _raise_nofile(max_files)
