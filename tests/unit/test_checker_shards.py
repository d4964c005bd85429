"""Two sharded checkers over one in-memory store: each watches only its own workers, hands
on requests about the others', and the guard's bound holds across both. No I/O, no sleeps."""

from __future__ import annotations

from broker_config.shards import shard_of
from healthcheck.actuator import InMemoryActuator
from healthcheck.lease import Leadership
from healthcheck.page import StoredStates
from healthcheck.policy import PolicyConfig, State, WorkerHealth
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


class SlowStore(InMemoryHealthStore):
    """Reading every state takes ``took`` seconds of the test's clock (a large fleet)."""

    def __init__(self, clock: Clock, took: float) -> None:
        super().__init__()
        self.test_clock, self.took, self.loads = clock, took, 0

    def load(self, keep=None):  # type: ignore[no-untyped-def]
        self.loads += 1
        self.test_clock.now += self.took
        return super().load(keep)


class TestLargeFleetReads:
    def test_a_standby_reads_the_store_at_most_a_tenth_of_its_time(self) -> None:
        clock = Clock()
        store = SlowStore(clock, took=0.5)
        checker = Checker.from_store(store, InMemoryActuator(), PolicyConfig(), clock=clock,
                                     seed=1, leadership=Leadership(store, "standby"))
        store.leader, store.leader_until = "9:other", float("inf")  # somebody else leads
        first = store.loads
        for _ in range(40):  # 40 passes, 0.25 s apart (plus the reads' own time)
            checker.tick(clock())
            clock.now += 0.25
        reads = store.loads - first
        assert 1 <= reads <= 4, reads  # every 10 x 0.5 s, not every second

    def test_the_page_reads_every_stored_state_at_most_every_ten_readings(self) -> None:
        clock = Clock()
        store = SlowStore(clock, took=0.5)
        store.save([WorkerHealth(name=n, since=1.0, last_seen=1.0) for n in ZERO + ONE])
        states = StoredStates(store, clock)
        assert set(states()) == set(ZERO + ONE) and store.loads == 1
        clock.now += 4.0
        assert set(states()) == set(ZERO + ONE) and store.loads == 1  # 4.5 s < 10 x 0.5 s
        clock.now += 1.0
        states()
        assert store.loads == 2

    def test_a_shard_decodes_only_its_own_workers(self) -> None:
        store = InMemoryHealthStore()
        store.save([WorkerHealth(name=n, since=1.0, last_seen=1.0) for n in ZERO + ONE])
        assert set(store.load(lambda name: shard_of(name, 2) == 1)) == set(ONE)
