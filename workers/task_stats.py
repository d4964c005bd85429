"""A worker's task statistics: recent runtimes and outcomes (``TaskWindow``), the CPU each item
costs (``ItemCost``), whether work still gets done (``Progress``), and the totals its wear
reports carry (``TaskTotals``). Times are passed in (``now``): everything here is testable
without sleeping."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from broker_config.queues import queue_label
from broker_config.wear_event import RUNTIME_BUCKETS, WAIT_BUCKETS

#: Distinct exception class names a worker counts failures by; later ones count as ``other``.
MAX_EXCEPTION_NAMES = 20


@dataclass
class TaskWindow:
    """Task outcomes over a sliding window of ``window_s`` seconds (60 by default).

    Runtimes are kept per task (at most ``max_samples``) for percentiles.
    """

    window_s: float = 60.0
    max_samples: int = 2_000
    consecutive_failures: int = 0
    _events: deque[tuple[float, bool, float, float | None]] = field(default_factory=deque)

    def record(self, now: float, ok: bool, runtime: float, queue_wait: float | None = None) -> None:
        """One finished task."""
        self.consecutive_failures = 0 if ok else self.consecutive_failures + 1
        self._events.append((now, ok, runtime, queue_wait))
        while len(self._events) > self.max_samples:
            self._events.popleft()

    def snapshot(self, now: float) -> dict[str, Any]:
        """Counts, failure rate and percentiles over the window ending at ``now``."""
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()
        runtimes = sorted(e[2] for e in self._events)
        waits = sorted(e[3] for e in self._events if e[3] is not None)
        failed = sum(1 for e in self._events if not e[1])
        total = len(self._events)
        return {
            "completed": total - failed,
            "failed": failed,
            "failure_rate": failed / total if total else 0.0,
            "consecutive_failures": self.consecutive_failures,
            "runtime_p50": percentile(runtimes, 50),
            "runtime_p95": percentile(runtimes, 95),
            "queue_wait_p95": percentile(waits, 95),
        }


class ItemCost:
    """The worker's CPU milliseconds per item done (an input analysed, or a task settled),
    over the last ``window_s`` seconds: its cost per unit of work, which a busy worker keeps
    and a degraded one raises (docs/policy.md, "Cost per item").

    ``sample`` is called with each wear sample: ``cpu_percent`` the tree's share of the
    machine since the last one, ``done`` the items done since the worker started.

    Args:
        cores: the machine's CPUs (``cpu_percent`` is a share of all of them).
        window_s: how far back the cost is measured.
        min_items: fewer items than this in the window: no cost is said (None).
    """

    def __init__(self, cores: int, window_s: float = 10.0, min_items: int = 20) -> None:
        self.cores, self.window_s, self.min_items = cores, window_s, min_items
        self._cpu_s = 0.0
        self._at: float | None = None
        self._marks: deque[tuple[float, float, int]] = deque()

    def sample(self, now: float, cpu_percent: float, done: int) -> None:
        if self._at is not None:
            self._cpu_s += cpu_percent / 100 * self.cores * max(0.0, now - self._at)
        self._at = now
        if self._marks and done < self._marks[-1][2]:
            self._marks.clear()  # the count started again (it never goes back otherwise)
        self._marks.append((now, self._cpu_s, done))
        while len(self._marks) > 1 and self._marks[1][0] <= now - self.window_s:
            self._marks.popleft()

    def ms(self) -> float | None:
        """CPU milliseconds per item over the window (None: fewer than ``min_items``)."""
        if len(self._marks) < 2:
            return None
        (_, cpu0, done0), (_, cpu1, done1) = self._marks[0], self._marks[-1]
        items = done1 - done0
        return round(1000 * (cpu1 - cpu0) / items, 3) if items >= self.min_items else None


@dataclass
class Progress:
    """How long a worker has gone without getting anything done (no input analysed, no task
    finished): since the later of its last progress and the start of its current busy spell.
    Idle, it grows from the last thing done; a new task starts the clock again.

    ``sample`` is called with each wear sample: ``running`` tasks executing now, ``done`` a
    count that moves with every input or task done, ``now`` monotonic seconds.
    """

    _done: int | None = None
    _moved_at: float = 0.0
    _busy_since: float = 0.0
    _running: int = 0

    def sample(self, now: float, running: int, done: int) -> float:
        """Seconds of running without progress, as of ``now``."""
        if done != self._done:
            self._done, self._moved_at = done, now
        if running and not self._running:
            self._busy_since = now
        self._running = running
        return max(0.0, now - max(self._moved_at, self._busy_since))


class TaskTotals:
    """Task outcomes and runtimes since the worker started, as the wear report sends them
    (``task_outcomes`` and ``task_runtimes``: ``broker_config.wear_event``). The checker's
    ``host_tasks_total`` and ``host_task_runtime_seconds`` come from these, so that they need
    no Celery task events (which cost a plain Celery worker about a third of its throughput).

    Beside them, what the checker's celery-exporter families need (``docs/observability.md``):
    tasks received, started and revoked (``events``), failures by exception class
    (``exceptions``) and queue waits (``waits``).

    Labels are bounded here: a queue is a work queue's name, ``verify`` or ``other``; a task is
    its name when it is host's (``host.``), else ``other``; an exception is its class name, for
    the first ``MAX_EXCEPTION_NAMES`` of them, else ``other``.
    """

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.runtimes: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.exceptions: Counter[str] = Counter()
        self.waits: Counter[str] = Counter()
        self._exception_names: set[str] = set()

    def record(self, queue: str | None, task: str | None, outcome: str,
               runtime: float | None = None, wait: float | None = None,
               exception: str | None = None) -> None:
        """Count one settled task (its runtime when it succeeded; its queue wait and its
        exception's class name where known)."""
        prefix = _prefix(queue, task)
        self.outcomes[f"{prefix}|{outcome}"] += 1
        if outcome == "succeeded" and runtime is not None and runtime >= 0:
            _observe(self.runtimes, prefix, RUNTIME_BUCKETS, runtime)
        if wait is not None and wait >= 0:
            _observe(self.waits, prefix, WAIT_BUCKETS, wait)
        if exception is not None:
            if exception not in self._exception_names:
                if len(self._exception_names) >= MAX_EXCEPTION_NAMES:
                    exception = "other"
                else:
                    self._exception_names.add(exception)
            self.exceptions[f"{prefix}|{exception}"] += 1

    def event(self, queue: str | None, task: str | None, kind: str) -> None:
        """Count a task received, started or revoked."""
        self.events[f"{_prefix(queue, task)}|{kind}"] += 1


def _prefix(queue: str | None, task: str | None) -> str:
    return f"{queue_label(queue)}|{task if task and task.startswith('host.') else 'other'}"


def _observe(buckets: Counter[str], prefix: str, bounds: tuple[float, ...], value: float) -> None:
    """One observation into per-bucket counts (not cumulative) and their sum in microseconds."""
    bound = next((str(b) for b in bounds if value <= b), "inf")
    buckets[f"{prefix}|{bound}"] += 1
    buckets[f"{prefix}|sum_us"] += round(value * 1e6)


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
