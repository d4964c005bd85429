"""Gate Settler Bootstep: a worker that started while the store could not say whether the
checker holds it out (``workers.gate.NOT_KNOWN``) asks again on the consumer's timer until the
store answers, then is in rotation or stays out as the checker decided (``workers.gate.settle``).
Without it, such a worker would wait for the checker's correction, and a checker needs the same
store to lead."""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from broker_config.logs import get_logger
from workers import gate

log = get_logger(__name__)

#: How often a worker that does not know its verdict asks the store again.
SETTLE_EVERY_S = 0.5


class GateSettler(bootsteps.StartStopStep):
    """Asks the store for this worker's verdict until it knows it."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        """Ask now; while the store does not answer, again every ``SETTLE_EVERY_S``."""
        if not self.settle(c):
            self.tref = c.timer.call_repeatedly(SETTLE_EVERY_S, self.settle, (c,), priority=10)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop

    def settle(self, c: Any) -> bool:
        try:
            settled = gate.settle(c)
        except Exception:  # never take the worker down; the next turn asks again
            log.exception("gate_settle_failed")
            return False
        if settled:
            self.stop(c)
        return settled
