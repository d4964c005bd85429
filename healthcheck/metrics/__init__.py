"""What the checker exports to Prometheus: one collector per file, and ``CheckerMetrics``, the
facade whose verbs the service calls (it never touches a metric object itself).

| file | exports |
|---|---|
| ``fleet.py`` | states, health scores, wear, limits, consumers, the guard (read at scrape time) |
| ``depths.py`` | ``host_queue_messages``, from the broker, cached |
| ``reported.py`` | totals workers report: requeued, inbound, tweets |
| ``tasks.py`` | ``host_tasks_total``, ``host_task_runtime_seconds`` (totals workers report) |
| ``control.py`` | ``host_control_commands_total`` |
| ``intake.py`` | the checker's own intake: events by type, lag, loop passes, subscription |
| ``celery_exporter.py`` | celery-exporter's families (``celery_*``), when asked for |
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from broker_config.queues import queue_label
from healthcheck.metrics.celery_exporter import CeleryExporterFamilies
from healthcheck.metrics.control import ControlCounts
from healthcheck.metrics.depths import QueueDepths, broker_depths
from healthcheck.metrics.fleet import FleetCollector, health_score
from healthcheck.metrics.intake import IntakeFigures, event_label
from healthcheck.metrics.reported import Cumulative, ReportedCounts
from healthcheck.metrics.tasks import TaskTotals
from healthcheck.policy import Fleet, State, Transition

__all__ = ["CheckerMetrics", "Cumulative", "QueueDepths", "broker_depths", "health_score",
           "queue_label"]

#: Operators' actions, as ``host_control_commands_total`` names them (others: ``other``).
OPERATOR_ACTIONS = ("drain", "stop", "quarantine", "restore")
#: The counts a wear report carries, by the report's key.
REPORTED = {"requeued": "requeued", "inbound": "inbound", "tweets": "tweets",
            "refused": "control_refused", "task_outcomes": "task_outcomes",
            "task_runtimes": "task_runtimes", "task_events": "task_events",
            "task_exceptions": "task_exceptions", "task_waits": "task_waits"}


class CheckerMetrics:
    """Everything the checker exports, on its own registry.

    Args:
        fleet: returns the live fleet (read at scrape time).
        wear: returns each worker's last readings.
        registry: where to register (a fresh one by default).
        clock: wall-clock seconds.
        forget_after_s: a worker OFFLINE for longer than this is no longer exported.
        depths: returns the work queues' depths (``QueueDepths``); None: not exported.
        tasks: the task names ``host_tasks_total`` labels by name (others: ``other``).
        inflight: returns the tasks each worker last said it holds.
        running: returns the tasks each worker last said were executing.
    """

    def __init__(self, fleet: Callable[[], Fleet], wear: Callable[[], dict[str, Any]],
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time,
                 forget_after_s: float = 3600.0,
                 depths: Callable[[], Mapping[str, int]] | None = None,
                 tasks: frozenset[str] = frozenset({"host.analyse", "host.analyse_batch"}),
                 inflight: Callable[[], Mapping[str, int]] | None = None,
                 running: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._fleet_now, self._depths = fleet, depths
        self._running = running or dict
        self._leads = False
        self._fleet = FleetCollector(fleet, wear, clock, forget_after_s, depths, inflight)
        self.registry.register(self._fleet)
        self._reported = Cumulative()
        self.registry.register(ReportedCounts(self._reported))
        self.registry.register(TaskTotals(self._reported, tasks))
        self._control = ControlCounts(self._reported)
        self.registry.register(self._control)
        self._series: dict[str, set[tuple[Counter, tuple[str, ...]]]] = {}
        self._last_counts: dict[str, dict[str, Any]] = {}
        self._transitions = Counter("host_worker_transitions_total", "State transitions",
                                    ["worker", "from_state", "to_state", "reason"],
                                    registry=self.registry)
        self._detection = Histogram("host_detection_seconds",
                                    "From the report that proposed an ejection to the verdict",
                                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
                                    registry=self.registry)
        self._drain = Histogram("host_drain_seconds",
                                "From the verdict to the worker's confirmation of its drain",
                                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
                                registry=self.registry)
        self._probes = Counter("host_probe_results_total", "Known-answer probe outcomes",
                               ["worker", "outcome"], registry=self.registry)
        self._recycles = Counter("host_worker_recycles_total",
                                 "Pool restarts of quarantined workers the checker ordered and "
                                 "the worker confirmed (healing)", ["worker"],
                                 registry=self.registry)
        self.intake = IntakeFigures()
        self.registry.register(self.intake)
        self._leader = Gauge("host_checker_leader",
                             "1 while this checker holds the lease and acts; 0 on a standby",
                             registry=self.registry)
        self._shards = Gauge("host_checker_shards",
                             "How many shards the fleet is split into, as this checker was told",
                             registry=self.registry)
        self._shards.set(1)

    def event_received(self, kind: object) -> None:
        """The receiver took one event (receiver thread: the one writer of these counts)."""
        self.intake.events[event_label(kind)] += 1

    def loop_pass(self, seconds: float) -> None:
        """One pass of the checker's loop took ``seconds``."""
        self.intake.loop_pass(seconds)

    def sharded(self, shards: int) -> None:
        """The fleet is split into ``shards`` shards."""
        self._shards.set(shards)

    def leading(self, yes: bool) -> None:
        """Whether this checker leads now."""
        self._leads = yes
        self._leader.set(1 if yes else 0)

    def export_celery_families(self) -> None:
        """Export celery-exporter's families too (``HOST_CELERY_EXPORTER_METRICS``)."""
        self.registry.register(CeleryExporterFamilies(
            self._reported, self._fleet_now, self._fleet.exported, self._running, self._depths,
            lambda: self._leads))

    def on_transition(self, t: Transition) -> None:
        """Count a transition, labelled by its code (and its detection time, for an ejection)."""
        self._count(self._transitions, t.worker, t.from_state.value, t.to_state.value,
                    t.code.value)
        reported = t.evidence.get("reported_at")
        if t.to_state is State.DRAINING and isinstance(reported, (int, float)):
            self._detection.observe(max(0.0, t.at - reported))

    def on_probe(self, worker: str, outcome: str) -> None:
        """Count a probe's outcome."""
        self._count(self._probes, worker, outcome)

    def on_report(self, worker: str, event: Mapping[str, Any], count: bool = True) -> None:
        """Take the totals a worker's wear report carries (remembered only, on a standby)."""
        if self._last_counts.get(worker) == event:
            return  # the same totals as the last report (most reports): nothing to add
        self._last_counts[worker] = {k: dict(v) for k, v in event.items()
                                     if isinstance(v, Mapping)}
        for kind, key in REPORTED.items():
            counts = event.get(key)
            if isinstance(counts, Mapping):
                self._reported.update(worker, kind, counts, count)

    def command(self, command: str, outcome: str) -> None:
        """Count a control command the checker sent (or decided not to send), by outcome."""
        self._control.count(command, outcome)

    def operator_request(self, action: str, outcome: str) -> None:
        """Count an operator's request to the checker, by outcome."""
        name = action if action in OPERATOR_ACTIONS else "other"
        self._control.count(f"operator_{name}", outcome)

    def recycled(self, worker: str) -> None:
        """A worker confirmed it restarted its pool."""
        self._count(self._recycles, worker)

    def drain_confirmed(self, seconds: float) -> None:
        """A drain was confirmed ``seconds`` after its verdict."""
        self._drain.observe(max(0.0, seconds))

    def forget_stale(self, fleet: Fleet) -> list[str]:
        """Drop the per-worker series of workers no longer exported; their names."""
        exported = {w.name for w in self._fleet.exported(fleet)}
        gone = sorted((set(self._series) | self._reported.workers()) - exported)
        for name in gone:
            for counter, labels in self._series.pop(name, ()):
                with contextlib.suppress(KeyError):
                    counter.remove(*labels)
            self._reported.forget(name)
            self._last_counts.pop(name, None)
        return gone

    def _count(self, counter: Counter, worker: str, *labels: str) -> None:
        counter.labels(worker, *labels).inc()
        self._series.setdefault(worker, set()).add((counter, (worker, *labels)))
