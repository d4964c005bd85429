"""The checker's Prometheus metrics: a collector that reads the fleet at scrape time."""

from __future__ import annotations

from collections import Counter as CounterType
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker_config.queues import WORK_QUEUES
from healthcheck.policy import Fleet, State, Transition


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


class FleetCollector(Collector):
    """Gauges computed from the live fleet on every scrape."""

    def __init__(self, fleet: Callable[[], Fleet], wear: Callable[[], dict[str, Any]]) -> None:
        self._fleet = fleet
        self._wear = wear

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fleet = self._fleet()
        state = GaugeMetricFamily("host_worker_state", "1 for the state each worker is in",
                                  labels=["worker", "state"])
        for w in fleet:
            for s in State:
                state.add_metric([w.name, s.value], 1.0 if w.state is s else 0.0)
        yield state
        counts = fleet.by_state()
        by_state = GaugeMetricFamily("host_fleet_workers", "Workers in each state",
                                     labels=["state"])
        for s in State:
            by_state.add_metric([s.value], counts.get(s, 0))
        yield by_state
        consumers = GaugeMetricFamily("host_queue_healthy_consumers",
                                      "Workers consuming each work queue now", labels=["queue"])
        for q in WORK_QUEUES:
            consumers.add_metric([q], fleet.healthy_consumers(q))
        yield consumers
        guard = GaugeMetricFamily("host_blast_radius_guard_engaged",
                                  "1 while the fleet guard holds ejections back")
        guard.add_metric([], 1.0 if fleet.guard_engaged else 0.0)
        yield guard
        wear = GaugeMetricFamily("host_worker_wear", "Each worker's last smoothed wear readings",
                                 labels=["worker", "metric"])
        for worker, readings in self._wear().items():
            for metric, reading in readings.items():
                wear.add_metric([worker, metric], reading.value)
        yield wear


class CheckerMetrics:
    """Everything the checker exports, on its own registry.

    Args:
        fleet: returns the live fleet (read at scrape time).
        wear: returns each worker's last readings.
        registry: where to register (a fresh one by default).
    """

    def __init__(self, fleet: Callable[[], Fleet], wear: Callable[[], dict[str, Any]],
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.registry.register(FleetCollector(fleet, wear))
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
        self.control = ControlCounts()
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
        self.transitions.labels(t.worker, t.from_state.value, t.to_state.value,
                                reason_label(t)).inc()
        reported = t.evidence.get("reported_at")
        if t.to_state is State.DRAINING and isinstance(reported, (int, float)):
            self.detection.observe(max(0.0, t.at - reported))


class ControlCounts(Collector):
    """``host_control_commands_total{command,outcome}``: what the checker sent and how it went,
    plus what workers refused (unsigned, forged, expired, replayed, disabled), as they report it.
    """

    def __init__(self) -> None:
        self.sent: CounterType[tuple[str, str]] = CounterType()
        self.refused_by_worker: dict[str, dict[str, int]] = {}

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
        for counts in self.refused_by_worker.values():
            for key, n in counts.items():
                command, _, reason = key.partition(":")
                totals[(command, f"refused_{reason}")] += int(n)
        for (command, outcome), n in sorted(totals.items()):
            family.add_metric([command, outcome], n)
        yield family
