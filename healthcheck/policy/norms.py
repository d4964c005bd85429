"""What a worker's latency and cost per item are judged against: the medians of its peers in
rotation (the degraded must not set the bar) and, for cost, its own usual figure. Pure: the
fleet notes each report and refreshes the medians as it sweeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from healthcheck.policy.config import PolicyConfig
from healthcheck.policy.detectors import CostNorm, cost_limit
from healthcheck.policy.model import CONSUMING, State, WorkerHealth
from healthcheck.policy.observations import WearReport


@dataclass
class PeerNorms:
    """Each worker's last p95 runtime and cost per item, its usual cost, and the medians."""

    p95: dict[str, float] = field(default_factory=dict)
    #: The median p95 of the workers in rotation (None: too few to compare).
    fleet_p95: float | None = None
    cost: dict[str, float] = field(default_factory=dict)
    usual_cost: dict[str, float] = field(default_factory=dict)
    #: The median cost per item of the workers in rotation, by the queues they consume.
    peer_cost: dict[tuple[str, ...], float] = field(default_factory=dict)

    def note(self, w: WorkerHealth, r: WearReport, config: PolicyConfig) -> CostNorm | None:
        """Remember a report's p95 and cost per item; what its cost is judged against."""
        if r.runtime_p95 is not None and r.completed + r.failed >= config.latency.min_volume:
            self.p95[r.worker] = r.runtime_p95
        else:
            self.p95.pop(r.worker, None)
        return self._note_cost(w, r, config)

    def _note_cost(self, w: WorkerHealth, r: WearReport, config: PolicyConfig) -> CostNorm | None:
        """Remember the report's cost per item (and, while the worker is HEALTHY and within the
        limit, let its usual cost follow: its first cost starts it); what it is judged against
        (the usual cost as it was before this report)."""
        if r.cost_ms is None:
            self.cost.pop(r.worker, None)
            return None
        self.cost[r.worker] = r.cost_ms
        median = self.peer_cost.get(r.queues or w.queues)
        usual = self.usual_cost.get(r.worker)
        if w.state is State.HEALTHY:
            if usual is None:  # its first cost is what it usually costs, to start with
                self.usual_cost[r.worker] = r.cost_ms
            elif median is None or r.cost_ms <= cost_limit(config, median, usual):
                c = config.cost
                weight = c.usual_fall if r.cost_ms < usual else c.usual_rise
                self.usual_cost[r.worker] = usual + weight * (r.cost_ms - usual)
        return median, usual

    def refresh(self, workers: Mapping[str, WorkerHealth], config: PolicyConfig) -> None:
        """The medians again, over the workers in rotation now."""
        values = sorted(v for k, v in self.p95.items()
                        if k in workers and workers[k].state in CONSUMING)
        self.fleet_p95 = _median(values) if len(values) >= config.latency.min_fleet else None
        by_queues: dict[tuple[str, ...], list[float]] = {}
        for name, cost in self.cost.items():  # per set of queues consumed: the same work
            w = workers.get(name)
            if w is not None and w.state in CONSUMING:
                by_queues.setdefault(w.queues, []).append(cost)
        self.peer_cost = {q: _median(sorted(v)) for q, v in by_queues.items()
                          if len(v) >= config.cost.min_fleet}


def _median(values: list[float]) -> float:
    """The median of sorted, non-empty ``values``."""
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
