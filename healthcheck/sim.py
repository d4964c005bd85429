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
from dataclasses import asdict, dataclass
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
    State,
    Transition,
)
from healthcheck.policy.config import Guard
from healthcheck.policy.model import OUT_OF_ROTATION
from healthcheck.policy.observations import WearReport
from healthcheck.scenarios import SCENARIOS, Scenario, Virtual
from healthcheck.store.memory import InMemoryGuardBudgets, ShardBudget

PROBE_EVERY = 10
#: How long a shard's proposed ejection waits for the other shards' figures (two ticks).
SETTLE_S = 0.5

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
