"""``host_tasks_total`` and ``host_task_runtime_seconds`` from Celery's task events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from broker_config.queues import VERIFY_PREFIX, is_work_queue

#: Task events and the outcome each one counts as.
TASK_OUTCOMES = {"task-succeeded": "succeeded", "task-failed": "failed",
                 "task-retried": "retried", "task-rejected": "rejected"}


class TaskEvents:
    """``host_tasks_total`` and ``host_task_runtime_seconds`` from Celery's task events (sent by
    every worker's main process, so prefork pools need no multiprocess mode)."""

    def __init__(self, registry: CollectorRegistry, tasks: frozenset[str]) -> None:
        self.tasks = tasks
        self.total = Counter("host_tasks_total", "Tasks settled, by queue, task and outcome",
                             ["queue", "task", "outcome"], registry=registry)
        self.runtime = Histogram("host_task_runtime_seconds", "Runtime of succeeded tasks",
                                 ["queue", "task"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5, 1, 2.5, 5, 10, 30))

    def on_event(self, event: Mapping[str, Any]) -> None:
        """Count one task event (others are ignored)."""
        outcome = TASK_OUTCOMES.get(str(event.get("type")))
        if outcome is None:
            return
        queue = queue_label(event.get("queue"))
        task = event.get("name") if event.get("name") in self.tasks else "other"
        self.total.labels(queue, task, outcome).inc()
        runtime = event.get("runtime")
        if outcome == "succeeded" and isinstance(runtime, (int, float)) and runtime >= 0:
            self.runtime.labels(queue, task).observe(runtime)


def queue_label(queue: Any) -> str:
    """A bounded queue label: a work queue's name, ``verify`` for probes, else ``other``."""
    if isinstance(queue, str) and is_work_queue(queue):
        return queue
    if isinstance(queue, str) and queue.startswith(VERIFY_PREFIX):
        return "verify"
    return "other"
