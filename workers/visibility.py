"""Visibility Keeper Bootstep: a live worker keeps the messages it holds invisible to others.

With Redis, a message that stays unacknowledged longer than the visibility timeout is handed to
another worker. A short timeout brings a dead worker's messages back fast but would re-run any
task that simply runs long; so every ``visibility_timeout / 3`` seconds the worker refreshes the
delivery time of each message it holds (kombu's ``unacked_index``, ``ZADD XX``). A dead worker
stops refreshing, and its messages come back within the timeout plus one restore sweep.
"""

from __future__ import annotations

import time
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state

from broker_config.app import settings_of
from broker_config.logs import get_logger

log = get_logger(__name__)


class VisibilityKeeper(bootsteps.StartStopStep):
    """Refreshes the unacknowledged-message index entries of the messages this worker holds."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        """Refresh on the consumer's timer (Redis brokers only)."""
        settings = settings_of(c.app)
        if not settings.broker_is_redis:
            return
        every = settings.visibility_timeout / 3
        self.tref = c.timer.call_repeatedly(every, self.refresh, (c,), priority=10)

    def stop(self, c: Any) -> None:
        """Stop refreshing."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop

    def refresh(self, c: Any) -> None:
        """Mark every held message as delivered now."""
        tags = held_delivery_tags()
        if not tags or c.task_consumer is None:
            return
        try:
            qos = c.task_consumer.channel.qos
            now = time.time()
            with qos.channel.conn_or_acquire() as client:
                client.zadd(qos.unacked_index_key, dict.fromkeys(tags, now), xx=True)
        except Exception as exc:  # the broker hiccupped: the next refresh will do
            log.warning("visibility_refresh_failed", error=str(exc), held=len(tags))


def held_delivery_tags() -> list[str]:
    """Delivery tags of the messages this worker holds (running and reserved)."""
    requests = list(worker_state.active_requests) + list(worker_state.reserved_requests)
    tags = []
    for request in requests:
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag:
            tags.append(str(tag))
    return tags
