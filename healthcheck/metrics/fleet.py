"""The fleet's gauges, computed from the live fleet at every scrape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from broker_config.queues import WORK_QUEUES
from healthcheck.metrics.celery_exporter import hostname_of
from healthcheck.policy import Fleet, State, WorkerHealth
from healthcheck.policy.config import Threshold
from healthcheck.policy.model import CONSUMING


def health_score(w: WorkerHealth, readings: Mapping[str, Any],
                 thresholds: Mapping[str, Threshold]) -> float:
    """0 to 1: the headroom left below the nearest hard limit; 0 when out of rotation.

    ``1 - max(value / hard)`` over the worker's wear metrics, so 0.1 means some metric is at
    90% of its hard limit. Load a busy worker's progress excuses is capacity in use, not lost
    health, and does not count (``host_worker_busy`` shows it).
    """
    if w.state not in CONSUMING:
        return 0.0
    used = [reading.value / limits.hard for metric, reading in readings.items()
            if (limits := thresholds.get(metric)) is not None and limits.hard
            and metric not in w.busy_metrics]
    return round(min(1.0, max(0.0, 1.0 - max(used, default=0.0))), 4)


class FleetCollector(Collector):
    """Gauges computed from the live fleet on every scrape.

    Args:
        fleet: returns the live fleet.
        wear: returns each worker's last readings.
        clock: wall-clock seconds.
        forget_after_s: a worker OFFLINE for longer than this is no longer exported.
        depths: returns the work queues' depths (cached; may be empty).
        inflight: returns the tasks each worker last said it holds (running or reserved).
    """

    def __init__(self, fleet: Callable[[], Fleet], wear: Callable[[], dict[str, Any]],
                 clock: Callable[[], float] = time.time, forget_after_s: float = 3600.0,
                 depths: Callable[[], Mapping[str, int]] | None = None,
                 inflight: Callable[[], Mapping[str, int]] | None = None) -> None:
        self._fleet = fleet
        self._inflight = inflight
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
        yield from _per_worker(fleet, workers, readings)
        yield from _fleet_wide(fleet)
        names = {w.name for w in workers}
        wear = GaugeMetricFamily("host_worker_wear", "Each worker's last smoothed wear readings",
                                 labels=["worker", "metric"])
        for worker, worker_readings in readings.items():
            if worker in names:
                for metric, reading in worker_readings.items():
                    wear.add_metric([worker, metric], reading.value)
        yield wear
        if self._inflight is not None:
            held = GaugeMetricFamily("host_worker_inflight",
                                     "Tasks each worker last said it holds, running or reserved "
                                     "(invisible in the queue's depth)", labels=["worker"])
            for worker, n in sorted(self._inflight().items()):
                if worker in names:
                    held.add_metric([worker], n)
            yield held
        yield _limits(fleet)
        if self._depths is not None:
            depth = GaugeMetricFamily("host_queue_messages",
                                      "Messages waiting in each work queue, and in Celery's "
                                      "default queue, which no host worker consumes (read from "
                                      "the broker at most every few seconds)", labels=["queue"])
            for q, n in sorted(self._depths().items()):
                depth.add_metric([q], n)
            yield depth


def _per_worker(fleet: Fleet, workers: list[WorkerHealth],
                readings: Mapping[str, Mapping[str, Any]]) -> Iterator[GaugeMetricFamily]:
    state = GaugeMetricFamily("host_worker_state", "1 for the state each worker is in",
                              labels=["worker", "state"])
    score = GaugeMetricFamily("host_worker_health_score",
                              "Headroom below the nearest hard wear limit (0-1); 0 when out "
                              "of rotation", labels=["worker"])
    busy = GaugeMetricFamily("host_worker_busy",
                             "1 while a worker's CPU or load is over its soft limit because "
                             "of the work it gets done (busy, not worn: never ejected for it)",
                             labels=["worker"])
    info = GaugeMetricFamily("host_worker_info", "1 for each worker, labelled with the "
                             "hostname celery-exporter's families give it (a join key)",
                             labels=["worker", "hostname"])
    for w in workers:
        for s in State:
            state.add_metric([w.name, s.value], 1.0 if w.state is s else 0.0)
        score.add_metric([w.name], health_score(w, readings.get(w.name, {}),
                                                fleet.config.thresholds))
        busy.add_metric([w.name], 1.0 if w.busy and w.state in CONSUMING else 0.0)
        info.add_metric([w.name, hostname_of(w.name)], 1.0)
    yield from (state, info, score, busy)


def _fleet_wide(fleet: Fleet) -> Iterator[GaugeMetricFamily]:
    counts = fleet.by_state()
    by_state = GaugeMetricFamily("host_fleet_workers", "Workers in each state", labels=["state"])
    for s in State:
        by_state.add_metric([s.value], counts.get(s, 0))
    yield by_state
    consumers = GaugeMetricFamily("host_queue_healthy_consumers",
                                  "Workers in rotation that report consuming each work queue",
                                  labels=["queue"])
    for q in WORK_QUEUES:
        consumers.add_metric([q], fleet.healthy_consumers(q))
    yield consumers
    guard = GaugeMetricFamily("host_blast_radius_guard_engaged",
                              "1 while the fleet guard holds ejections back")
    guard.add_metric([], 1.0 if fleet.guard_engaged else 0.0)
    yield guard
    held = GaugeMetricFamily("host_guard_held_workers",
                             "Workers the guard keeps in rotation although the policy would "
                             "eject them")
    held.add_metric([], fleet.figures().held_back)
    yield held


def _limits(fleet: Fleet) -> GaugeMetricFamily:
    limits = GaugeMetricFamily("host_wear_threshold", "The policy's wear limits",
                               labels=["metric", "limit"])
    for metric, t in sorted(fleet.config.thresholds.items()):
        for limit in ("soft", "hard"):
            value = getattr(t, limit)
            if value is not None:
                limits.add_metric([metric, limit], value)
    return limits
