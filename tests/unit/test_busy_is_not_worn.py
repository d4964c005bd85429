"""Busy is not worn: CPU and load count as wear only while a worker gets nothing done.

Pure policy, explicit times, no I/O, no sleeps. A report here is what a worker sampling four
times a second sends while a raw sample is hot (one every 0.25 s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from healthcheck.policy import Fleet, HealthPolicy, PolicyConfig, Reading, State, WearReport
from healthcheck.policy.config import Load
from healthcheck.policy.detectors import assess, lost_progress
from healthcheck.store.codec import from_dict, to_dict

FLEET = [f"w{i}" for i in range(8)]


def report(worker: str, at: float, cpu: float = 30.0, last: float | None = None,
           mem: float = 40.0, running: int | None = 2, stalled_s: float | None = 0.05,
           p95: float | None = 0.005, completed: int = 400, load: float = 1.0) -> WearReport:
    return WearReport(worker=worker, at=at, wear={
        "cpu_percent": Reading(cpu, max(cpu, last or 0.0), cpu if last is None else last),
        "memory_percent": Reading(mem, mem, mem),
        "load_per_core": Reading(load, load, load)},
        completed=completed, runtime_p95=p95, inflight=running or 0, queues=("tweets",),
        running=running, stalled_s=stalled_s)


def fleet(config: PolicyConfig | None = None, p95: float = 0.005) -> Fleet:
    f = Fleet(HealthPolicy(config or PolicyConfig()), seed=1)
    for name in FLEET:
        f.observe(report(name, 0.0, p95=p95))
    f.tick(0.0)
    return f


def run(f: Fleet, seconds: float, make: Mapping[str, Callable[[float], WearReport]],
        start: float = 1.0,
        step: float = 0.25) -> list[tuple[str, State, State, str]]:
    """Every worker reports every ``step`` from ``start`` for ``seconds``; the ones named in
    ``make`` report what their function returns for the time. The transitions, in order."""
    moves = []
    t = start
    while t < start + seconds:
        for name in FLEET:
            fn = make.get(name)
            r = fn(t) if fn is not None else report(name, t)
            d = f.observe(r)
            moves += [(m.worker, m.from_state, m.to_state, m.reason) for m in d.transitions]
        d = f.tick(t + 0.1)
        moves += [(m.worker, m.from_state, m.to_state, m.reason) for m in d.transitions]
        t += step
    return moves


class TestBusyStays:
    def test_a_worker_at_full_speed_for_ten_minutes_stays_healthy_and_shows_busy(self) -> None:
        f = fleet()
        moves = run(f, 600, {"w1": lambda t: report("w1", t, cpu=99, last=100)})
        assert moves == []
        w1 = f.workers["w1"]
        assert w1.state is State.HEALTHY and w1.busy == "cpu_percent 99"
        assert w1.busy_metrics == ("cpu_percent",)
        assert from_dict(to_dict(w1)).busy_metrics == ("cpu_percent",)  # as stored
        assert f.workers["w2"].busy == ""

    def test_the_whole_fleet_at_full_speed_ejects_nobody_and_engages_no_guard(self) -> None:
        f = fleet()
        busy = {n: (lambda t, n=n: report(n, t, cpu=96, last=99, load=9.0)) for n in FLEET}
        moves = run(f, 120, busy)
        assert moves == [] and not f.guard_engaged
        assert all(w.state is State.HEALTHY and w.busy for w in f)

    def test_long_tasks_are_progress_at_their_own_pace(self) -> None:
        """Chunks of 2 s: 4 s with none finished is their pace (the limit is 3 x p95)."""
        f = fleet(p95=2.0)
        chunks = {n: (lambda t, n=n: report(n, t, cpu=99, last=99, p95=2.0, stalled_s=t % 4.5))
                  for n in FLEET}
        assert run(f, 120, chunks) == []

    def test_a_worker_whose_backlog_ran_out_is_not_judged_by_its_fading_cpu(self) -> None:
        """Busy at 99 %, then idle: the first idle samples still read hot (they measured the
        last busy moments) and the smoothed value falls for a while; nothing happens."""
        f = fleet()
        run(f, 60, {"w1": lambda t: report("w1", t, cpu=99, last=99)})

        def winding_down(t: float) -> WearReport:
            idle_for = t - 61.0
            return report("w1", t, cpu=max(10.0, 99 - 30 * idle_for),
                          last=99.0 if idle_for < 0.3 else 5.0, running=0, stalled_s=idle_for)
        assert run(f, 30, {"w1": winding_down}, start=61.0) == []
        assert f.workers["w1"].busy == ""


    def test_idle_workers_on_a_loaded_machine_are_not_worn(self) -> None:
        """The machine's load at any level, the whole fleet idle (its own CPU low, nothing
        running, nothing done for minutes): the load is the neighbours' work, not theirs."""
        f = fleet()
        idle = {n: (lambda t, n=n: report(n, t, cpu=2, last=3, running=0, stalled_s=t,
                                         load=5.0 + t % 7)) for n in FLEET}
        assert run(f, 120, idle) == [] and not f.guard_engaged
        assert all(w.state is State.HEALTHY and not w.busy for w in f)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.floats(0, 84), st.floats(0, 96), st.floats(0, 600),
                              st.floats(0, 1000)), min_size=1, max_size=60))
    def test_no_load_on_the_machine_ever_ejects_an_idle_worker(
            self, steps: list[tuple[float, float, float, float]]) -> None:
        """No task running, own CPU under its limits: whatever the machine's load."""
        policy = HealthPolicy()
        w = fleet().workers["w1"]
        for i, (cpu, last, stalled, load) in enumerate(steps):
            r = report("w1", 1.0 + i * 0.25, cpu=cpu, last=last, running=0, stalled_s=stalled,
                       load=load)
            assert assess(r, policy.config).level == "ok"
            step = policy.observe_wear(w, r)
            assert step.eject is None and not step.transitions
            w = step.health


class TestWornStillGoes:
    def test_a_busy_worker_that_stalls_is_out_at_the_first_report_past_the_floor(self) -> None:
        f = fleet()
        run(f, 60, {"w1": lambda t: report("w1", t, cpu=99, last=100)})

        def spinning(t: float) -> WearReport:
            return report("w1", t, cpu=99, last=100, stalled_s=t - 61.0, completed=0)
        moves = run(f, 5, {"w1": spinning}, start=61.0)
        [(worker, _, to, reason)] = moves
        assert (worker, to) == ("w1", State.DRAINING)
        assert "none done for 1.0 s" in reason and "cpu_percent" in reason
        assert f.workers["w1"].since == 62.1  # the tick after the report at t = 62.0

    def test_cpu_burnt_with_no_task_running_is_wear(self) -> None:
        """A runaway thread or child: hot raw samples, nothing running, nothing done."""
        f = fleet()
        burning = lambda t: report("w1", t, cpu=80, last=99, running=0, stalled_s=t)  # noqa: E731
        moves = run(f, 5, {"w1": burning})
        assert [(m[0], m[2]) for m in moves][:1] == [("w1", State.DRAINING)]
        assert "no task running" in moves[0][3]

    def test_a_pool_starved_on_a_loaded_machine_is_wear(self) -> None:
        """Tasks running and none done past the floor, the machine at 9 per core: out."""
        f = fleet()
        starved = lambda t: report("w1", t, cpu=20, last=20, load=9.0,  # noqa: E731
                                   stalled_s=t, completed=0)
        moves = run(f, 5, {"w1": starved})
        assert [(m[0], m[2]) for m in moves][:1] == [("w1", State.DRAINING)]
        assert "load_per_core" in moves[0][3] and "none done" in moves[0][3]

    def test_an_older_idle_worker_is_judged_by_the_load_as_before(self) -> None:
        f = fleet()
        moves = run(f, 2, {"w1": lambda t: report("w1", t, cpu=2, last=2, load=9.0,
                                                   running=None, stalled_s=None)})
        assert [(m[0], m[2]) for m in moves][:1] == [("w1", State.DRAINING)]

    def test_memory_is_wear_however_busy(self) -> None:
        f = fleet()
        moves = run(f, 2, {"w1": lambda t: report("w1", t, cpu=99, last=99, mem=96)})
        assert [(m[0], m[2]) for m in moves] == [("w1", State.DRAINING)]
        assert "memory_percent" in moves[0][3]

    def test_an_older_worker_that_does_not_say_is_judged_as_before(self) -> None:
        f = fleet()
        moves = run(f, 2, {"w1": lambda t: report("w1", t, cpu=98, running=None,
                                                   stalled_s=None)})
        assert [(m[0], m[2]) for m in moves][:1] == [("w1", State.DRAINING)]

    def test_the_rule_switched_off_makes_cpu_wear_again(self) -> None:
        f = fleet(PolicyConfig(load=Load(enabled=False)))
        moves = run(f, 2, {"w1": lambda t: report("w1", t, cpu=98, last=99)})
        assert [(m[0], m[2]) for m in moves] == [("w1", State.DRAINING)]


class TestLostProgress:
    def test_the_limit_is_the_floor_or_three_own_p95s(self) -> None:
        load = Load()
        assert lost_progress(report("w", 0, stalled_s=0.99), load) == ""
        assert "none done for 1.0 s" in str(lost_progress(report("w", 0, stalled_s=1.0), load))
        assert lost_progress(report("w", 0, stalled_s=5.9, p95=2.0), load) == ""
        assert lost_progress(report("w", 0, stalled_s=6.0, p95=2.0), load)
        assert "no task running" in str(lost_progress(report("w", 0, running=0, stalled_s=2),
                                                      load))
        assert lost_progress(report("w", 0, running=None), load) is None
        assert lost_progress(report("w", 0, stalled_s=9), Load(enabled=False)) is None

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100), st.integers(1, 64),
                              st.floats(0, 0.99), st.floats(0, 64)), min_size=1, max_size=80))
    def test_no_sequence_of_busy_reports_ever_ejects(
            self, steps: list[tuple[float, float, int, float, float]]) -> None:
        """Any CPU and load, any number of running tasks, something done within the floor,
        memory and outcomes normal: never an ejection proposed, never SUSPECT."""
        policy = HealthPolicy()
        f = fleet()
        w = f.workers["w1"]
        for i, (cpu, last, running, stalled, load) in enumerate(steps):
            r = report("w1", 1.0 + i * 0.25, cpu=cpu, last=last, running=running,
                       stalled_s=stalled, load=load)
            verdict = assess(r, policy.config)
            assert verdict.level == "ok", verdict
            step = policy.observe_wear(w, r)
            assert step.eject is None and not step.transitions
            w = step.health
