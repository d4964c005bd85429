"""The checker's Prometheus metrics: a collector that reads the fleet at scrape time."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import Counter as CounterType
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker_config.queues import VERIFY_PREFIX, WORK_QUEUES, is_work_queue
from healthcheck.policy import Fleet, State, Transition, WorkerHealth
from healthcheck.policy.config import Threshold
from healthcheck.policy.model import CONSUMING
from workers.logs import get_logger
from workers.tally import LABELS, OUTCOMES

log = get_logger(__name__)


def reason_label(t: Transition) -> str:
    """A bounded label for a transition's reason (the full reason is in the audit log)."""
    if t.to_state is State.OFFLINE:
        return "liveness"
    if t.from_state is State.OFFLINE:
        return "returned"
    if not t.automatic:
        return "operator"
    if t.to_state in (State.DRAINING, State.QUARANTINED):
        if t.from_state is State.DRAINING:
            return "drain_timeout" if "timed out" in t.reason else "drained"
        return t.cause.value or "wear"
    if t.to_state is State.SUSPECT:
        return "held" if t.reason.startswith("ejection held") else "suspect"
    return "recovery"


def health_score(w: WorkerHealth, readings: Mapping[str, Any],
                 thresholds: Mapping[str, Threshold]) -> float:
    """0 to 1: the headroom left below the nearest hard limit; 0 when out of rotation.

    ``1 - max(value / hard)`` over the worker's wear metrics, so 0.1 means some metric is at
    90% of its hard limit.
    """
    if w.state not in CONSUMING:
        return 0.0
    used = [reading.value / limits.hard for metric, reading in readings.items()
            if (limits := thresholds.get(metric)) is not None and limits.hard]
    return round(min(1.0, max(0.0, 1.0 - max(used, default=0.0))), 4)


class FleetCollector(Collector):
    """Gauges computed from the live fleet on every scrape.

    Args:
        fleet: returns the live fleet.
        wear: returns each worker's last readings.
        clock: wall-clock seconds.
        forget_after_s: a worker OFFLINE for longer than this is no longer exported.
        depths: returns the work queues' depths (cached; may be empty).
    """

    def __init__(self, fleet: Callable[[], Fleet], wear: Callable[[], dict[str, Any]],
                 clock: Callable[[], float] = time.time, forget_after_s: float = 3600.0,
                 depths: Callable[[], Mapping[str, int]] | None = None) -> None:
        self._fleet = fleet
        self._wear = wear
        self._clock = clock
        self.forget_after_s = forget_after_s
        self._depths = depths

    def exported(self, fleet: Fleet) -> list[WorkerHealth]:
        """The workers still exported: all but those OFFLINE for longer than forget_after_s."""
        horizon = self._clock() - self.forget_after_s
        return [w for w in fleet if not (w.state is State.OFFLINE and w.last_seen < horizon)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fleet = self._fleet()
        workers = self.exported(fleet)
        readings = self._wear()
        state = GaugeMetricFamily("host_worker_state", "1 for the state each worker is in",
                                  labels=["worker", "state"])
        score = GaugeMetricFamily("host_worker_health_score",
                                  "Headroom below the nearest hard wear limit (0-1); 0 when out "
                                  "of rotation", labels=["worker"])
        for w in workers:
            for s in State:
                state.add_metric([w.name, s.value], 1.0 if w.state is s else 0.0)
            score.add_metric([w.name], health_score(w, readings.get(w.name, {}),
                                                    fleet.config.thresholds))
        yield state
        yield score
        counts = fleet.by_state()
        by_state = GaugeMetricFamily("host_fleet_workers", "Workers in each state",
                                     labels=["state"])
        for s in State:
            by_state.add_metric([s.value], counts.get(s, 0))
        yield by_state
        consumers = GaugeMetricFamily("host_queue_healthy_consumers",
                                      "Workers in rotation that report consuming each work "
                                      "queue", labels=["queue"])
        for q in WORK_QUEUES:
            consumers.add_metric([q], fleet.healthy_consumers(q))
        yield consumers
        guard = GaugeMetricFamily("host_blast_radius_guard_engaged",
                                  "1 while the fleet guard holds ejections back")
        guard.add_metric([], 1.0 if fleet.guard_engaged else 0.0)
        yield guard
        held = GaugeMetricFamily("host_guard_held_workers",
                                 "Workers the guard keeps in rotation although the policy "
                                 "would eject them")
        held.add_metric([], fleet.figures().held_back)
        yield held
        wear = GaugeMetricFamily("host_worker_wear", "Each worker's last smoothed wear readings",
                                 labels=["worker", "metric"])
        names = {w.name for w in workers}
        for worker, worker_readings in readings.items():
            if worker in names:
                for metric, reading in worker_readings.items():
                    wear.add_metric([worker, metric], reading.value)
        yield wear
        limits = GaugeMetricFamily("host_wear_threshold", "The policy's wear limits",
                                   labels=["metric", "limit"])
        for metric, t in sorted(fleet.config.thresholds.items()):
            for limit in ("soft", "hard"):
                value = getattr(t, limit)
                if value is not None:
                    limits.add_metric([metric, limit], value)
        yield limits
        if self._depths is not None:
            depth = GaugeMetricFamily("host_queue_messages",
                                      "Messages waiting in each work queue, and in Celery's "
                                      "default queue, which no host worker consumes (read from "
                                      "the broker at most every few seconds)", labels=["queue"])
            for q, n in sorted(self._depths().items()):
                depth.add_metric([q], n)
            yield depth


class QueueDepths:
    """Work-queue depths read from the broker, cached, with a bounded cost per scrape.

    A scrape older than ``every_s`` starts one refresh in the background and waits for it at
    most ``wait_s``; a slow or absent broker leaves the last known depths in place (and the
    metric absent until the first success) instead of stalling the scrape.

    Args:
        read: returns the depth of each queue (talks to the broker).
        every_s: how long a reading is fresh.
        wait_s: the most a scrape waits for a refresh.
    """

    def __init__(self, read: Callable[[], Mapping[str, int]], every_s: float = 5.0,
                 wait_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self.every_s = every_s
        self.wait_s = wait_s
        self._clock = clock
        self._values: dict[str, int] = {}
        self._read_at = -math.inf
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, int]:
        with self._lock:
            if self._clock() - self._read_at >= self.every_s and not (
                    self._thread and self._thread.is_alive()):
                self._thread = threading.Thread(target=self._refresh, daemon=True)
                self._thread.start()
            thread = self._thread
        if thread is not None:
            thread.join(self.wait_s)
        return dict(self._values)

    def _refresh(self) -> None:
        try:
            values = dict(self._read())
        except Exception as exc:  # the broker is slow or away: keep what we had
            log.warning("queue_depths_unavailable", error=str(exc))
            return
        self._values = values
        self._read_at = self._clock()


def broker_depths(app: Any, queues: tuple[str, ...] = WORK_QUEUES,
                  timeout_s: float = 2.0) -> Callable[[], dict[str, int]]:
    """Reads each queue's message count from the broker (a passive declare: Redis or AMQP)."""

    def read() -> dict[str, int]:
        depths = {}
        with app.connection_for_read(connect_timeout=timeout_s) as conn:
            for q in queues:
                channel = conn.channel()  # a refused passive declare closes an AMQP channel
                try:
                    depths[q] = int(channel.queue_declare(q, passive=True).message_count)
                except conn.channel_errors:
                    depths[q] = 0  # never declared: nothing was ever sent to it
                finally:
                    channel.close()
        return depths

    return read


class Cumulative:
    """Counters workers report as totals since they started, summed into totals that never go
    back (a restarted worker's counts start again from zero; the totals keep growing)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str], int] = {}
        self.totals: CounterType[tuple[str, str]] = CounterType()
        self.by_worker: CounterType[tuple[str, str, str]] = CounterType()

    def update(self, worker: str, kind: str, counts: Mapping[str, Any], count: bool = True) -> None:
        """Take one worker's report of ``kind`` counts (``{label: count since start}``).

        With ``count`` false (a standby checker) only the last values are remembered, so that
        counting starts from them when this checker leads: totals are counted by one checker
        at a time, and summing them across checkers stays right.
        """
        for label, raw in counts.items():
            if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
                continue
            key = (worker, kind, str(label))
            last = self._last.get(key, 0)
            delta = raw - last if raw >= last else raw  # below the last count: it restarted
            self._last[key] = raw
            if count:
                self.totals[(kind, str(label))] += delta
                self.by_worker[key] += delta

    def workers(self) -> set[str]:
        """The workers with series of their own."""
        return {worker for worker, _, _ in self.by_worker}

    def forget(self, worker: str) -> None:
        """Stop exporting a worker's own series (the fleet totals keep its counts)."""
        for key in [k for k in self.by_worker if k[0] == worker]:
            del self.by_worker[key]
            self._last.pop(key, None)


class ReportedCounts(Collector):
    """``host_gate_requeued_total``, ``host_inbound_total`` and ``host_tweets_total``, from the
    totals in workers' reports."""

    def __init__(self, counts: Cumulative) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        requeued = CounterMetricFamily("host_gate_requeued", "Messages a closed gate handed back "
                                       "to the broker unstarted", labels=["worker", "queue"])
        for (worker, kind, queue), n in sorted(self.counts.by_worker.items()):
            if kind == "requeued":
                requeued.add_metric([worker, queue], n)
        yield requeued
        inbound = CounterMetricFamily("host_inbound", "Inbound messages by outcome "
                                      "(analysed, or rejected to the dead letters)",
                                      labels=["outcome"])
        for outcome in OUTCOMES:
            inbound.add_metric([outcome], self.counts.totals[("inbound", outcome)])
        yield inbound
        tweets = CounterMetricFamily("host_tweets", "Analysed tweets by sentiment label",
                                     labels=["sentiment"])
        for label in LABELS:
            tweets.add_metric([label], self.counts.totals[("tweets", label)])
        yield tweets


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
    """

    def __init__(self, fleet: Callable[[], Fleet], wear: Callable[[], dict[str, Any]],
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time,
                 forget_after_s: float = 3600.0,
                 depths: Callable[[], Mapping[str, int]] | None = None,
                 tasks: frozenset[str] = frozenset({"host.analyse", "host.analyse_batch"})) -> None:
        self.registry = registry or CollectorRegistry()
        self.fleet_collector = FleetCollector(fleet, wear, clock, forget_after_s, depths)
        self.registry.register(self.fleet_collector)
        self.reported = Cumulative()
        self.registry.register(ReportedCounts(self.reported))
        self.task_events = TaskEvents(self.registry, tasks)
        self._series: dict[str, set[tuple[Counter, tuple[str, ...]]]] = {}
        self.transitions = Counter("host_worker_transitions_total", "State transitions",
                                   ["worker", "from_state", "to_state", "reason"],
                                   registry=self.registry)
        self.detection = Histogram("host_detection_seconds",
                                   "From the report that proposed an ejection to the verdict",
                                   buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
                                   registry=self.registry)
        self.drain = Histogram("host_drain_seconds",
                               "From the verdict to the worker's confirmation of its drain",
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
                               registry=self.registry)
        self.control = ControlCounts(self.reported)
        self.registry.register(self.control)
        self.probes = Counter("host_probe_results_total", "Known-answer probe outcomes",
                              ["worker", "outcome"], registry=self.registry)
        self.leader = Gauge("host_checker_leader",
                            "1 while this checker holds the lease and acts; 0 on a standby",
                            registry=self.registry)

    def leading(self, yes: bool) -> None:
        """Whether this checker leads now."""
        self.leader.set(1 if yes else 0)

    def on_transition(self, t: Transition) -> None:
        """Count a transition (and its detection time, for an ejection)."""
        self._count(self.transitions, t.worker, t.from_state.value, t.to_state.value,
                    reason_label(t))
        reported = t.evidence.get("reported_at")
        if t.to_state is State.DRAINING and isinstance(reported, (int, float)):
            self.detection.observe(max(0.0, t.at - reported))

    def on_probe(self, worker: str, outcome: str) -> None:
        """Count a probe's outcome."""
        self._count(self.probes, worker, outcome)

    def on_report(self, worker: str, event: Mapping[str, Any], count: bool = True) -> None:
        """Take the totals a worker's wear report carries (remembered only, on a standby)."""
        for kind in ("requeued", "inbound", "tweets", "refused"):
            counts = event.get("control_refused" if kind == "refused" else kind)
            if isinstance(counts, Mapping):
                self.reported.update(worker, kind, counts, count)

    def forget_stale(self, fleet: Fleet) -> list[str]:
        """Drop the per-worker series of workers no longer exported; their names."""
        exported = {w.name for w in self.fleet_collector.exported(fleet)}
        gone = sorted((set(self._series) | self.reported.workers()) - exported)
        for name in gone:
            for counter, labels in self._series.pop(name, ()):
                with contextlib.suppress(KeyError):
                    counter.remove(*labels)
            self.reported.forget(name)
        return gone

    def _count(self, counter: Counter, worker: str, *labels: str) -> None:
        counter.labels(worker, *labels).inc()
        self._series.setdefault(worker, set()).add((counter, (worker, *labels)))


class ControlCounts(Collector):
    """``host_control_commands_total{command,outcome}``: what the checker sent and how it went,
    plus what workers refused (unsigned, forged, expired, replayed, disabled), as they report it.
    """

    def __init__(self, reported: Cumulative) -> None:
        self.sent: CounterType[tuple[str, str]] = CounterType()
        self.reported = reported

    def labels(self, command: str, outcome: str) -> ControlCounts._Inc:
        """``.labels(command, outcome).inc()``, as with a prometheus Counter."""
        return ControlCounts._Inc(self.sent, (command, outcome))

    class _Inc:
        def __init__(self, counts: CounterType[tuple[str, str]], key: tuple[str, str]) -> None:
            self._counts, self._key = counts, key

        def inc(self, amount: int = 1) -> None:
            self._counts[self._key] += amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("host_control_commands", "Control commands by outcome",
                                     labels=["command", "outcome"])
        totals: CounterType[tuple[str, str]] = CounterType(self.sent)
        for (kind, key), n in self.reported.totals.items():
            if kind == "refused":
                command, _, reason = key.partition(":")
                totals[(command, f"refused_{reason}")] += n
        for (command, outcome), n in sorted(totals.items()):
            family.add_metric([command, outcome], n)
        yield family
