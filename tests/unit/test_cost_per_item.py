"""Cost per item, the pure policy: a worker whose CPU per item done rises well above both its
peers' median and its own usual cost is degraded (soft: confirmed, then drained); a busy worker,
a fleet whose inputs all got dearer, and a worker on slower hardware are not. No I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

from healthcheck.policy import Fleet, HealthPolicy, PolicyConfig, State, WearReport
from healthcheck.policy.config import Cost
from tests.unit.test_busy_is_not_worn import FLEET, fleet, report, run


def costing(name: str, ms: Callable[[float], float], cpu: float = 30.0) -> Callable[[float],
                                                                                      WearReport]:
    """Reports of ``name`` saying ``ms(t)`` CPU milliseconds per item at time t."""
    return lambda t: dataclasses.replace(report(name, t, cpu=cpu, last=cpu), cost_ms=ms(t))


def everyone(ms: Callable[[str, float], float]) -> dict[str, Callable[[float], WearReport]]:
    """Every worker's reports, ``ms(name, t)`` milliseconds per item."""
    return {n: costing(n, partial(ms, n)) for n in FLEET}


def ejected(moves: list[tuple[str, State, State, str]]) -> list[tuple[str, str]]:
    return [(w, why) for w, _, to, why in moves if to is State.DRAINING]


class TestCostPerItem:
    def test_a_worker_whose_items_cost_four_times_more_is_drained(self) -> None:
        f = fleet()
        moves = run(f, 60, everyone(lambda n, t: 4.0 if n == "w1" and t > 30 else 1.0))
        [(who, why)] = ejected(moves)
        assert who == "w1" and "cost per item 4.00 ms > 3.00 ms" in why
        suspect_at = next(i for i, m in enumerate(moves) if m[2] is State.SUSPECT)
        assert moves[suspect_at][0] == "w1"  # soft first, confirmed by the reports after

    def test_busy_at_its_usual_cost_stays(self) -> None:
        f = fleet()
        make = everyone(lambda n, t: 1.2 if n == "w1" else 1.0)
        make["w1"] = costing("w1", lambda t: 1.2, cpu=99.0)  # full speed, same cost per item
        assert ejected(run(f, 120, make)) == []
        assert f.workers["w1"].busy == "cpu_percent 99"

    def test_dearer_inputs_for_everyone_eject_nobody(self) -> None:
        f = fleet()
        assert ejected(run(f, 90, everyone(lambda n, t: 1.0 if t < 30 else 6.0))) == []

    def test_slower_hardware_is_judged_against_its_own_usual_cost(self) -> None:
        """w1 costs 4x its peers from its first report: its usual, not a degradation; past
        3x that, it is one."""
        f = fleet()
        assert ejected(run(f, 60, everyone(lambda n, t: 4.0 if n == "w1" else 1.0))) == []
        moves = run(f, 30, everyone(lambda n, t: 13.0 if n == "w1" else 1.0), start=61.0)
        assert [w for w, _ in ejected(moves)] == ["w1"]

    def test_too_few_peers_or_off_judges_nobody(self) -> None:
        small = Fleet(HealthPolicy(), seed=1)
        for name in FLEET[:4]:
            small.observe(report(name, 0.0))
        for t in range(1, 40):
            for name in FLEET[:4]:
                small.observe(dataclasses.replace(report(name, float(t)),
                                                  cost_ms=9.0 if name == "w1" and t > 20 else 1.0))
            assert not small.tick(t + 0.1).transitions
        off = fleet(PolicyConfig(cost=Cost(enabled=False)))
        assert ejected(run(off, 60, everyone(lambda n, t: 9.0 if n == "w1" and t > 30
                                               else 1.0))) == []

    def test_a_report_without_a_cost_is_not_judged_by_it(self) -> None:
        f = fleet()
        run(f, 30, everyone(lambda n, t: 1.0))
        make = everyone(lambda n, t: 1.0)
        make["w1"] = lambda t: report("w1", t)  # an older worker: no cost_ms
        assert ejected(run(f, 30, make, start=31.0)) == []

    def test_a_gradual_drift_does_not_become_its_usual_cost(self) -> None:
        """Its start-up makes its first costs high (3 ms, then 1); then its cost climbs over
        10 s to 10 ms, as the worker's 10 s window makes a step look: its usual cost fell with
        the start-up, did not follow the climb, and it is out."""
        def w1(t: float) -> float:
            if t < 5:
                return 3.0
            return 1.0 if t < 30 else min(10.0, 1.0 + 0.9 * (t - 30))

        f = fleet()
        moves = run(f, 60, everyone(lambda n, t: w1(t) if n == "w1" else 1.0))
        assert [w for w, _ in ejected(moves)] == ["w1"]
