"""Wear Reporter Bootstep: a ``worker-wear`` event every ``HOST_WEAR_INTERVAL`` seconds (sooner
while a raw sample is over a hard limit).

A thin step: it starts and stops a timer on the consumer; ``workers.reporting`` makes the
report, and the step sends it with the consumer's event dispatcher.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from broker_config.app import settings_of
from broker_config.logs import get_logger
from broker_config.wear_event import WEAR_EVENT
from workers.reporting import (
    WearReporting,
    hard_limits,
    samples_per_report,
    self_protection_limits,
)
from workers.wear import WearSampler

log = get_logger(__name__)


class WearReporter(bootsteps.StartStopStep):
    """Sends the worker's wear as a Celery event, on the consumer's timer."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None
        self.reporting: WearReporting | None = None

    def start(self, c: Any) -> None:
        """Start reporting (again, after a reconnection: the sequence goes on)."""
        settings = settings_of(c.app)
        per_report = samples_per_report(settings.wear_interval)
        if self.reporting is None:
            self.reporting = WearReporting(WearSampler().sample, settings.wear_interval,
                                           self_protection_limits(settings.policy_file),
                                           hard_limits(settings.policy_file), per_report)
        self.tref = c.timer.call_repeatedly(settings.wear_interval / per_report, self.tick,
                                            (c,), priority=10)

    def stop(self, c: Any) -> None:
        """Stop reporting (the consumer restarts us after a reconnection)."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop

    def tick(self, c: Any) -> None:
        """Take a raw sample; send the report when one is due."""
        try:
            assert self.reporting is not None
            event = self.reporting.tick(c)
            if event is not None:
                c.event_dispatcher.send(WEAR_EVENT, **event.to_fields())
        except Exception:  # a failed report must never take the worker down
            log.exception("wear_report_failed")
