"""The checker lease and fencing, on the in-memory store with an explicit clock: no I/O, no sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthcheck.actuator import InMemoryActuator
from healthcheck.lease import TRUST, Leadership, epoch_of
from healthcheck.policy import PolicyConfig, State, WorkerHealth
from healthcheck.policy.model import Cause
from healthcheck.service import Checker
from healthcheck.store import InMemoryHealthStore
from tests.unit.test_checker import Clock, sample, wear_event

TTL = 5.0


def checker_for(store: InMemoryHealthStore, name: str, clock: Clock) -> tuple[Checker, InMemoryActuator]:
    actuator = InMemoryActuator()
    leadership = Leadership(store, name, TTL, clock=clock)
    checker = Checker.from_store(store, actuator, PolicyConfig(), clock=clock, seed=1,
                                 leadership=leadership)
    return checker, actuator


def leader_and_standby() -> tuple[Clock, InMemoryHealthStore, Checker, Checker, InMemoryActuator]:
    """Checkers "a" (leading) and "b" (standing by) on one store; b's actuator."""
    clock = Clock(1000.0)
    store = InMemoryHealthStore(clock=clock)
    leader, _ = checker_for(store, "a", clock)
    standby, sent = checker_for(store, "b", clock)
    leader.lead()
    standby.lead()
    return clock, store, leader, standby, sent


class TestLeadership:
    def test_one_leads_the_other_takes_over_after_the_ttl(self) -> None:
        clock = Clock(0.0)
        store = InMemoryHealthStore(clock=clock)
        a, b = Leadership(store, "a", TTL, clock=clock), Leadership(store, "b", TTL, clock=clock)
        assert a.step() and a.leading() and a.epoch == store.epoch() > 0
        a_epoch = a.epoch
        assert not b.step() and not b.leading()
        # a dies (never steps again); b asks every few tenths of a second
        takeover = None
        while takeover is None:
            clock.now += 0.1
            if b.step():
                takeover = clock.now
            assert not (a.leading() and b.leading())
        assert TTL <= takeover <= TTL + 0.3
        assert b.epoch > a_epoch and not a.leading()

    def test_a_leader_stops_trusting_its_lease_before_it_expires(self) -> None:
        clock = Clock(0.0)
        store = InMemoryHealthStore(clock=clock)
        a = Leadership(store, "a", TTL, clock=clock)
        a.step()
        clock.now = TTL * TRUST - 0.01
        assert a.leading()
        clock.now = TTL * TRUST
        assert not a.leading()  # yet the store still holds its lease: nobody else leads
        assert store.lease("b", TTL) == a.token

    def test_renewal_keeps_the_same_epoch(self) -> None:
        clock = Clock(0.0)
        store = InMemoryHealthStore(clock=clock)
        a = Leadership(store, "a", TTL, clock=clock)
        a.step()
        first = a.epoch
        for _ in range(100):
            clock.now += 0.5
            a.step()
            assert a.leading() and a.epoch == first
        assert store.epoch() == first

    def test_release_hands_over_at_once(self) -> None:
        clock = Clock(0.0)
        store = InMemoryHealthStore(clock=clock)
        a, b = Leadership(store, "a", TTL, clock=clock), Leadership(store, "b", TTL, clock=clock)
        a.step()
        first = a.epoch
        a.release()
        clock.now += 0.3
        assert b.step() and b.epoch > first

    def test_a_bad_ttl_is_refused(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            Leadership(InMemoryHealthStore(), "a", 0)

    def test_epoch_of(self) -> None:
        assert (epoch_of("12:host-1-ab"), epoch_of(""), epoch_of("x:y")) == (12, 0, 0)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 2), st.floats(0.0, 3.0)), min_size=1, max_size=80))
    def test_never_two_leaders(self, schedule: list[tuple[int, float]]) -> None:
        """Whatever order and pauses the checkers step in, at most one trusts its lease, and
        the one that does holds it in the store; epochs only grow."""
        clock = Clock(0.0)
        store = InMemoryHealthStore(clock=clock)
        nodes = [Leadership(store, f"c{i}", TTL, clock=clock) for i in range(3)]
        last_epoch = 0
        for who, pause in schedule:
            clock.now += pause
            nodes[who].step()
            leaders = [n for n in nodes if n.leading()]
            assert len(leaders) <= 1
            for n in leaders:
                assert store.lease("probe", TTL, "") == n.token
            assert store.epoch() >= last_epoch
            last_epoch = store.epoch()


class TestFencedChecker:
    def test_a_standby_decides_nothing_and_writes_nothing(self) -> None:
        clock, store, leader, standby, sent = leader_and_standby()
        for w in ("w1", "w2", "w3", "w4"):
            standby.handle(wear_event(w), clock())
        standby.handle(wear_event("w1", cpu=99), clock())
        standby.tick(clock())
        assert sent.sent == [] and store.workers == {} and store.audit[-1]["kind"] == "leader"
        assert sample(standby, "host_checker_leader") == 0
        assert sample(leader, "host_checker_leader") == 1

    def test_a_leader_whose_lease_was_taken_sends_nothing(self) -> None:
        """Paused past its TTL: on waking its first write is refused and it stands by."""
        clock = Clock(1000.0)
        store = InMemoryHealthStore(clock=clock)
        old, sent = checker_for(store, "a", clock)
        old.lead()
        for w in ("w1", "w2", "w3", "w4"):
            old.handle(wear_event(w), clock())
        old.tick(clock())  # the joins are stored with the tick's commit
        # The lease changes hands behind its back (it was paused and someone else took over),
        # while its own clock has not moved: it still believes it leads.
        store.leader, store.leader_until, store.epochs = "2:b", clock() + 60, 2
        assert old.leading()
        old.handle(wear_event("w1", cpu=99), clock())
        old.tick(clock())
        assert sent.sent == [] and "w1" not in store.gates
        assert not old.leading() and sample(old, "host_checker_leader") == 0
        assert store.workers["w1"]["state"] == "HEALTHY"

    def test_taking_over_resumes_from_the_store_and_re_drains_nobody(self) -> None:
        clock = Clock(1000.0)
        store = InMemoryHealthStore(clock=clock)
        out = WorkerHealth(name="w1", state=State.QUARANTINED, cause=Cause.WEAR, since=990.0,
                           last_seen=995.0, reason="cpu", queues=("tweets",))
        store.save([out, *(WorkerHealth(name=f"w{i}", since=900.0, last_seen=995.0,
                                        queues=("tweets",)) for i in (2, 3, 4))])
        new, sent = checker_for(store, "b", clock)
        new.lead()
        assert new.leading() and new.actuator.epoch == store.epoch() > 0
        for w in ("w2", "w3", "w4"):
            new.handle(wear_event(w), clock())
        new.handle(wear_event("w1", gate="closed", consuming=()), clock())
        clock.now += 1
        new.tick(clock())
        assert sent.sent == []
        assert new.fleet.workers["w1"].state is State.QUARANTINED
        leader_records = [r for r in store.audit if r["kind"] == "leader"]
        assert leader_records == [{"kind": "leader", "worker": None, "at": 1000.0,
                                   "checker": "b", "epoch": store.epoch()}]

    def test_the_guard_remembers_the_previous_leaders_ejections(self) -> None:
        clock = Clock(1000.0)
        store = InMemoryHealthStore(clock=clock)
        store.append([{"kind": "transition", "worker": f"x{i}", "from": "HEALTHY",
                       "to": "DRAINING", "cause": "wear", "at": 990.0 + i} for i in range(3)])
        new, _ = checker_for(store, "b", clock)
        new.lead()
        assert new.fleet.figures().recent_ejections == 3


class TestStandbyMetrics:
    def test_only_the_leader_counts_and_a_new_leader_counts_on(self) -> None:
        clock, _, leader, standby, _ = leader_and_standby()
        tasks = {"tweets|host.analyse|succeeded": 10}
        for c in (leader, standby):
            c.handle(wear_event("w1", inbound={"analysed": 10}, task_outcomes=tasks), clock())
        assert sample(leader, "host_inbound_total", outcome="analysed") == 10
        assert sample(standby, "host_inbound_total", outcome="analysed") == 0
        assert sample(standby, "host_tasks_total", queue="tweets", task="host.analyse",
                      outcome="succeeded") is None
        # The leader goes; the standby takes over and counts from the workers' totals on
        leader.leadership.release()  # type: ignore[union-attr]
        clock.now += 1
        standby.lead()
        assert standby.leading()
        standby.handle(wear_event("w1", inbound={"analysed": 13}), clock())
        assert sample(standby, "host_inbound_total", outcome="analysed") == 3
