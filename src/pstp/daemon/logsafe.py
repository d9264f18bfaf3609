"""Log hygiene for ``pstp serve``: escaped peer text and rate-limited repeats.

Peers supply much of what the daemon logs (file names, reasons, channel
kinds).  :class:`SafeFormatter` escapes every control character of the
formatted message, so a peer cannot forge a log line with a newline or drive
a terminal with ESC: C0 (U+0000-U+001F), DEL, C1 (U+0080-U+009F) and the
Unicode line and paragraph separators U+2028/U+2029 become ``\\n``, ``\\r``,
``\\t``, ``\\xNN`` or ``\\uNNNN``.  A traceback keeps its line breaks (and
nothing else: other control characters in it are escaped the same way).

:class:`RateLimit` is a handler filter: at most ``burst`` records per (logger,
level, message template) in each ``period`` seconds; the rest are dropped and
counted, and when the period rolls over one line says how many were dropped.
A flood of identical failures (a keyless connection flood, say) therefore
writes a bounded amount of log.  :func:`install` puts both on a handler.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import IO

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_MAX_KEYS",
    "DEFAULT_PERIOD",
    "RateLimit",
    "SafeFormatter",
    "escape",
    "install",
]

#: Records let through per key and period.
DEFAULT_BURST = 10
#: The period, in seconds.
DEFAULT_PERIOD = 10.0
#: Keys remembered at once (the oldest is forgotten, its count reported, first).
DEFAULT_MAX_KEYS = 512

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def escape(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as an escape sequence."""
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(_escape_one, text)


class SafeFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose message cannot span lines or hold ESC."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = escape(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def formatException(self, ei: object) -> str:
        return escape(super().formatException(ei), keep_newlines=True)  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return escape(super().formatStack(stack_info), keep_newlines=True)


class _Window:
    __slots__ = ("count", "level", "start", "suppressed")

    def __init__(self, start: float, level: int) -> None:
        self.start = start
        self.level = level
        self.count = 0
        self.suppressed = 0


_Key = tuple[str, int, str]


class RateLimit(logging.Filter):
    """Let at most ``burst`` records per (logger, level, template) through per ``period``.

    Args:
        burst: records let through per key and period.
        period: the period in seconds.
        max_keys: keys remembered at once; beyond it the oldest is forgotten.
        clock: monotonic time (tests pass their own).

    The summary of a key's dropped records (``"N similar messages
    suppressed"``) is written to the handler the filter was :meth:`attach`-ed
    to, when a record arrives after that key's period has ended, when the key
    is forgotten, and by :meth:`flush`.
    """

    def __init__(
        self,
        burst: int = DEFAULT_BURST,
        period: float = DEFAULT_PERIOD,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if burst < 1 or period <= 0 or max_keys < 1:
            raise ValueError("burst, period and max_keys must be positive")
        self.burst, self.period, self.max_keys = burst, period, max_keys
        self.clock = clock
        self._windows: OrderedDict[_Key, _Window] = OrderedDict()  # oldest window first
        self._handler: logging.Handler | None = None

    def attach(self, handler: logging.Handler) -> None:
        """Filter ``handler``'s records and write the summaries to it."""
        handler.addFilter(self)
        self._handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "pstp_summary", False):
            return True
        now = self.clock()
        self._expire(now)
        key = (record.name, record.levelno, str(record.msg))
        window = self._windows.get(key)
        if window is None:
            while len(self._windows) >= self.max_keys:
                self._report(*self._windows.popitem(last=False))
            window = self._windows[key] = _Window(now, record.levelno)
        window.count += 1
        if window.count <= self.burst:
            return True
        window.suppressed += 1
        return False

    def flush(self) -> None:
        """Report every key's dropped records now (at shutdown)."""
        while self._windows:
            self._report(*self._windows.popitem(last=False))

    def _expire(self, now: float) -> None:
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if now - window.start < self.period:
                return
            del self._windows[key]
            self._report(key, window)

    def _report(self, key: _Key, window: _Window) -> None:
        if not window.suppressed or self._handler is None:
            return
        name, level, template = key
        summary = logging.LogRecord(
            name,
            level,
            __file__,
            0,
            "%d similar messages suppressed in %.0f s: %r",
            (window.suppressed, self.period, template[:120]),
            None,
        )
        summary.pstp_summary = True
        self._handler.handle(summary)


def install(
    stream: IO[str],
    *,
    level: int = logging.INFO,
    burst: int = DEFAULT_BURST,
    period: float = DEFAULT_PERIOD,
) -> tuple[logging.Handler, RateLimit]:
    """Log to ``stream`` through a :class:`SafeFormatter` and a :class:`RateLimit`.

    The handler is added to the root logger, whose level becomes ``level``.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter(FORMAT))
    limit = RateLimit(burst, period)
    limit.attach(handler)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler, limit
