"""The task base class and its Request: task statistics, counted in the worker's main process.

Celery builds each task's Request class from ``Task.Request``; the hooks below run in the
worker's main process (not in the pool), where the wear reporter reads the statistics.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.worker.request import Request

from broker_config import tracing
from broker_config.contract import SENT_AT_HEADER
from broker_config.logs import get_logger
from workers import gate, handback, tally
from workers.runtime import RUNTIME

log = get_logger(__name__)

#: Task events counted when Celery announces them (``send_event``), by the count's name.
_COUNTED_EVENTS = {"task-started": "started", "task-revoked": "revoked"}



class HostRequest(Request):
    """Counts each task's outcome, runtime and queue wait when its message is settled."""

    _host_failed = False
    _host_retried = False
    _host_revoked = False
    #: Set when the gate refused the task: its message is handed back, not rejected.
    _host_hand_back = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        RUNTIME.totals.event(self._queue(), self.name, "received")

    def send_event(self, type: str, **fields: Any) -> None:
        """Celery's task events (when ``HOST_TASK_EVENTS`` is on), with the task's name and
        queue, so that a monitor sees them without having seen ``task-received``.

        Celery calls this for every task event, on or off; the ones host counts in no other
        place are counted here: started, and revoked (whose acknowledgement is no success)."""
        queue = (self.delivery_info or {}).get("routing_key")
        if type in _COUNTED_EVENTS:
            if type == "task-revoked":
                self._host_revoked = True
            RUNTIME.totals.event(queue, self.name, _COUNTED_EVENTS[type])
        super().send_event(type, name=self.name, queue=queue, **fields)

    def on_retry(self, exc_info: Any) -> Any:
        """Count a retry (its message is acknowledged: not a success)."""
        RUNTIME.totals.record(self._queue(), self.name, "retried")
        self._host_retried = True
        return super().on_retry(exc_info)

    def _queue(self) -> str | None:
        queue: str | None = (self.delivery_info or {}).get("routing_key")
        return queue

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> Any:
        """Count a failure, or a message handed back unstarted (``Reject(requeue=True)``)."""
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(exc, Reject) and getattr(exc, "requeue", False):
            queue = self._queue() or "?"
            RUNTIME.requeued[queue] += 1
            RUNTIME.totals.record(queue, self.name, "rejected")
            log.info("task_requeued_by_gate", task_id=self.id, task=self.name, queue=queue,
                     worker=self.hostname, reason=str(getattr(exc, "reason", "")))
            self._host_hand_back = True
            gate.hold_out(f"checker holds it out: {getattr(exc, 'reason', '')}")
        else:
            self._host_failed = True
            self._record(ok=False, exception=type(exc).__name__)
        return super().on_failure(exc_info, send_failed_event=send_failed_event,
                                  return_ok=return_ok)

    def reject(self, requeue: bool = False) -> None:
        """Celery's reject; a message the gate refused is handed back instead (on RabbitMQ a
        re-publish and ack: no head-of-queue loop, no count towards a delivery limit)."""
        if not (requeue and self._host_hand_back) or self.acknowledged:
            super().reject(requeue)
            return
        message, app = self._message, self._app  # type: ignore[attr-defined]
        queue = handback.source_queue(message, gate.task_consumer())
        handback.hand_back(app, message, queue, self._connection_errors)  # type: ignore[attr-defined]
        self.acknowledged = True
        self.send_event("task-rejected", requeue=True)

    def acknowledge(self) -> None:
        """Acknowledge; a task acknowledged without a failure succeeded."""
        first = not self.acknowledged
        super().acknowledge()
        if first and not (self._host_failed or self._host_retried or self._host_revoked):
            self._record(ok=True)

    def _record(self, ok: bool, exception: str | None = None) -> None:
        now = time.time()
        runtime = now - self.time_start if self.time_start else 0.0
        sent_at = (self.request_dict or {}).get(SENT_AT_HEADER)
        wait = (self.time_start - sent_at
                if self.time_start and isinstance(sent_at, (int, float)) else None)
        RUNTIME.tasks.record(time.monotonic(), ok, runtime, wait)
        RUNTIME.totals.record(self._queue(), self.name, "succeeded" if ok else "failed", runtime,
                              wait, exception)
        if tally.counts_as_work(self._queue()):
            tally.progressed()


class HostTask(Task[Any, Any]):
    """Base class of host's tasks: the health gate is checked before any task code runs."""

    Request = "workers.requests:HostRequest"
    #: Celery formats every result for its success log line and task-succeeded event, whether
    #: or not either is used; a result is a whole record (text included), and formatting a
    #: kilobyte of it cost a worker 2-3 % of its per-task time. Monitors show the start of it;
    #: the result backend has all of it.
    resultrepr_maxsize = 200

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task, unless this worker is out of rotation and the task came from a work queue.

        Raises:
            Reject: (requeue=True) the gate is closed: the message goes back to the broker.
        """
        # The start time is taken before the gate is checked: a task stamped after a verdict
        # was recorded has necessarily seen it.
        self.request.host_started_at = time.time()  # type: ignore[attr-defined]
        queue = (self.request.delivery_info or {}).get("routing_key")
        if not gate.allows(queue, self.request.hostname):
            reason = f"health gate closed on {self.request.hostname}"
            tracing.gate(self.request.hostname, False, reason)
            raise Reject(reason, requeue=True)
        tracing.gate(self.request.hostname, True)
        return super().__call__(*args, **kwargs)
