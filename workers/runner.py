"""The embedded default: the worker's loop on a thread inside `switchboard serve`, no broker needed.

Each pass drains the disk spool into the outbox, then (unless a Celery worker does the delivering)
leases the due messages and delivers them with the same `OutboxCourier` the Celery tasks use.
"""

from __future__ import annotations

import logging
import threading

from workers.context import WorkerContext
from workers.delivery import Outcome

log = logging.getLogger(__name__)


class OutboxRunner:
    def __init__(self, context: WorkerContext, *, deliver: bool = True) -> None:
        self._context = context
        self._deliver = deliver
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="outbox-runner", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run a pass now (a write was just recorded) instead of at the next poll."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def run_once(self) -> int:
        """One pass; returns how many messages were delivered."""
        context = self._context
        if context.spool.pending():
            moved = context.spool.drain(context.sessions)
            if moved:
                log.info("moved %d spooled writes into the outbox", moved)
        if not self._deliver:
            return 0
        delivered = 0
        for outbox_id in context.courier.claim_due(context.settings.outbox_batch):
            if self._stopping.is_set():
                break
            if context.courier.deliver(outbox_id) is Outcome.DELIVERED:
                delivered += 1
        return delivered

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.run_once()
            except Exception:
                # The loop must outlive any one bad pass; the message stays due and is retried.
                log.exception("outbox pass failed")
            self._wake.wait(self._context.settings.outbox_poll_s)
            self._wake.clear()
