"""Invariants of the policy under any sequence of inputs (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthcheck.policy import (
    Cause,
    Fleet,
    HealthPolicy,
    PolicyConfig,
    ProbeResult,
    Reading,
    State,
    WearReport,
)
from healthcheck.policy.config import Guard
from healthcheck.policy.counts import auto_out
from healthcheck.policy.model import CONSUMING
from healthcheck.policy.observations import Observation

QUEUES = (("tweets",), ("tweets", "bulk"), ("default",))

# One event: (kind, worker index, level, dt)
event = st.tuples(st.sampled_from(["wear", "wear", "wear", "probe", "tick", "operator"]),
                  st.integers(0, 11), st.integers(0, 4), st.floats(0.0, 40.0))


def build(kind: str, i: int, level: int, now: float, n: int) -> Observation | float | None:
    worker = f"w{i % n}"
    if kind == "wear":
        cpu = (10, 50, 88, 96, 99)[level]
        mem_peak = (20, 60, 93, 97, 99)[level]
        return WearReport(worker, now, {"cpu_percent": Reading(cpu, cpu),
                                        "memory_percent": Reading(40, mem_peak)},
                          completed=10 + level, failed=level * 3, consecutive_failures=level,
                          runtime_p95=0.01 * (level + 1), inflight=level % 2,
                          queues=QUEUES[i % n % 3],
                          consuming=(None, QUEUES[i % n % 3], (), QUEUES[i % n % 3],
                                     QUEUES[i % n % 3])[level])
    if kind == "probe":
        return ProbeResult(worker, now, ("ok", "ok", "late", "missing", "wrong")[level])
    if kind == "tick":
        return now
    return None


def run(n: int, events: list[tuple[str, int, int, float]], fraction: float,
        check: bool = True) -> list[tuple[object, ...]]:
    fleet = Fleet(HealthPolicy(PolicyConfig(guard=Guard(max_ejected_fraction=fraction))), seed=1)
    for i in range(n):
        fleet.observe(WearReport(f"w{i}", 0.0, queues=QUEUES[i % 3]))
    now = 0.0
    log: list[tuple[object, ...]] = []
    for kind, i, level, dt in events:
        now += dt
        item = build(kind, i, level, now, n)
        before: dict[str, object] = {
            name: ((w.resume or w.state) if w.state is State.OFFLINE else w.state, w.cause)
            for name, w in fleet.workers.items()}
        if kind == "operator":
            target = (State.MAINTENANCE, State.QUARANTINED, State.PROBATION, State.HEALTHY,
                      State.MAINTENANCE)[level]
            decision = fleet.operator(f"w{i % n}", target, "test", now)
        elif isinstance(item, float):
            decision = fleet.tick(item)
        else:
            assert item is not None
            decision = fleet.observe(item)
        for t in decision.transitions:
            log.append((t.worker, t.from_state, t.to_state, t.reason, t.at, t.cause))
            if check:
                check_transition(fleet, t)
        if check:
            check_fleet(fleet)
            check_operator_states_hold(before, fleet, kind)
    return log


def check_transition(fleet: Fleet, t: object) -> None:
    from healthcheck.policy import Transition

    assert isinstance(t, Transition)
    assert t.reason.strip(), t
    # The one change without a change of state: a person takes over a quarantine.
    assert t.from_state is not t.to_state or (
        not t.automatic and t.to_state is State.QUARANTINED and t.cause is Cause.OPERATOR), t
    if t.automatic:
        assert not (t.from_state is State.QUARANTINED and t.to_state is State.HEALTHY), t
        assert t.from_state is not State.MAINTENANCE or t.to_state is State.OFFLINE, t
    if t.automatic and t.to_state is State.DRAINING and t.cause is Cause.WEAR:
        # The bound holds at the moment of every ejection for wear.
        assert fleet._out.auto <= fleet.bound(), (fleet._out.auto, fleet.bound())


def check_fleet(fleet: Fleet) -> None:
    # Incremental counters equal a recount from scratch.
    assert fleet._out.auto == sum(auto_out(w) for w in fleet)
    for queue in ("tweets", "bulk", "default"):
        consumers = fleet.healthy_consumers(queue)
        assert consumers == sum(1 for w in fleet if w.state in CONSUMING and queue in (
            w.queues if w.consuming is None else w.consuming))
        assert consumers <= sum(1 for w in fleet if w.state is not State.OFFLINE
                                and queue in w.queues)
    for w in fleet:
        # A worker says it is held in rotation exactly while it is: status shows both fields.
        assert bool(w.held) == w.reason.startswith("held in rotation"), (w.held, w.reason)


def check_operator_states_hold(before: dict[str, object], fleet: Fleet, kind: str) -> None:
    """A worker a person took out stays out until a person's restore (OFFLINE aside)."""
    for name, w in fleet.workers.items():
        was = before.get(name)
        if kind == "operator" or not isinstance(was, tuple):
            continue
        state, cause = was
        if cause is Cause.OPERATOR and state in (State.MAINTENANCE, State.QUARANTINED):
            assert w.state in (state, State.OFFLINE) and w.cause is Cause.OPERATOR, (was, w)


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TestPolicyProperties:
    @PROPERTY
    @given(st.integers(2, 12), st.lists(event, max_size=120), st.sampled_from([0.1, 0.25, 0.5]))
    def test_invariants_hold_for_any_sequence(self, n: int, events: list[tuple[str, int, int, float]],
                                              fraction: float) -> None:
        """Guard bound, reasons, no QUARANTINED->HEALTHY, consistent counts, OFFLINE not healthy."""
        run(n, events, fraction)

    @PROPERTY
    @given(st.integers(2, 12), st.lists(event, max_size=80))
    def test_same_inputs_same_outputs(self, n: int, events: list[tuple[str, int, int, float]]) -> None:
        """The policy is deterministic: replaying the same inputs gives the same transitions."""
        assert run(n, events, 0.25, check=False) == run(n, events, 0.25, check=False)

    @PROPERTY
    @given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 4)), min_size=1, max_size=200))
    def test_wear_ejections_never_exceed_the_bound(self, reports: list[tuple[int, int]]) -> None:
        """Whatever the wear, workers out for wear never exceed bound(n) (no probes, no ticks)."""
        fleet = Fleet(seed=3)
        for i in range(10):
            fleet.observe(WearReport(f"w{i}", 0.0, queues=("tweets",)))
        for k, (i, level) in enumerate(reports):
            cpu = (10, 50, 88, 96, 99)[level]
            fleet.observe(WearReport(f"w{i}", 1.0 + k, {"cpu_percent": Reading(cpu, cpu)},
                                     inflight=1, queues=("tweets",)))
            if k % 3 == 2:
                fleet.tick(1.5 + k)
            out = sum(1 for w in fleet if w.cause is Cause.WEAR and w.state in (
                State.DRAINING, State.QUARANTINED))
            assert out <= fleet.bound()
