"""Fleet simulator: the real policy against thousands of virtual workers, in simulated time.

    python -m healthcheck.sim [--workers N] [--scenario NAME|all] [--seconds S] [--policy F] [--json]

Each virtual worker samples its wear once a simulated second from a wear model and reports it
the way the wear reporter does (an exponentially smoothed value and the peak of the last 10 s);
probes go to every worker every ``PROBE_EVERY`` seconds. Ground truth (which workers really
degrade, and when) comes from the scenario, so the report can count detection delay, false
ejections and missed degradations. Throughput is observations per second of real time spent in
the policy (``Fleet.observe`` and ``Fleet.tick``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from broker_config.policy_file import load_policy
from broker_config.settings import ConfigError
from broker_config.shards import shard_of
from healthcheck.policy import (
    Decision,
    Fleet,
    HealthPolicy,
    PolicyConfig,
    ProbeResult,
    Reading,
    State,
    Transition,
)
from healthcheck.policy.config import Guard
from healthcheck.policy.model import OUT_OF_ROTATION, WearReport
from healthcheck.store.memory import InMemoryGuardBudgets, ShardBudget

PROBE_EVERY = 10
SMOOTHING = 0.3  # EWMA weight of the newest sample, as the wear reporter uses
PEAK_WINDOW = 10
#: How long a shard's proposed ejection waits for the other shards' figures (two ticks).
SETTLE_S = 0.5

#: (t, rng) -> (cpu %, memory %, failure probability, wrong answers?, anything done?)
Sample = tuple[float, float, float, bool, bool]
Model = Callable[[float, random.Random], Sample]


@dataclass
class Virtual:
    """One simulated worker: its model, its smoothed figures, and the truth about it."""

    name: str
    model: Model
    onset: float | None = None  # when it really starts degrading (None: it never does)
    cpu: float = 30.0
    mem: float = 40.0
    cpu_peaks: deque[float] = field(default_factory=lambda: deque(maxlen=PEAK_WINDOW))
    mem_peaks: deque[float] = field(default_factory=lambda: deque(maxlen=PEAK_WINDOW))
    consecutive_failures: int = 0
    progressed_at: float = 0.0  # when it last got anything done

    def report(self, t: float, rng: random.Random, inflight: int) -> tuple[WearReport, bool]:
        cpu, mem, fail_p, wrong, progress = self.model(t, rng)
        if progress:
            self.progressed_at = t
        self.cpu += SMOOTHING * (cpu - self.cpu)
        self.mem += SMOOTHING * (mem - self.mem)
        self.cpu_peaks.append(cpu)
        self.mem_peaks.append(mem)
        failed = sum(rng.random() < fail_p for _ in range(4))
        self.consecutive_failures = self.consecutive_failures + failed if failed == 4 else failed
        report = WearReport(self.name, t, {
            "cpu_percent": Reading(round(self.cpu, 1), max(self.cpu_peaks), round(cpu, 1)),
            "memory_percent": Reading(round(self.mem, 1), max(self.mem_peaks), round(mem, 1)),
        }, completed=(4 - failed) if progress else 0, failed=failed if progress else 0,
            consecutive_failures=self.consecutive_failures, runtime_p95=0.02,
            inflight=inflight, queues=("tweets",), running=inflight,
            stalled_s=t - self.progressed_at)
        return report, wrong


def normal(t: float, rng: random.Random) -> Sample:
    """A healthy worker: moderate, noisy load, its tasks done as they come."""
    return rng.gauss(45, 8), rng.gauss(50, 3), 0.01, False, True


def gradual(onset: float, rate: float) -> Model:
    """CPU and memory that climb steadily from ``onset`` (rate: points per second), the CPU
    burnt with nothing done (a worker thrashing, not working)."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        if t >= onset:
            cpu = min(100.0, 80 + rate * (t - onset) + rng.gauss(0, 2))
            mem = min(100.0, 80 + rate * (t - onset) / 2)
        return cpu, mem, fail, False, t < onset
    return model


def spiky() -> Model:
    """Healthy, with transient spikes of one or two samples (CPU to 100, memory to 90), at
    least one normal sample between two spikes: a spike begins in 5% of samples."""
    left = 0  # samples of the current CPU spike still to come; -1: the one normal sample after

    def model(t: float, rng: random.Random) -> Sample:
        nonlocal left
        cpu, mem, fail, _, _ = normal(t, rng)
        if left == 0 and rng.random() < 0.05:
            left = rng.choice((1, 2))
        if left > 0:
            cpu, left = 100.0, left - 1
            left = -1 if left == 0 else left
        elif left == -1:
            left = 0
        if rng.random() < 0.02:
            mem = 90.0
        return cpu, mem, fail, False, True
    return model


def step(onset: float) -> Model:
    """A sustained step: CPU at 100 from ``onset`` with nothing done (a stuck loop, a pool
    spinning)."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        return (100.0 if t >= onset else cpu), mem, fail, False, t < onset
    return model


def flapping(period: float) -> Model:
    """Alternately fine and overheated (nothing done while hot), ``period`` seconds each."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        hot = int(t // period) % 2 == 1
        if hot:
            cpu, mem = 100.0, 99.0
        return cpu, mem, fail, False, not hot
    return model


def hot_reading(onset: float) -> Model:
    """A broken metrics pipeline: figures say 99% from ``onset``, the worker is fine."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        return (99.0 if t >= onset else cpu), mem, fail, False, True
    return model


def hot_memory_reading(onset: float) -> Model:
    """A broken metrics pipeline: memory reads 99% from ``onset``, the worker is fine."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        return cpu, (99.0 if t >= onset else mem), fail, False, True
    return model


def busy(onset: float, low: float = 90.0, high: float = 100.0) -> Model:
    """Busy with its work from ``onset``: CPU between ``low`` and ``high``, tasks done at
    their normal cost (a traffic peak, a backlog, a worker alone on its node)."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        return (rng.uniform(low, high) if t >= onset else cpu), mem, fail, False, True
    return model


def busy_then_stuck(busy_from: float, onset: float) -> Model:
    """Busy from ``busy_from``, then from ``onset`` CPU at 100 with nothing done."""
    working, stuck = busy(busy_from), step(onset)
    def model(t: float, rng: random.Random) -> Sample:
        return stuck(t, rng) if t >= onset else working(t, rng)
    return model


def wrong_answers(onset: float) -> Model:
    """Normal wear, but from ``onset`` its probe answers are subtly wrong."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        return cpu, mem, fail, t >= onset, True
    return model


@dataclass(frozen=True)
class Scenario:
    """How the fleet's workers behave, and which of them really degrade."""

    name: str
    description: str
    build: Callable[[int, random.Random], list[Virtual]]


def _fleet_with(n: int, rng: random.Random, share: float,
                bad: Callable[[int], tuple[Model, float | None]],
                others: Model = normal) -> list[Virtual]:
    picked = set(rng.sample(range(n), max(1, int(n * share))))
    out = []
    for i in range(n):
        model, onset = bad(i) if i in picked else (others, None)
        out.append(Virtual(f"w{i}", model, onset))
    return out


def _step_from(i: int) -> tuple[Model, float]:
    onset = 20.0 + (i * 7) % 40
    return step(onset), onset


def _gradual_from(i: int) -> tuple[Model, float]:
    onset = 20.0 + (i * 7) % 40
    return gradual(onset, 1.0), onset


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("gradual_wear", "2% of workers wear out gradually from t=20..60s",
             lambda n, rng: _fleet_with(n, rng, 0.02, _gradual_from)),
    Scenario("transient_spikes", "everyone healthy, with CPU spikes of one or two samples "
             "and memory spikes", lambda n, rng: [Virtual(f"w{i}", spiky()) for i in range(n)]),
    Scenario("sustained_step", "2% of workers step to 100% CPU at once, from t=20..60s",
             lambda n, rng: _fleet_with(n, rng, 0.02, _step_from)),
    Scenario("flapping", "1% of workers alternate 5 s fine / 5 s overheated from t=0",
             lambda n, rng: _fleet_with(n, rng, 0.01, lambda i: (flapping(5.0), 5.0))),
    Scenario("correlated_half", "half the fleet degrades at once at t=30s",
             lambda n, rng: _fleet_with(n, rng, 0.5, lambda i: (gradual(30, 2.0), 30.0))),
    Scenario("broken_metrics", "the metrics pipeline reports everyone at 99% CPU from t=30s",
             lambda n, rng: [Virtual(f"w{i}", hot_reading(30)) for i in range(n)]),
    Scenario("broken_memory_metrics", "the metrics pipeline reports everyone at 99% memory "
             "from t=30s", lambda n, rng: [Virtual(f"w{i}", hot_memory_reading(30))
                                          for i in range(n)]),
    Scenario("silent_wrong_answers", "0.5% of workers answer probes wrongly from t=20s, wear normal",
             lambda n, rng: _fleet_with(n, rng, 0.005, lambda i: (wrong_answers(20), 20.0))),
    # Load, not wear: none of these workers is degraded, and none may be ejected.
    Scenario("traffic_peak", "every worker busy at 90-100% CPU from t=30s, tasks done as usual",
             lambda n, rng: [Virtual(f"w{i}", busy(30)) for i in range(n)]),
    Scenario("hot_tenth", "10% of workers busy at 93-97% CPU from t=10s, tasks done as usual",
             lambda n, rng: _fleet_with(n, rng, 0.10, lambda i: (busy(10, 93, 97), None))),
    Scenario("busy_with_stuck", "everyone busy at 90-100% from t=10s; 2% of them stuck (CPU "
             "at 100, nothing done) from t=20..60s",
             lambda n, rng: _fleet_with(n, rng, 0.02,
                                        lambda i: (busy_then_stuck(10, _step_from(i)[1]),
                                                   _step_from(i)[1]), others=busy(10))),
]}


@dataclass
class Result:
    """One scenario's figures."""

    scenario: str
    workers: int
    seconds: int
    degraded: int
    detected: int
    detection_p50_s: float | None
    detection_p99_s: float | None
    false_ejections: int
    missed_degradations: int
    max_out_fraction: float
    guard_engaged_s: int
    transitions: int
    observations: int
    policy_seconds: float
    observations_per_s: float
    shards: int = 1
    #: Seconds at whose end more workers were out of rotation than the guard's bound.
    over_bound_s: int = 0


class _Admission:
    """One shard's ``policy.shards.Budget`` over the shared in-memory budget."""

    def __init__(self, budget: ShardBudget, guard: Guard) -> None:
        self.budget, self.guard = budget, guard

    def admit(self, worker: str, queues: tuple[str, ...], now: float,
              relapse: bool) -> str | None:
        return self.budget.admit(worker, queues, now, relapse, self.guard)


def run(scenario: Scenario, n: int, seconds: int, seed: int = 0,
        config: PolicyConfig | None = None, shards: int = 1) -> Result:
    """Drive the real policy through one scenario; return its figures. With ``shards``, the
    fleet is split as checkers split it (``shard_of``), each shard a ``Fleet`` of its own that
    sees the others' figures before its tick and has every ejection admitted by one shared
    budget, as the store's; the figures are the whole fleet's."""
    rng = random.Random(seed)
    workers = scenario.build(n, rng)
    config = config or PolicyConfig()
    budgets = InMemoryGuardBudgets(shards)
    fleets = [Fleet(HealthPolicy(config), seed=seed + k,
                    budget=_Admission(budgets.for_shard(k), config.guard) if shards > 1 else None,
                    settle_s=SETTLE_S if shards > 1 else 0.0)
              for k in range(shards)]
    views = [budgets.for_shard(k) for k in range(shards)]
    owner = {v.name: fleets[shard_of(v.name, shards)] for v in workers}
    bound = fleets[0].bound(n)
    first_ejection: dict[str, float] = {}
    false_ejections = transitions = observations = engaged_s = over_bound_s = 0
    max_out = 0.0
    spent = 0.0
    truth = {w.name: w for w in workers}
    for t in range(seconds):
        batches = _reports(workers, owner, fleets, t, rng)
        start = time.perf_counter()
        decisions, seen = _decide(fleets, views, batches, t, config)
        observations += seen
        spent += time.perf_counter() - start
        for d in decisions:
            for tr in d.transitions:
                transitions += 1
                false_ejections += _ejection(tr, truth, first_ejection)
        out = sum(c for f in fleets for s, c in f.by_state().items() if s in OUT_OF_ROTATION)
        max_out = max(max_out, out / n)
        over_bound_s += out > bound
        engaged_s += any(f.guard_engaged for f in fleets)
    result = _result(scenario, n, seconds, workers, first_ejection, false_ejections, max_out,
                     engaged_s, transitions, observations, spent)
    return dataclasses.replace(result, shards=shards, over_bound_s=over_bound_s)


def _reports(workers: list[Virtual], owner: dict[str, Fleet], fleets: list[Fleet], t: int,
             rng: random.Random) -> dict[int, list[WearReport | ProbeResult]]:
    """Second ``t``'s reports (and probe answers), by the fleet (shard) each goes to."""
    batches: dict[int, list[WearReport | ProbeResult]] = {id(f): [] for f in fleets}
    for i, v in enumerate(workers):
        fleet = owner[v.name]
        state = fleet.workers[v.name].state if v.name in fleet.workers else State.HEALTHY
        # A drained worker finishes its in-flight task within the next report.
        report, wrong = v.report(float(t), rng, 1 if state is State.HEALTHY else 0)
        batch = batches[id(fleet)]
        batch.append(report)
        if (t + i) % PROBE_EVERY == 0:
            batch.append(ProbeResult(v.name, t + 0.5, "wrong" if wrong else "ok"))
    return batches


def _decide(fleets: list[Fleet], views: list[Any], batches: dict[int, list[Any]], t: int,
            config: PolicyConfig) -> tuple[list[Decision], int]:
    """Each shard takes its reports and publishes what it sees (checkers tick four times a
    second, reports come once); then each reads the others and decides. The decisions, and
    how many observations were taken."""
    decisions: list[Decision] = []
    observations = 0
    sharded = len(fleets) > 1
    for fleet, view in zip(fleets, views, strict=True):
        batch = batches[id(fleet)]
        decisions += [fleet.observe(obs) for obs in batch]
        observations += len(batch)
        if sharded:
            view.publish(fleet.own_figures())
    for fleet, view in zip(fleets, views, strict=True):
        if sharded:
            fleet.peers = view.peers(t + 0.9, config.guard.window_s)
        decisions.append(fleet.tick(t + 0.9))
        if sharded:
            view.publish(fleet.own_figures())
    return decisions, observations


def _ejection(tr: Transition, truth: dict[str, Virtual], first: dict[str, float]) -> int:
    """1 when ``tr`` takes a worker out for nothing (before its fault began), else 0; the
    first ejection of each worker is noted in ``first``."""
    if not (tr.automatic and tr.to_state in (State.DRAINING, State.QUARANTINED)
            and tr.from_state not in (State.DRAINING, State.QUARANTINED)):
        return 0
    first.setdefault(tr.worker, tr.at)
    v = truth[tr.worker]
    return 1 if v.onset is None or tr.at < v.onset else 0


def _result(scenario: Scenario, n: int, seconds: int, workers: list[Virtual],
            first: dict[str, float], false_ejections: int, max_out: float, engaged_s: int,
            transitions: int, observations: int, spent: float) -> Result:
    # Only degradations with 20 s left to be caught count as missed when they are not.
    degraded = [v for v in workers if v.onset is not None and v.onset < seconds - 20]
    delays = sorted(first[v.name] - v.onset for v in degraded
                    if v.name in first and v.onset is not None and first[v.name] >= v.onset)
    missed = sum(1 for v in degraded if v.name not in first)
    return Result(
        scenario=scenario.name, workers=n, seconds=seconds, degraded=len(degraded),
        detected=len(delays), detection_p50_s=_pct(delays, 50), detection_p99_s=_pct(delays, 99),
        false_ejections=false_ejections, missed_degradations=missed,
        max_out_fraction=round(max_out, 4), guard_engaged_s=engaged_s, transitions=transitions,
        observations=observations, policy_seconds=round(spent, 3),
        observations_per_s=round(observations / spent) if spent else 0,
    )


def _pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    k = max(0, math.ceil(p / 100 * len(values)) - 1)
    return round(sorted(values)[k], 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m healthcheck.sim", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--scenario", default="all", choices=["all", *SCENARIOS])
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1,
                        help="split the fleet as that many checkers would (one shared budget)")
    parser.add_argument("--policy", help="a policy file (TOML); default: the built-in defaults")
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.seconds < 1 or args.shards < 1:
        parser.error("--workers, --seconds and --shards must be positive")
    try:
        config = load_policy(args.policy)
    except ConfigError as exc:
        parser.error(str(exc))
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = [run(SCENARIOS[name], args.workers, args.seconds, args.seed, config, args.shards)
               for name in names]
    if args.json:
        for r in results:
            print(json.dumps(asdict(r)))
    else:
        print_table(results)
    return 0


def print_table(results: list[Result]) -> None:
    """A readable table of the results."""
    from rich.console import Console
    from rich.table import Table

    shards = f" over {results[0].shards} shards" if results[0].shards > 1 else ""
    table = Table(title=f"fleet simulator: {results[0].workers} workers{shards}, "
                        f"{results[0].seconds} s")
    for col in ("scenario", "degraded", "detected", "delay p50 s", "delay p99 s", "false ej.",
                "missed", "max out", "over bound s", "guard s", "obs/s"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in results:
        table.add_row(r.scenario, str(r.degraded), str(r.detected), _fmt(r.detection_p50_s),
                      _fmt(r.detection_p99_s), str(r.false_ejections), str(r.missed_degradations),
                      f"{r.max_out_fraction:.1%}", str(r.over_bound_s), str(r.guard_engaged_s),
                      f"{r.observations_per_s:,}")
    Console(width=150).print(table)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
