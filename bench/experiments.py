"""What-if patches of the driver, applied only inside benchmark processes.

These are not fixes (src/ is not changed by the benchmarks); they show what a
proposed change is worth, so the numbers in docs/benchmarks.md can say so.
"""

from __future__ import annotations


def coalesce_writes() -> None:
    """Hand the transport one write per event-loop iteration instead of one per verb.

    Today every driver call (``open_channel``, ``write``, ``write_eof``,
    ``accept``, ``close``...) flushes its records to the socket at once, so one
    ``Session.request`` costs three ``send`` calls each way and the peer may
    wake up once per record.  Patched: while the session is established, the
    flush is deferred with ``loop.call_soon`` so that every record queued in
    the same iteration leaves in one ``send``.  The handshake and CLOSE still
    flush at once.
    """
    from pstp.asyncio.connection import SessionProtocol
    from pstp.protocol.connection import ConnectionState

    real_flush = SessionProtocol._flush
    pending: set[int] = set()

    def _flush(self: SessionProtocol) -> None:
        if self.conn.state is not ConnectionState.ESTABLISHED:
            real_flush(self)
            return
        if id(self) in pending:
            return
        pending.add(id(self))

        def run() -> None:
            pending.discard(id(self))
            real_flush(self)

        self.loop.call_soon(run)

    SessionProtocol._flush = _flush  # type: ignore[method-assign]
