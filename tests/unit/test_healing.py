"""Healing, the pure policy: a worker out for a cause a restart cures is recycled as it is
quarantined, at most ``healing.max_per_hour`` times an hour; past that it stays out for a
person. Explicit times, no I/O."""

from __future__ import annotations

import dataclasses

from healthcheck.policy import (
    Fleet,
    HealthPolicy,
    PolicyConfig,
    ProbeResult,
    Reading,
    State,
    WearReport,
)
from healthcheck.policy.config import Healing
from healthcheck.policy.machine import Proposal
from healthcheck.policy.model import Cause, WorkerHealth
from healthcheck.store.codec import from_dict, to_dict
from tests.unit.test_busy_is_not_worn import report

LEAK = {"rss_percent": 96.0, "rss_percent_peak": 96.0}
STUCK = {"cpu_percent": 99.0, "stalled_s": 4.0}
HOT = {"temperature_c": 93.0}
STRAY = {"stray_processes": 1.0}


def worker() -> WorkerHealth:
    return WorkerHealth("w1", since=0.0, last_seen=0.0, queues=("tweets",))


def eject_and_drain(policy: HealthPolicy, w: WorkerHealth, evidence: dict[str, float],
                    at: float) -> tuple[WorkerHealth, bool, str]:
    """Ejected for ``evidence`` at ``at``, drained (nothing in flight) a second later: the
    worker, whether it is to be recycled, and the quarantine's reason."""
    w = policy.eject(w, Proposal("worn", Cause.WEAR, evidence, at), at).health
    step = policy.observe_wear(w, report("w1", at + 1, running=0, stalled_s=0.0))
    [t] = [t for t in step.transitions if t.to_state is State.QUARANTINED]
    return step.health, t.recycle, t.reason


def readmit(policy: HealthPolicy, w: WorkerHealth) -> WorkerHealth:
    """Back-off over, probes pass: PROBATION, then HEALTHY by an operator's word (quicker here
    than 60 s of clean reports, and the same for what is tested)."""
    at = w.backoff_until + 1
    for i in range(3):
        w = policy.observe_probe(w, ProbeResult("w1", at + i, "ok")).health
    assert w.state is State.PROBATION, w
    return policy.operator(w, State.HEALTHY, "test", at + 10).health


class TestRecycling:
    def test_a_leak_a_stuck_pool_and_a_runaway_child_are_recycled_as_quarantined(self) -> None:
        policy = HealthPolicy()
        for evidence in (LEAK, STUCK, STRAY):
            w, recycle, _ = eject_and_drain(policy, worker(), evidence, 100.0)
            assert w.state is State.QUARANTINED and recycle
            assert w.recycles == (101.0,) and not w.heal and not w.for_person

    def test_other_wear_is_quarantined_as_before(self) -> None:
        w, recycle, _ = eject_and_drain(HealthPolicy(), worker(), HOT, 100.0)
        assert w.state is State.QUARANTINED and not recycle and w.recycles == ()

    def test_off_recycles_nobody(self) -> None:
        policy = HealthPolicy(PolicyConfig(healing=Healing(enabled=False)))
        assert not eject_and_drain(policy, worker(), LEAK, 100.0)[1]

    def test_past_the_bound_it_stays_out_for_a_person_until_restored(self) -> None:
        """Twice recycled within the hour (max_per_hour 2): the third time it stays out, the
        count in its reason, and passing probes does not bring it back; a person's restore
        does, and the hour's count is the policy's business again."""
        policy = HealthPolicy(PolicyConfig(healing=Healing(max_per_hour=2)))
        w, at = worker(), 100.0
        for _ in range(2):
            w, recycle, _ = eject_and_drain(policy, w, LEAK, at)
            assert recycle
            w = readmit(policy, w)
            at = w.since + 60
        w, recycle, reason = eject_and_drain(policy, w, LEAK, at)
        assert not recycle and w.state is State.QUARANTINED
        assert reason.startswith("recycled 2 times in the last hour, still worn")
        assert w.for_person == "recycled 2 times in the last hour, still worn"
        for i in range(5):
            w = policy.observe_probe(w, ProbeResult("w1", w.backoff_until + 1 + i, "ok")).health
        assert w.state is State.QUARANTINED
        w = policy.operator(w, State.PROBATION, "memory fixed", w.backoff_until + 10).health
        assert w.state is State.PROBATION and w.for_person == ""

    def test_recycles_older_than_an_hour_no_longer_count(self) -> None:
        policy = HealthPolicy(PolicyConfig(healing=Healing(max_per_hour=1)))
        w, recycle, _ = eject_and_drain(policy, worker(), LEAK, 100.0)
        assert recycle
        w = readmit(policy, w)
        assert not eject_and_drain(policy, w, LEAK, 1000.0)[1]  # within the hour: held
        w = dataclasses.replace(w, for_person="")
        assert eject_and_drain(policy, w, LEAK, 3800.0)[1]  # the first has aged out

    def test_the_count_survives_a_checker_restart(self) -> None:
        w, _, _ = eject_and_drain(HealthPolicy(), worker(), LEAK, 100.0)
        again = from_dict(to_dict(dataclasses.replace(w, for_person="x")))
        assert again.recycles == (101.0,) and again.for_person == "x"

    def test_a_leak_reported_by_a_worker_is_evidence_that_cures(self) -> None:
        """End to end through the fleet: a report over rss_percent's hard limit ejects, the
        drain quarantines with a recycle; busy CPU beside it changes nothing."""
        fleet = Fleet(HealthPolicy(), seed=1)
        for name in ("w1", "w2", "w3", "w4"):
            fleet.observe(report(name, 0.0))
        busy = report("w1", 1.0, cpu=99, last=99)
        leaking = dataclasses.replace(busy, wear={**busy.wear,
                                                  "rss_percent": Reading(96.0, 96.0, 96.0)})
        fleet.observe(leaking)
        [out] = fleet.tick(1.1).transitions
        assert out.to_state is State.DRAINING and "rss_percent" in out.reason
        d = fleet.observe(report("w1", 2.0, running=0, stalled_s=0.0))
        [quarantined] = d.transitions
        assert quarantined.to_state is State.QUARANTINED and quarantined.recycle

    def test_a_runaway_child_that_stays_is_out_one_that_goes_is_not(self) -> None:
        """A process a pool process left running, reported in three raw samples in a row over
        1.75 s (the sustained rule): drained, then quarantined with a recycle. One that is
        there for one sample (a task's child on its way out) changes nothing."""
        def with_strays(at: float, n: float) -> WearReport:
            r = report("w1", at)
            return dataclasses.replace(r, wear={**r.wear, "stray_processes": Reading(
                0.3 * n, n, n)})

        fleet = Fleet(HealthPolicy(), seed=1)
        for name in ("w1", "w2", "w3", "w4"):
            fleet.observe(report(name, 0.0))
        fleet.observe(with_strays(1.0, 1))
        fleet.observe(with_strays(2.0, 0))
        assert not fleet.tick(2.1).transitions
        for at in (3.0, 4.0, 5.0):
            fleet.observe(with_strays(at, 1))
        [out] = fleet.tick(5.1).transitions
        assert out.to_state is State.DRAINING and "stray_processes" in out.reason
        d = fleet.observe(report("w1", 6.0, running=0, stalled_s=0.0))
        [quarantined] = d.transitions
        assert quarantined.to_state is State.QUARANTINED and quarantined.recycle

