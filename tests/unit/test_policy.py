"""The health policy, table-style with explicit times: no clock, no I/O, no sleeps."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthcheck.policy import (
    Cause,
    Fleet,
    HealthPolicy,
    Heartbeat,
    PolicyConfig,
    ProbeResult,
    Reading,
    State,
    Transition,
    WearReport,
    WorkerHealth,
)
from healthcheck.policy.config import Guard, Recovery
from healthcheck.policy.machine import Step

POLICY_DIR = Path(__file__).resolve().parents[2] / "healthcheck" / "policy"


def wear(worker: str = "w1", at: float = 0.0, cpu: float = 20.0, cpu_peak: float | None = None,
         mem: float = 30.0, mem_peak: float | None = None, inflight: int = 0,
         queues: tuple[str, ...] = ("tweets",), **kw: object) -> WearReport:
    readings = {"cpu_percent": Reading(cpu, cpu if cpu_peak is None else cpu_peak),
                "memory_percent": Reading(mem, mem if mem_peak is None else mem_peak)}
    return WearReport(worker=worker, at=at, wear=readings, inflight=inflight, queues=queues,
                      **kw)  # type: ignore[arg-type]


def healthy(name: str = "w1", at: float = 0.0) -> WorkerHealth:
    return WorkerHealth(name=name, since=at, last_seen=at, queues=("tweets",))


class TestPurity:
    def test_policy_imports_only_the_stdlib(self) -> None:
        """healthcheck/policy may import only the standard library and itself."""
        allowed = set(sys.stdlib_module_names) | {"healthcheck"}
        bad = []
        for path in POLICY_DIR.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in allowed]
        assert bad == []
        assert len(list(POLICY_DIR.rglob("*.py"))) >= 5

    def test_policy_never_reads_a_clock(self) -> None:
        """No time.time/monotonic or datetime.now inside the policy: time is a parameter."""
        for path in POLICY_DIR.rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for forbidden in ("time.time(", "monotonic(", "datetime.now", "import time"):
                assert forbidden not in text, f"{path.name} uses {forbidden}"


class TestDetectors:
    policy = HealthPolicy()

    @pytest.mark.parametrize(("report", "state", "ejects"), [
        (wear(cpu=20), State.HEALTHY, False),
        (wear(cpu=90), State.SUSPECT, False),  # soft: suspect, not yet drained
        (wear(cpu=98), State.HEALTHY, True),  # hard: ejection proposed at once
        (wear(mem=50, mem_peak=99), State.HEALTHY, True),  # a peak alone can be hard
        (wear(mem=50, mem_peak=93), State.SUSPECT, False),  # a soft peak
        (wear(cpu=50, cpu_peak=100), State.HEALTHY, False),  # cpu spikes are normal
        (wear(consecutive_failures=5), State.HEALTHY, True),
        (wear(completed=6, failed=4), State.SUSPECT, False),  # 40% of 10: soft
        (wear(completed=4, failed=6), State.HEALTHY, True),  # 60% of 10: hard
        (wear(completed=1, failed=3), State.HEALTHY, False),  # 75% of 4: below min volume
        (wear(self_protected="memory 97% > 95%"), State.HEALTHY, True),
    ])
    def test_one_report_from_healthy(self, report: WearReport, state: State, ejects: bool) -> None:
        """Each detector's verdict on one report from a HEALTHY worker."""
        step = self.policy.observe_wear(healthy(), report)
        assert step.health.state is state
        assert (step.eject is not None) is ejects
        assert all(t.reason for t in step.transitions)

    def test_latency_outlier_needs_a_fleet_and_volume(self) -> None:
        """p95 against the fleet's median: soft when 3x over, ignored without a reference."""
        slow = wear(runtime_p95=0.5, completed=20)
        assert self.policy.observe_wear(healthy(), slow, fleet_p95=0.1).health.state is State.SUSPECT
        assert self.policy.observe_wear(healthy(), slow, fleet_p95=None).health.state is State.HEALTHY
        few = wear(runtime_p95=0.5, completed=3)
        assert self.policy.observe_wear(healthy(), few, fleet_p95=0.1).health.state is State.HEALTHY


class TestStateMachine:
    policy = HealthPolicy()

    def test_soft_breaches_confirm_after_n_in_a_row(self) -> None:
        """Three soft reports in a row propose the ejection; a clean one in between resets."""
        w = healthy()
        steps = []
        for t, cpu in [(1, 90), (2, 90), (3, 20), (4, 90), (5, 90), (6, 90)]:
            step = self.policy.observe_wear(w, wear(at=t, cpu=cpu))
            w = step.health
            steps.append(step)
        assert [s.eject is not None for s in steps] == [False, False, False, False, False, True]
        assert "3 reports in a row" in (steps[-1].eject.reason if steps[-1].eject else "")

    def test_suspect_recovers_only_after_passes_and_minimum_time(self) -> None:
        """Leaving SUSPECT needs 3 clean reports and 10 s in the state."""
        w = self.policy.observe_wear(healthy(), wear(at=0, cpu=90)).health
        assert w.state is State.SUSPECT
        for t in (1, 2, 3, 4):
            w = self.policy.observe_wear(w, wear(at=t)).health
        assert w.state is State.SUSPECT  # 4 passes, but only 4 s
        w = self.policy.observe_wear(w, wear(at=10)).health
        assert w.state is State.HEALTHY

    def test_drain_then_quarantine_with_backoff(self) -> None:
        """DRAINING becomes QUARANTINED once nothing is in flight; the back-off starts then."""
        step = self.policy.observe_wear(healthy(), wear(at=0, cpu=99))
        assert step.eject is not None
        w = self.policy.eject(step.health, step.eject, now=0).health
        assert (w.state, w.cause, w.ejections) == (State.DRAINING, Cause.WEAR, 1)
        w = self.policy.observe_wear(w, wear(at=1, cpu=99, inflight=2)).health
        assert w.state is State.DRAINING
        step = self.policy.observe_wear(w, wear(at=2, cpu=99, inflight=0), jitter_s=1.5)
        w = step.health
        assert w.state is State.QUARANTINED
        assert w.backoff_until == pytest.approx(2 + 30 + 1.5)
        assert step.transitions[0].reason.startswith("drained")

    def test_drain_timeout_quarantines(self) -> None:
        """A drain that never completes ends in quarantine after drain_timeout_s."""
        step = self.policy.observe_wear(healthy(), wear(at=0, cpu=99))
        w = self.policy.eject(step.health, step.eject, now=0).health  # type: ignore[arg-type]
        w = dataclasses.replace(w, last_seen=60)
        assert self.policy.tick(w, now=59).health.state is State.DRAINING
        assert self.policy.tick(w, now=61).health.state is State.QUARANTINED

    @pytest.mark.parametrize(("ejections", "jitter", "expected"), [
        (1, 0, 30), (2, 0, 60), (3, 0, 120), (4, 0, 240), (5, 0, 300), (50, 0, 300),
        (1, 2.5, 32.5), (1, 99, 35),  # jitter is capped at jitter_s
    ])
    def test_backoff_is_exponential_capped_and_jittered(self, ejections: int, jitter: float,
                                                        expected: float) -> None:
        """min(30 x 2^(n-1), 300) + min(jitter, 5)."""
        assert self.policy.backoff_s(ejections, jitter) == pytest.approx(expected)

    def test_wrong_probe_quarantines_at_once(self) -> None:
        """One wrong answer: QUARANTINED straight from HEALTHY, cause probe."""
        step = self.policy.observe_probe(healthy(), ProbeResult("w1", 5, "wrong", "compound 0.1"))
        assert step.health.state is State.QUARANTINED
        assert step.health.cause is Cause.PROBE
        assert step.eject is None
        assert "wrong probe answer" in step.transitions[0].reason

    def test_quarantine_to_probation_to_healthy(self) -> None:
        """Probes count only after the back-off; probation needs 60 clean seconds."""
        w = self.policy.observe_probe(healthy(), ProbeResult("w1", 0, "wrong")).health
        until = w.backoff_until
        w = self.policy.observe_probe(w, ProbeResult("w1", until - 1, "ok")).health
        assert w.passes == 0  # during the back-off, passes do not count
        for i in range(3):
            w = self.policy.observe_probe(w, ProbeResult("w1", until + i, "ok")).health
        assert w.state is State.PROBATION
        start = w.since
        for t in range(1, 5):
            w = self.policy.observe_wear(w, wear(at=start + t)).health
        assert w.state is State.PROBATION
        w = self.policy.observe_wear(w, wear(at=start + 61)).health
        assert w.state is State.HEALTHY

    def test_probation_relapse_proposes_ejection_on_a_tighter_soft_limit(self) -> None:
        """In PROBATION soft limits are 10% tighter and one breach proposes ejection."""
        w = dataclasses.replace(healthy(), state=State.PROBATION, ejections=1)
        step = self.policy.observe_wear(w, wear(at=1, cpu=80))  # 80 >= 85 x 0.9 = 76.5
        assert step.eject is not None
        assert self.policy.observe_wear(healthy(), wear(at=1, cpu=80)).eject is None

    def test_offline_and_back(self) -> None:
        """Silence past offline_after_s is OFFLINE; a quarantined worker comes back quarantined."""
        w = dataclasses.replace(healthy(), state=State.QUARANTINED, cause=Cause.WEAR,
                                backoff_until=100)
        assert self.policy.tick(w, now=6).health.state is State.QUARANTINED
        step = self.policy.tick(w, now=6.5)
        assert step.health.state is State.OFFLINE
        back = self.policy.observe_wear(step.health, wear(at=20))
        assert back.health.state is State.QUARANTINED
        assert back.health.cause is Cause.WEAR

    def test_no_transition_is_dated_before_the_state_it_leaves(self) -> None:
        """A report that arrived at 99.9, applied after a person's restore at 100, moves the
        worker from 100 on: the audit log's times agree with its order (seed 33 of the nemesis
        read a HEALTHY -> SUSPECT dated before the restore that made it HEALTHY)."""
        out = dataclasses.replace(healthy(), state=State.QUARANTINED, cause=Cause.PROBE)
        back = self.policy.operator(out, State.HEALTHY, "nemesis heals", now=100.0).health
        step = self.policy.observe_wear(back, wear(at=99.9, cpu=90))
        assert [(t.to_state, t.at) for t in step.transitions] == [(State.SUSPECT, 100.0)]
        assert step.health.since == 100.0

    def test_maintenance_is_never_left_automatically(self) -> None:
        """The checker never re-admits a worker in MAINTENANCE on its own."""
        w = self.policy.operator(healthy(), State.MAINTENANCE, "fan swap", now=0).health
        for t in range(1, 100, 7):
            w = self.policy.observe_wear(w, wear(at=t)).health
            w = self.policy.observe_probe(w, ProbeResult("w1", t, "ok")).health
            w = self.policy.tick(w, now=t + 1).health
        assert w.state is State.MAINTENANCE

    def test_a_stop_drain_ends_when_the_worker_starts_again(self) -> None:
        """A drain for a platform stop holds like maintenance while the worker lives on (wear,
        heartbeats, probes, time), and ends at its next start: Celery's worker-online."""
        w = self.policy.operator(healthy(), State.MAINTENANCE, "platform stop", now=0,
                                 stopping=True).health
        assert (w.state, w.cause) == (State.MAINTENANCE, Cause.STOPPING)
        for t in range(1, 30, 3):
            w = self.policy.observe_wear(w, wear(at=t)).health
            w = self.policy.observe(w, Heartbeat("w1", t + 1)).health
            w = self.policy.observe_probe(w, ProbeResult("w1", t + 1, "ok")).health
            w = self.policy.tick(w, now=t + 2).health
        assert w.state is State.MAINTENANCE
        step = self.policy.observe(w, Heartbeat("w1", 40, started=True))
        assert step.health.state is State.HEALTHY and step.health.cause is Cause.NONE
        assert [t.to_state for t in step.transitions] == [State.HEALTHY]

    def test_a_stop_leaves_a_worker_already_out_as_it_was(self) -> None:
        """Quarantined for a wrong answer, draining, or in a person's maintenance: a stop of
        its platform (preStop, ExecStop, a recycle by exit) changes nothing, so its restart
        brings it back to the same state and the same way back (probes, a person), never
        straight to HEALTHY."""
        wrong = self.policy.observe_probe(healthy(), ProbeResult("w1", 1, "wrong")).health
        kept = self.policy.operator(healthy(), State.MAINTENANCE, "fan swap", now=0).health
        draining = dataclasses.replace(healthy(), state=State.DRAINING, cause=Cause.WEAR)
        for w in (wrong, kept, draining):
            step = self.policy.operator(w, State.MAINTENANCE, "platform stop", now=5,
                                        stopping=True)
            assert step.health == w and step.transitions == ()
            restarted = self.policy.observe(step.health, Heartbeat("w1", 9, started=True))
            assert restarted.health.state is w.state and restarted.health.cause is w.cause

    def test_a_stopped_worker_heard_after_offline_comes_back_healthy(self) -> None:
        """Stopped for longer than offline_after_s: OFFLINE, then HEALTHY when heard again
        (a maintenance drain would come back to MAINTENANCE)."""
        for stopping, back in ((True, State.HEALTHY), (False, State.MAINTENANCE)):
            w = self.policy.operator(healthy(), State.MAINTENANCE, "stop", now=0,
                                     stopping=stopping).health
            w = self.policy.tick(w, now=100).health
            assert w.state is State.OFFLINE
            assert self.policy.observe(w, Heartbeat("w1", 120)).health.state is back

    def test_worker_online_does_not_end_a_maintenance_drain(self) -> None:
        """Only a stop drain ends at a start: a maintenance drain still needs restore."""
        w = self.policy.operator(healthy(), State.MAINTENANCE, "fan swap", now=0).health
        w = self.policy.observe(w, Heartbeat("w1", 1, started=True)).health
        assert w.state is State.MAINTENANCE
        with pytest.raises(ValueError, match="stop"):
            self.policy.operator(healthy(), State.QUARANTINED, "x", now=0, stopping=True)

    def test_operator_needs_a_reason_and_a_target_it_may_set(self) -> None:
        """Operators set MAINTENANCE, QUARANTINED, PROBATION or HEALTHY, always with a reason."""
        with pytest.raises(ValueError, match="reason"):
            self.policy.operator(healthy(), State.MAINTENANCE, " ", now=0)
        with pytest.raises(ValueError, match="cannot"):
            self.policy.operator(healthy(), State.DRAINING, "x", now=0)

    def test_dry_run_marks_transitions_unenforced(self) -> None:
        """With enforce=False, transitions are detected but say enforced=False."""
        dry = HealthPolicy(PolicyConfig(enforce=False))
        step = dry.observe_probe(healthy(), ProbeResult("w1", 1, "wrong"))
        assert step.transitions and not step.transitions[0].enforced


class TestFleetGuard:
    def fleet(self, n: int, **guard: object) -> Fleet:
        config = PolicyConfig(guard=Guard(**guard))  # type: ignore[arg-type]
        fleet = Fleet(HealthPolicy(config))
        for i in range(n):
            fleet.observe(wear(f"w{i}", at=0))
        return fleet

    def test_bound_is_a_fraction_with_a_floor(self) -> None:
        """bound(n) = max(1, floor(0.25 n)): 3 -> 1, 4 -> 1, 8 -> 2, 12 -> 3."""
        fleet = Fleet()
        assert [fleet.bound(n) for n in (1, 3, 4, 8, 12)] == [1, 1, 1, 2, 3]

    def test_three_of_four_hot_at_once_ejects_none_and_engages(self) -> None:
        """Three of four go hot in the same pass: more than the bound, so the inputs are suspect."""
        fleet = self.fleet(4)
        for i in range(3):
            fleet.observe(wear(f"w{i}", at=1, cpu=99))
        assert fleet.by_state()[State.DRAINING] == 0  # proposals wait for the tick
        decision = fleet.tick(1.5)
        states = fleet.by_state()
        assert states[State.DRAINING] == 0
        assert states[State.SUSPECT] == 3
        assert decision.guard_engaged
        assert "suspecting the inputs" in fleet.workers["w0"].reason
        assert fleet.healthy_consumers("tweets") == 4

    def test_one_after_another_ejects_the_bound_then_holds(self) -> None:
        """Staggered degradations: the first is ejected, the next are held; the bound holds."""
        fleet = self.fleet(4)
        fleet.observe(wear("w0", at=1, cpu=99, inflight=1))
        fleet.tick(1.2)
        assert fleet.workers["w0"].state is State.DRAINING
        assert not fleet.guard_engaged
        fleet.observe(wear("w1", at=2, cpu=99))
        fleet.observe(wear("w2", at=2.1, cpu=99))
        decision = fleet.tick(2.2)
        assert fleet.by_state()[State.DRAINING] == 1
        assert decision.guard_engaged
        assert fleet.figures().held == 2
        assert fleet.healthy_consumers("tweets") == 3

    def test_rate_limit_spreads_ejections_over_windows(self) -> None:
        """At most 3 new ejections per 60 s in a fleet of 40, even within the fraction bound."""
        fleet = self.fleet(40)  # bound 10, rate max(3, 2) = 3
        for i in range(4):
            fleet.observe(wear(f"w{i}", at=1, cpu=99, inflight=1))
        fleet.tick(1.5)
        assert fleet.by_state()[State.DRAINING] == 3
        assert not fleet.guard_engaged  # 3 out + 1 held = 4 <= 10: not suspicious
        for i in range(40):
            fleet.observe(wear(f"w{i}", at=62, cpu=99 if i == 3 else 20, inflight=1))
        fleet.tick(62.5)
        assert fleet.workers["w3"].state is State.DRAINING

    def test_rate_limit_scales_with_the_fleet(self) -> None:
        """The per-window limit is max(3, 5% of the fleet): 50 for 1,000 workers."""
        assert self.fleet(10).rate_limit() == 3
        assert self.fleet(1000).rate_limit() == 50

    def test_wrong_probes_are_exempt(self) -> None:
        """Wrong answers quarantine even when the guard's budget is used up."""
        fleet = self.fleet(4)
        fleet.observe(wear("w0", at=1, cpu=99, inflight=1))
        fleet.tick(1.5)
        fleet.observe(ProbeResult("w1", 1, "wrong"))
        fleet.observe(ProbeResult("w2", 1, "wrong"))
        assert fleet.workers["w1"].state is State.QUARANTINED
        assert fleet.workers["w2"].state is State.QUARANTINED
        assert fleet.figures().automatic_out == 3

    def test_operator_drains_show_but_do_not_spend_the_budget(self) -> None:
        """MAINTENANCE shows in the figures and leaves the automatic budget untouched."""
        fleet = self.fleet(4)
        fleet.operator("w1", State.MAINTENANCE, "fan swap", now=1)
        fleet.observe(wear("w0", at=2, cpu=99, inflight=1))
        fleet.tick(2.5)
        figures = fleet.figures()
        assert (figures.operator_out, figures.automatic_out) == (1, 1)
        assert fleet.workers["w0"].state is State.DRAINING

    def test_stop_drains_show_as_operators_and_do_not_spend_the_budget(self) -> None:
        """A platform's stop drains (a rolling restart) are people's drains to the guard."""
        fleet = self.fleet(4)
        fleet.operator("w1", State.MAINTENANCE, "preStop", now=1, stopping=True)
        fleet.observe(wear("w0", at=2, cpu=99, inflight=1))
        fleet.tick(2.5)
        figures = fleet.figures()
        assert (figures.operator_out, figures.automatic_out) == (1, 1)
        assert fleet.workers["w0"].state is State.DRAINING

    def test_per_queue_bound(self) -> None:
        """A queue's consumers are bounded too: two bulk workers of ten, bound 1 for bulk."""
        config = PolicyConfig(guard=Guard(max_ejected_fraction=0.5))
        fleet = Fleet(HealthPolicy(config))
        for i in range(10):
            fleet.observe(wear(f"w{i}", at=0, queues=("tweets", "bulk") if i < 2 else ("tweets",)))
        fleet.observe(wear("w0", at=1, cpu=99, queues=("tweets", "bulk"), inflight=1))
        fleet.observe(wear("w1", at=1, cpu=99, queues=("tweets", "bulk"), inflight=1))
        fleet.tick(1.5)
        assert fleet.workers["w0"].state is State.DRAINING
        assert fleet.workers["w1"].state is State.SUSPECT
        assert "queue bulk" in fleet.workers["w1"].reason

    def test_guard_clears_when_the_inputs_look_sane_again(self) -> None:
        """Once the held workers report clean figures, the guard disengages."""
        fleet = self.fleet(4)
        for i in range(3):
            fleet.observe(wear(f"w{i}", at=1, cpu=99))
        fleet.tick(1.5)
        assert fleet.guard_engaged
        for i in range(4):
            fleet.observe(wear(f"w{i}", at=2, cpu=20, inflight=0))
        assert not fleet.guard_engaged

    def test_offline_is_never_a_healthy_consumer(self) -> None:
        """A silent worker goes OFFLINE at the next tick and stops counting as a consumer."""
        fleet = self.fleet(3)
        assert fleet.healthy_consumers("tweets") == 3
        fleet.observe(wear("w0", at=5))
        fleet.observe(wear("w1", at=5))
        fleet.tick(10)
        assert fleet.workers["w2"].state is State.OFFLINE
        assert fleet.healthy_consumers("tweets") == 2

    def test_forgiveness_after_long_health(self) -> None:
        """Ejections are forgiven after forgive_after_s of health: the back-off starts over."""
        config = PolicyConfig(recovery=Recovery(forgive_after_s=100))
        policy = HealthPolicy(config)
        w = dataclasses.replace(healthy(), ejections=3, last_seen=150)
        assert policy.tick(w, now=99).health.ejections == 3
        assert policy.tick(w, now=101).health.ejections == 0


class TestReadmissionNeedsCleanWear:
    def test_bad_wear_resets_probe_passes(self) -> None:
        """A quarantined worker that still runs hot does not earn its way back on probes alone."""
        policy = HealthPolicy()
        w = dataclasses.replace(healthy(), state=State.QUARANTINED, cause=Cause.WEAR,
                                backoff_until=10)
        w = policy.observe_probe(w, ProbeResult("w1", 11, "ok")).health
        w = policy.observe_probe(w, ProbeResult("w1", 12, "ok")).health
        w = policy.observe_wear(w, wear(at=12.5, cpu=99)).health
        w = policy.observe_probe(w, ProbeResult("w1", 13, "ok")).health
        assert (w.state, w.passes) == (State.QUARANTINED, 1)


class TestProbationClock:
    def test_a_held_relapse_restarts_the_probation_clock(self) -> None:
        """A breach in probation, even one the guard holds back, restarts its 60 s."""
        policy = HealthPolicy()
        w = dataclasses.replace(healthy(), state=State.PROBATION, since=0, ejections=1)
        w = policy.observe_wear(w, wear(at=50, cpu=90)).health  # a breach at 50 s
        for t in (55, 56, 57, 70):
            w = policy.observe_wear(w, wear(at=t)).health
        assert w.state is State.PROBATION  # 70 s in, but only 20 s clean
        w = policy.observe_wear(w, wear(at=111)).health
        assert w.state is State.HEALTHY

    def test_relapses_in_probation_skip_the_rate_limit(self) -> None:
        """The rate limit counts new ejections; a relapsing probation worker is not held by it."""
        config = PolicyConfig(guard=Guard(max_ejections_per_window=1, max_ejected_fraction=0.5))
        fleet = Fleet(HealthPolicy(config))
        for i in range(4):
            fleet.observe(wear(f"w{i}", at=0))
        fleet.observe(wear("w0", at=1, cpu=99, inflight=1))
        fleet.tick(1.5)
        fleet.workers["w1"] = dataclasses.replace(fleet.workers["w1"], state=State.PROBATION)
        fleet.observe(wear("w1", at=2, cpu=90, inflight=1))
        fleet.tick(2.5)
        assert fleet.workers["w1"].state is State.DRAINING


class TestProbeLiveness:
    def test_late_and_missing_probes_are_not_signs_of_life(self) -> None:
        """A silent worker goes OFFLINE even while its probes keep coming back late."""
        policy = HealthPolicy()
        w = healthy(at=0)
        for t, outcome in ((3, "late"), (5, "missing"), (6.5, "late")):
            w = policy.observe_probe(w, ProbeResult("w1", t, outcome)).health
        assert w.last_seen == 0
        assert policy.tick(w, now=7).health.state is State.OFFLINE


class TestOperatorStatesHold:
    policy = HealthPolicy()

    def test_a_manual_quarantine_outlasts_its_backoff_and_any_probes(self) -> None:
        """Probes re-admit a worker the checker quarantined, never one a person quarantined."""
        w = self.policy.operator(healthy(), State.QUARANTINED, "bad disk", now=0).health
        for t in range(1, 2000, 5):
            w = self.policy.observe_wear(w, wear(at=t)).health
            w = self.policy.observe_probe(w, ProbeResult("w1", t + 1, "ok")).health
            w = self.policy.tick(w, now=t + 2).health
        assert (w.state, w.cause) == (State.QUARANTINED, Cause.OPERATOR)

    def test_quarantining_a_worker_the_checker_holds_makes_it_the_operators(self) -> None:
        """A person's quarantine of an already quarantined worker is recorded and then holds."""
        w = self.policy.observe_probe(healthy(), ProbeResult("w1", 1, "wrong")).health
        assert w.cause is Cause.PROBE
        step = self.policy.operator(w, State.QUARANTINED, "operator: keep it out", now=2)
        [t] = step.transitions
        assert (t.from_state, t.to_state, t.cause, t.automatic) == (
            State.QUARANTINED, State.QUARANTINED, Cause.OPERATOR, False)
        w = step.health
        for t2 in range(3, 1000, 3):
            w = self.policy.observe_probe(w, ProbeResult("w1", t2, "ok")).health
        assert w.state is State.QUARANTINED


class TestGuardVisibility:
    def fleet(self, n: int, **guard: object) -> Fleet:
        fleet = Fleet(HealthPolicy(PolicyConfig(guard=Guard(**guard))))  # type: ignore[arg-type]
        for i in range(n):
            fleet.observe(wear(f"w{i}", at=0))
        return fleet

    def test_held_worker_says_so_with_the_numbers_and_its_latest_readings(self) -> None:
        """The measured case: of 4, one in MAINTENANCE, one quarantined by probes, one hot."""
        fleet = self.fleet(4)
        fleet.operator("w0", State.MAINTENANCE, "fan swap", now=1)
        fleet.observe(ProbeResult("w1", 1, "wrong"))
        fleet.observe(wear("w2", at=2, cpu=88))
        held: list[str] = []
        for k, cpu in enumerate((99.0, 100.0, 98.5)):
            fleet.observe(wear("w2", at=3 + k, cpu=cpu))
            decision = fleet.tick(3.5 + k)
            held.extend(decision.held)
            assert decision.changed == ("w2",)
            w2 = fleet.workers["w2"]
            assert w2.state is State.SUSPECT
            # One out by probes plus this one: two look degraded, more than the bound of one.
            why = "suspecting the inputs: 2 look degraded at once / bound 1"
            assert w2.held == why and decision.guard_engaged
            assert f"cpu_percent {cpu:g} >= hard 97" in w2.reason
            assert f"held in rotation by the guard ({why})" in w2.reason
        assert held == ["w2"]  # newly held once; its reason tracks the readings every time
        assert fleet.figures().held_back == 1
        decision = fleet.observe(wear("w2", at=10, cpu=20))
        assert decision.changed == ("w2",) and fleet.workers["w2"].held == ""
        # ...and its reason no longer says so: status shows the two side by side
        assert "held in rotation" not in fleet.workers["w2"].reason, fleet.workers["w2"].reason
        assert fleet.figures().held_back == 0

    def test_maintenance_spends_the_budget_only_when_the_policy_says_so(self) -> None:
        """count_operator_out: off (default) ejects beside a maintenance; on holds."""
        for counted, ejected in ((False, True), (True, False)):
            fleet = self.fleet(4, count_operator_out=counted)
            fleet.operator("w0", State.MAINTENANCE, "fan swap", now=1)
            fleet.observe(wear("w1", at=2, cpu=99, inflight=1))
            fleet.tick(2.5)
            assert (fleet.workers["w1"].state is State.DRAINING) is ejected, counted
            if not ejected:
                assert fleet.workers["w1"].held.endswith("/ bound 1")


class TestMeasuredConsumption:
    def test_healthy_consumers_count_what_workers_say_they_consume(self) -> None:
        """A worker in rotation that says it consumes nothing is no consumer."""
        fleet = Fleet()
        for i in range(3):
            fleet.observe(wear(f"w{i}", at=0, consuming=("tweets",)))
        assert fleet.healthy_consumers("tweets") == 3
        fleet.observe(wear("w1", at=1, consuming=()))
        assert fleet.healthy_consumers("tweets") == 2
        assert fleet.workers["w1"].state is State.SUSPECT

    def test_a_worker_that_keeps_not_consuming_is_ejected(self) -> None:
        """Not consuming a configured queue is a soft signal: confirmed, it drains."""
        fleet = Fleet()
        for i in range(4):
            fleet.observe(wear(f"w{i}", at=0, consuming=("tweets",)))
        for k in range(3):
            fleet.observe(wear("w0", at=1 + k, consuming=(), inflight=1))
            fleet.tick(1.5 + k)
        w0 = fleet.workers["w0"]
        assert w0.state is State.DRAINING and "not consuming tweets" in w0.reason

    def test_a_report_sampled_with_the_gate_closed_is_no_consumption_signal(self) -> None:
        """Just admitted (probation, tightest limits), a report the worker sampled before the
        admit arrives after it: gate closed, nothing consumed. That is the admit racing the
        report, which the checker's correction handles, not a failure to consume."""
        policy = HealthPolicy()
        w = policy.operator(healthy(), State.MAINTENANCE, "fan swap", now=0).health
        w = policy.operator(w, State.PROBATION, "done", now=1).health
        step = policy.observe_wear(w, wear(at=2, consuming=(), gate_closed=True))
        assert not step.degraded and step.health.state is State.PROBATION
        step = policy.observe_wear(w, wear(at=2, consuming=()))  # the gate open: it is a signal
        assert step.degraded

    def test_out_of_rotation_not_consuming_is_no_signal(self) -> None:
        """A drained worker consumes nothing on purpose."""
        policy = HealthPolicy()
        w = policy.operator(healthy(), State.MAINTENANCE, "fan swap", now=0).health
        step = policy.observe_wear(w, wear(at=1, consuming=()))
        assert not step.degraded and step.health.state is State.MAINTENANCE


class TestHeldThroughOtherSignals:
    def test_heartbeats_and_passed_probes_do_not_release_a_held_worker(self) -> None:
        """Between two hot reports, a heartbeat or a passed probe is no sign the wear is gone."""
        from healthcheck.policy import Heartbeat

        fleet = Fleet()
        for i in range(3):
            fleet.observe(wear(f"w{i}", at=0))
        fleet.observe(ProbeResult("w0", 1, "wrong"))
        fleet.observe(wear("w1", at=2, cpu=99))
        fleet.tick(2.5)
        assert fleet.workers["w1"].held
        fleet.observe(Heartbeat("w1", 3))
        fleet.observe(ProbeResult("w1", 3.1, "ok"))
        assert fleet.workers["w1"].held and fleet.figures().held_back == 1
        assert fleet.guard_engaged


class TestFailuresOnMostWorkers:
    def test_one_task_failing_everywhere_is_blamed_on_the_input(self) -> None:
        """Three of four fail every task at once: nobody is ejected, the inputs are suspect."""
        fleet = Fleet()
        for i in range(4):
            fleet.observe(wear(f"w{i}", at=0))
        for i in range(3):
            fleet.observe(wear(f"w{i}", at=1, completed=0, failed=20, consecutive_failures=20))
        decision = fleet.tick(1.5)
        assert fleet.by_state()[State.DRAINING] == 0 and decision.guard_engaged
        assert all("suspecting the inputs" in fleet.workers[f"w{i}"].reason for i in range(3))
        assert fleet.figures().held_back == 3


class TestTransitionCodes:
    """Metric labels come from a transition's code, never from its reason's words."""

    def test_the_code_ignores_the_reason(self) -> None:
        from healthcheck.policy import Code

        for reason in ("drain timed out", "ejection held", "drained", "anything at all"):
            t = Transition("w1", State.DRAINING, State.QUARANTINED, reason, 1.0, Cause.WEAR)
            assert t.code is Code.DRAINED
            t = Transition("w1", State.HEALTHY, State.SUSPECT, reason, 1.0)
            assert t.code is Code.SUSPECT

    def test_the_policy_names_a_drain_timeout_and_a_hold(self) -> None:
        from healthcheck.policy import Code, HealthPolicy
        from healthcheck.policy.machine import Proposal

        policy = HealthPolicy(PolicyConfig())
        draining = WorkerHealth("w1", State.DRAINING, since=0.0, last_seen=100.0,
                                cause=Cause.WEAR)
        [timed_out] = policy.tick(draining, 100.0).transitions
        assert timed_out.code is Code.DRAIN_TIMEOUT
        healthy = WorkerHealth("w2", State.HEALTHY, since=0.0, last_seen=1.0)
        [held] = policy.hold(healthy, Proposal("cpu 99", Cause.WEAR, {}), "budget", 1.0).transitions
        assert held.code is Code.HELD and held.to_state is State.SUSPECT
        [ejected] = policy.eject(healthy, Proposal("cpu 99", Cause.WEAR, {}), 1.0).transitions
        assert ejected.code is Code.WEAR

    def test_every_code_is_a_documented_label(self) -> None:
        from healthcheck.policy import Code

        doc = (Path(__file__).parents[2] / "docs" / "observability.md").read_text()
        row = next(line for line in doc.splitlines() if "host_worker_transitions_total" in line)
        assert all(code.value in row for code in Code)


def raw(at: float, cpu_last: float, cpu: float = 40.0) -> WearReport:
    """A report whose smoothed CPU stays ``cpu`` and whose last raw sample is ``cpu_last``."""
    readings = {"cpu_percent": Reading(cpu, max(cpu, cpu_last), cpu_last),
                "memory_percent": Reading(30.0, 30.0, 30.0)}
    return WearReport(worker="w1", at=at, wear=readings, queues=("tweets",))


class TestSustainedStep:
    policy = HealthPolicy()

    def feed(self, samples: list[float]) -> list[Step]:
        w, steps = healthy(), []
        for t, cpu_last in enumerate(samples, 1):
            step = self.policy.observe_wear(w, raw(float(t), cpu_last))
            steps.append(step)
            w = step.health
        return steps

    def test_three_raw_samples_over_hard_eject_at_the_third(self) -> None:
        """A step to 100% CPU: ejected at its third sample, although the smoothed value (40
        here) is far below every limit."""
        steps = self.feed([40, 100, 100, 100])
        assert [s.eject is not None for s in steps] == [False, False, False, True]
        proposal = steps[-1].eject
        assert proposal is not None and "3 samples in a row" in proposal.reason
        assert proposal.evidence["hot_samples"] == 3 and proposal.evidence["cpu_percent_last"] == 100

    def test_spikes_of_one_or_two_samples_never_eject(self) -> None:
        """Runs of one or two raw samples over the hard limit, however many, eject nobody."""
        steps = self.feed([100, 100, 40, 100, 40, 100, 100, 40, 100, 100, 50] * 5)
        assert [s for s in steps if s.eject is not None] == []
        assert max(s.health.hot for s in steps) == 2

    @given(st.lists(st.tuples(st.integers(1, 2), st.integers(1, 3),
                              st.floats(97, 100), st.floats(0, 96.9)), max_size=30))
    def test_no_pattern_of_short_spikes_ejects(self, runs: list[tuple[int, int, float, float]]
                                               ) -> None:
        """Any sequence of spikes of one or two samples over the hard limit (any height),
        each followed by one to three samples under it: nobody is ejected."""
        samples = [x for hot, cool, high, low in runs for x in [high] * hot + [low] * cool]
        assert [s for s in self.feed(samples) if s.eject is not None] == []

    def test_a_fast_reporter_needs_the_same_time_not_the_same_count(self) -> None:
        """Raw samples every 0.25 s (a worker's sub-samples while it runs hot): a burst of
        1.5 s (7 samples) is no step; 1.75 s of them is (sustained.min_s), so a faster
        sampling never makes a shorter burst eject."""
        def run(n: int) -> list[bool]:
            w, ejected = healthy(), []
            for i in range(n):
                step = self.policy.observe_wear(w, raw(1.0 + 0.25 * i, 100))
                ejected.append(step.eject is not None)
                w = step.health
            return ejected

        assert run(7) == [False] * 7
        assert run(9) == [False] * 7 + [True, True]
        first = self.policy.observe_wear(healthy(), raw(1.0, 100)).health
        assert (first.hot, first.hot_since) == (1, 1.0)  # the first hot report starts the run

    def test_a_worker_that_sends_no_raw_samples_is_judged_as_before(self) -> None:
        """Reports without the raw sample (an older worker) never count as hot."""
        w = healthy()
        for t in range(1, 6):
            w = self.policy.observe_wear(w, wear(at=t, cpu=40, cpu_peak=100)).health
        assert (w.hot, w.state) == (0, State.HEALTHY)

    def test_samples_are_a_policy_setting(self) -> None:
        """sustained.samples = 5: five in a row, not three."""
        policy = HealthPolicy(PolicyConfig.from_mapping({"sustained": {"samples": 5}}))
        w, ejected = healthy(), []
        for t in range(1, 7):
            step = policy.observe_wear(w, raw(float(t), 99))
            ejected.append(step.eject is not None)
            w = step.health
        assert ejected == [False, False, False, False, True, True]
        with pytest.raises(ValueError, match=r"sustained\.sample"):
            PolicyConfig.from_mapping({"sustained": {"sample": 5}})

    def test_the_fleet_ejects_a_sustained_step_at_its_next_decision(self) -> None:
        fleet = Fleet()
        for i in range(4):
            fleet.observe(wear(f"w{i}", at=0))
        for t in (1, 2, 3):
            fleet.observe(dataclasses.replace(raw(float(t), 100), worker="w0", inflight=1))
        assert fleet.has_proposals
        decision = fleet.tick(3.01)
        assert [(t.worker, t.to_state) for t in decision.transitions] == [("w0", State.DRAINING)]
        assert not fleet.has_proposals
