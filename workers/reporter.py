"""Wear Reporter Bootstep: a ``worker-wear`` event every ``HOST_WEAR_INTERVAL`` seconds (sooner
while a raw sample is over a hard limit).

A thin step: it starts and stops a timer on the consumer; ``workers.reporting`` makes the
report, and the step sends it on the consumer's event dispatcher's connection, with the routing
key of the worker's bucket (``worker.wear.<bucket>``): a sharded fleet's checker subscribes
to its own buckets only, and receivers bound to all events (Flower, ``celery events``) see
the same event as ever.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from celery.events import Event
from celery.utils.time import utcoffset
from celery.worker import state as worker_state
from kombu.exceptions import OperationalError

from broker_config.app import settings_of
from broker_config.logs import get_logger
from broker_config.shards import wear_routing_key
from broker_config.wear_event import WEAR_EVENT
from workers.reporting import (
    WearReporting,
    hard_limits,
    samples_per_report,
    self_protection_limits,
)
from workers.wear import WearSampler, memory_limit

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
            sampler = WearSampler(memory_limit=memory_limit(settings.worker_memory_limit),
                                  busy=_busy_pool_processes)
            self.reporting = WearReporting(sampler.sample, settings.wear_interval,
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
                send_wear(c.event_dispatcher, event.to_fields())
        except Exception:  # a failed report must never take the worker down
            log.exception("wear_report_failed")


def send_wear(dispatcher: Any, fields: dict[str, Any]) -> bool:
    """Publish one wear report as Celery's dispatcher would (the same event, exchange,
    serializer and headers, its logical clock moved on), under the worker's bucket's routing
    key; False when it could not be sent (disabled, closed, or the broker away: a report is
    worth nothing later, so none is kept for then)."""
    if not dispatcher.enabled:
        return False
    event = Event(WEAR_EVENT, hostname=dispatcher.hostname, utcoffset=utcoffset(),
                  pid=dispatcher.pid, clock=dispatcher.clock.forward(), **fields)
    with dispatcher.mutex:
        producer = dispatcher.producer
        if producer is None:
            return False
        try:
            producer.publish(event, routing_key=wear_routing_key(dispatcher.hostname),
                             exchange=dispatcher.exchange.name, declare=[dispatcher.exchange],
                             serializer=dispatcher.serializer, headers=dispatcher.headers,
                             delivery_mode=dispatcher.delivery_mode)
        except (OperationalError, OSError) as exc:
            log.warning("wear_report_not_sent", error=str(exc))
            return False
    return True


def _busy_pool_processes() -> set[int]:
    """The pool processes running a task now: what they started is not a stray."""
    return {r.worker_pid for r in worker_state.active_requests if r.worker_pid}
