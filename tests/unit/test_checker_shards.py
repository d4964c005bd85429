"""Two sharded checkers over one in-memory store: each watches only its own workers, hands
on requests about the others', and the guard's bound holds across both. No I/O, no sleeps."""

from __future__ import annotations

from healthcheck.actuator import InMemoryActuator
from healthcheck.policy import PolicyConfig, State, shard_of
from healthcheck.policy.config import Guard
from healthcheck.service import Checker
from healthcheck.sharding import Shard
from healthcheck.store import InMemoryGuardBudgets, InMemoryHealthStore
from tests.unit.test_checker import Clock, wear_event

NAMES = [f"celery@n{i}" for i in range(40)]
ZERO = [n for n in NAMES if shard_of(n, 2) == 0][:4]
ONE = [n for n in NAMES if shard_of(n, 2) == 1][:4]


def pair(guard: Guard | None = None) -> tuple[list[Checker], list[InMemoryActuator], Clock,
                                              InMemoryHealthStore]:
    store, clock, budgets = InMemoryHealthStore(), Clock(), InMemoryGuardBudgets(2)
    config = PolicyConfig(guard=guard or Guard())
    actuators = [InMemoryActuator(), InMemoryActuator()]
    checkers = [Checker.from_store(store, actuators[k], config, clock=clock, seed=1,
                                   shard=Shard(k, 2, budgets.for_shard(k)))
                for k in range(2)]
    for name in ZERO + ONE:
        for c in checkers:
            c.handle(wear_event(name), clock())
    for c in checkers:
        c.tick(clock())
    return checkers, actuators, clock, store


def hot(checkers: list[Checker], clock: Clock, *names: str) -> None:
    for name in names:
        for c in checkers:  # every checker hears every event, as on the broker
            c.handle(wear_event(name, cpu=99, inflight=1), clock())
    for step in (0.25, 0.6, 1.0):  # past the settle time of two ticks
        clock.now += step
        for c in checkers:
            c.tick(clock())


class TestShardedCheckers:
    def test_each_checker_keeps_only_its_shards_workers(self) -> None:
        (zero, one), _, _, store = pair()
        assert sorted(zero.fleet.workers) == sorted(ZERO)
        assert sorted(one.fleet.workers) == sorted(ONE)
        assert set(store.load()) == set(ZERO + ONE)  # one store: the whole fleet

    def test_a_worker_is_drained_by_its_own_shards_checker_naming_the_shard(self) -> None:
        checkers, (a0, a1), clock, store = pair()
        hot(checkers, clock, ONE[0])
        assert [s[:2] for s in a1.sent] == [("host_drain", ONE[0])] and a0.sent == []
        assert a1.shard == 1 and a0.shard == 0
        assert store.load()[ONE[0]].state is State.DRAINING

    def test_the_bound_holds_across_shards(self) -> None:
        """8 workers, bound 2: one out in shard 0 and one in shard 1 fill it; a third, in
        either shard, is held, by a checker that has only one of them itself."""
        checkers, _, clock, store = pair(Guard(max_ejections_per_window=10))
        hot(checkers, clock, ZERO[0])
        hot(checkers, clock, ONE[0])
        hot(checkers, clock, ONE[1])
        states = store.load()
        assert [states[n].state for n in (ZERO[0], ONE[0])] == [State.DRAINING] * 2
        assert states[ONE[1]].state is not State.DRAINING
        assert "bound 2" in checkers[1].fleet.workers[ONE[1]].held

    def test_a_request_about_another_shards_worker_is_handed_on(self) -> None:
        (zero, _), _, clock, store = pair()
        store.requests.append({"id": "r1", "action": "drain", "worker": ONE[0]})
        zero.tick(clock())
        assert store.forwarded == [(1, {"id": "r1", "action": "drain", "worker": ONE[0]})]
        assert store.replies == {}
