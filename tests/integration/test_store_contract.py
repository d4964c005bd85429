"""One suite of cases, run against every implementation of each store port: Redis and memory.

The in-memory store stands in for Redis in the unit tests and the simulator; these cases are
what makes that honest. Each case takes ``store`` (and ``expire``, to end a lease now).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from broker_config import keys
from broker_config.shards import shard_of
from healthcheck.errors import LeaseLost, StoreUnavailable
from healthcheck.policy import Peers, State, WorkerHealth
from healthcheck.policy.config import Guard
from healthcheck.policy.shards import refusal
from healthcheck.store import (
    HealthStore,
    InMemoryGuardBudgets,
    InMemoryHealthStore,
    RedisHealthStore,
)
from healthcheck.store.redis_store import script
from tests.support.polling import wait_until


def worker(name: str, state: State = State.HEALTHY) -> WorkerHealth:
    return WorkerHealth(name=name, state=state, since=1.0, last_seen=1.0, queues=("tweets",))


@dataclass
class Subject:
    store: HealthStore
    expire: Callable[[], object]  # the lease runs out now (as if its holder had paused)


@pytest.fixture(params=["memory", "redis", "sentinel"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "memory":
        memory = InMemoryHealthStore()
        yield Subject(memory, lambda: setattr(memory, "leader_until", 0.0))
        return
    client: redis.Redis = request.getfixturevalue(f"{request.param}_client")
    yield Subject(RedisHealthStore(client), lambda: client.delete(keys.LEADER))


class TestStates:
    def test_commit_writes_states_records_and_reports_together(self, subject: Subject) -> None:
        store = subject.store
        token = store.lease("a", 30) or ""
        store.commit([worker("w1", State.QUARANTINED), worker("w2")],
                     [{"kind": "transition", "worker": "w1", "n": i, "at": 10.0 + i}
                      for i in range(3)], {"w2": {"at": 5, "gate": "open"}}, fence=token)
        assert store.get("w1").state is State.QUARANTINED  # type: ignore[union-attr]
        assert set(store.load()) == {"w1", "w2"} and store.get("nobody") is None
        assert [r["n"] for r in store.history("w1")] == [0, 1, 2]
        assert store.reports() == {"w2": {"at": 5, "gate": "open"}}

    def test_load_keeps_only_the_workers_asked_for(self, subject: Subject) -> None:
        subject.store.save([worker("w1"), worker("w2"), worker("x3")])
        assert set(subject.store.load(lambda name: name.startswith("w"))) == {"w1", "w2"}
        assert set(subject.store.load()) == {"w1", "w2", "x3"}

    def test_history_filters_by_worker_time_and_keeps_the_newest(self, subject: Subject) -> None:
        store = subject.store
        now = time.time()
        store.append([{"kind": "joined", "worker": f"w{i % 2}", "at": now - 100 + i}
                      for i in range(10)])
        store.append([{"kind": "leader", "worker": None}])  # no time: never "since" anything
        assert len(store.history()) == 11
        assert [r["at"] for r in store.history("w1", limit=2)] == [now - 93, now - 91]
        assert [r["at"] for r in store.history(since=now - 92)] == [now - 92, now - 91]
        assert [r["at"] for r in store.history("w0", since=now - 95)] == [now - 94, now - 92]
        assert store.history("nobody") == []

    def test_records_keep_their_fields(self, subject: Subject) -> None:
        record = {"kind": "drain_confirmed", "worker": "w1", "at": 3.5, "verdict_at": None,
                  "consuming": ["tweets"], "evidence": {"cpu_percent": 97.0}}
        subject.store.append([record])
        assert subject.store.history() == [record]


class TestFencing:
    def test_a_former_leader_writes_nothing(self, subject: Subject) -> None:
        store = subject.store
        old = store.lease("a", 30) or ""
        store.commit([worker("w1")], [{"kind": "joined", "worker": "w1", "at": 1.0}], fence=old)
        subject.expire()
        new = store.lease("b", 30) or ""
        assert new != old
        with pytest.raises(LeaseLost):
            store.commit([worker("w1", State.DRAINING)],
                         [{"kind": "transition", "worker": "w1", "at": 2.0}], {"w1": {"at": 2}},
                         fence=old)
        with pytest.raises(LeaseLost):
            store.close_gate("w1", "stale", fence=old,
                             record={"kind": "drain_ordered", "worker": "w1", "at": 2.0})
        with pytest.raises(LeaseLost):
            store.open_gate("w1", fence=old,
                            record={"kind": "admit_ordered", "worker": "w1", "at": 2.0})
        with pytest.raises(LeaseLost):
            store.take_requests(fence=old)
        assert store.get("w1").state is State.HEALTHY  # type: ignore[union-attr]
        assert [r["kind"] for r in store.history()] == ["joined"]
        assert store.reports() == {}
        store.close_gate("w1", "fresh", fence=new)  # the leader's write goes through

    def test_a_gate_key_and_its_record_are_written_together(self, subject: Subject) -> None:
        """The order's record is written in the same step as the gate key, in the log's order;
        without a record, only the key changes."""
        store = subject.store
        token = store.lease("a", 30) or ""
        store.close_gate("w1", "cpu", fence=token,
                         record={"kind": "drain_ordered", "worker": "w1", "at": 3.0})
        store.open_gate("w1", fence=token,
                        record={"kind": "admit_ordered", "worker": "w1", "at": 4.0})
        store.close_gate("w2", "plain", fence=token)
        assert [(r["kind"], r["at"]) for r in store.history()] == [("drain_ordered", 3.0),
                                                                   ("admit_ordered", 4.0)]

    def test_unfenced_writes_always_go_through(self, subject: Subject) -> None:
        store = subject.store
        store.lease("a", 30)
        store.save([worker("w1")])
        store.close_gate("w1", "tool")
        assert store.get("w1") is not None


class TestLease:
    def test_take_renew_expire_and_take_over(self, subject: Subject) -> None:
        store = subject.store
        assert store.epoch() == 0
        before_ms = time.time() * 1000
        a = store.lease("a", 30)
        first = store.epoch()
        assert a == f"{first}:a" and first >= int(before_ms)  # at least the clock, in ms
        assert store.lease("b", 30) == a  # taken: b learns who leads
        assert store.lease("a", 30, a) == a and store.epoch() == first  # renewal keeps it
        subject.expire()
        b = store.lease("b", 30)
        assert b == f"{store.epoch()}:b" and store.epoch() > first
        assert store.lease("a", 30, a) == b  # a's old token renews nothing

    def test_a_lease_runs_out_by_itself(self, subject: Subject) -> None:
        store = subject.store
        store.lease("a", 0.2)
        wait_until(lambda: (store.lease("b", 30) or "").endswith(":b"), 3, "the lease to run out")

    def test_release_only_by_the_holder(self, subject: Subject) -> None:
        store = subject.store
        token = store.lease("a", 30) or ""
        store.release("7:someone-else")
        assert store.lease("b", 30) == token
        store.release(token)
        assert store.lease("b", 30) == f"{store.epoch()}:b" != token


class TestOperatorRequests:
    def test_taken_oldest_first(self, subject: Subject) -> None:
        store = subject.store
        token = store.lease("a", 30) or ""
        asked = [threading.Thread(target=store.ask, args=({"id": str(i)}, 1.0)) for i in range(3)]
        for thread in asked:
            thread.start()
            time.sleep(0.1)  # one after another: their order is what this case is about
        assert [r["id"] for r in store.take_requests(2, fence=token)] == ["0", "1"]
        assert [r["id"] for r in store.take_requests(fence=token)] == ["2"]
        assert store.take_requests(fence=token) == []
        for thread in asked:
            thread.join()

    def test_ask_gets_the_answer(self, subject: Subject) -> None:
        store = subject.store

        def checker() -> None:
            requests = wait_until(lambda: store.take_requests(), 3, "the request")
            store.reply(requests[0]["id"], {"ok": True, "seen": requests[0]["action"]})

        thread = threading.Thread(target=checker)
        thread.start()
        assert store.ask({"id": "r1", "action": "drain"}, 5.0) == {"ok": True, "seen": "drain"}
        thread.join()

    def test_an_unanswered_request_is_taken_back(self, subject: Subject) -> None:
        assert subject.store.ask({"id": "r2", "action": "drain"}, 0.3) is None
        assert subject.store.take_requests() == []


class TestScripts:
    def test_every_fenced_script_checks_the_fence_first(self) -> None:
        for name in ("commit", "gate", "take_requests"):
            assert script(name, fenced=True).startswith(script("fence").rstrip("\n")[:20])
            assert "'fenced'" in script(name, fenced=True)


def test_a_store_that_is_down_says_so() -> None:
    store = RedisHealthStore.from_url("redis://127.0.0.1:1/0")  # nothing listens there
    for call in (store.load, store.reports, store.history, store.epoch,
                 lambda: store.lease("a", 1), lambda: store.close_gate("w1", "x")):
        with pytest.raises(StoreUnavailable):
            call()


# --- shards: per-shard leases and the fleet-wide guard budget ----------------------------------

@dataclass
class Budgets:
    of: Callable[[int], Any]  # shard -> its GuardBudget
    lease: Callable[[int], HealthStore]  # shard -> a store fenced by that shard's lease


@pytest.fixture(params=["memory", "redis"])
def budgets(request: pytest.FixtureRequest) -> Budgets:
    if request.param == "memory":
        shared = InMemoryGuardBudgets(3)
        leases = [InMemoryHealthStore() for _ in range(3)]
        return Budgets(lambda k: shared.for_shard(k, leases[k]), lambda k: leases[k])
    client: redis.Redis = request.getfixturevalue("redis_client")
    return Budgets(lambda k: RedisHealthStore(client, k, 3).budget(),
                   lambda k: RedisHealthStore(client, k, 3))


GUARD = Guard(max_ejections_per_window=10)


def figures(size: int, out: int = 0, waiting: int = 0, **queues: tuple[int, int]) -> Peers:
    return Peers(size, out, waiting, 0, Counter({q: n for q, (n, _) in queues.items()}),
                 Counter({q: o for q, (_, o) in queues.items()}))


class TestGuardBudget:
    def test_peers_are_the_other_shards_added_up(self, budgets: Budgets) -> None:
        tokens = [budgets.lease(k).lease("c", 30) or "" for k in range(3)]
        budgets.of(0).publish(figures(4, 1, 1, tweets=(4, 1)), tokens[0])
        budgets.of(1).publish(figures(6, 2, 0, tweets=(5, 2), bulk=(1, 0)), tokens[1])
        budgets.of(2).publish(figures(2), tokens[2])
        seen = budgets.of(0).peers(100.0, 60.0)
        assert (seen.size, seen.out, seen.waiting, seen.recent) == (8, 2, 0, 0)
        assert (seen.queue_size["tweets"], seen.queue_out["tweets"], seen.queue_size["bulk"]) \
            == (5, 2, 1)

    def test_admission_answers_as_the_policy_and_counts_out_at_once(self, budgets: Budgets) -> None:
        tokens = [budgets.lease(k).lease("c", 30) or "" for k in range(3)]
        for k, n in enumerate((4, 4, 4)):
            budgets.of(k).publish(figures(n, tweets=(n, 0)), tokens[k])
        answers = [budgets.of(k % 3).admit(f"w{k}", ("tweets",), 10.0 + k, False, GUARD,
                                           tokens[k % 3]) for k in range(4)]
        assert answers[:3] == [None, None, None]
        assert answers[3] == refusal(GUARD, Peers.total([figures(12, 3, tweets=(12, 3))]),
                                     ("tweets",), False) == "3 out / bound 3 of 12"
        assert budgets.of(1).peers(20.0, 60.0).out == 2  # shards 0 and 2 admitted one each
        assert budgets.of(1).peers(20.0, 60.0).recent == 2

    def test_the_per_queue_bound_and_the_rate_window_hold_across_shards(
            self, budgets: Budgets) -> None:
        tokens = [budgets.lease(k).lease("c", 30) or "" for k in range(3)]
        budgets.of(0).publish(figures(20, tweets=(20, 0), bulk=(2, 0)), tokens[0])
        budgets.of(1).publish(figures(20, tweets=(20, 0), bulk=(2, 0)), tokens[1])
        assert budgets.of(0).admit("a", ("bulk",), 1.0, False, GUARD, tokens[0]) is None
        assert budgets.of(1).admit("b", ("bulk",), 1.0, False, GUARD, tokens[1]) \
            == "queue bulk: 1 out / bound 1"
        slow = Guard(max_ejections_per_window=2, window_s=60.0)
        assert budgets.of(1).admit("c", ("tweets",), 2.0, False, slow, tokens[1]) is None
        assert budgets.of(0).admit("d", ("tweets",), 3.0, False, slow, tokens[0]) \
            == "2 ejections in the last 60s"
        assert budgets.of(0).admit("d", ("tweets",), 3.0, True, slow, tokens[0]) is None
        assert budgets.of(0).admit("e", ("tweets",), 200.0, False, slow, tokens[0]) is None

    def test_writes_are_fenced_by_the_shards_own_lease(self, budgets: Budgets) -> None:
        mine = budgets.lease(1).lease("c1", 30) or ""
        other = budgets.lease(0).lease("c0", 30) or ""
        with pytest.raises(LeaseLost):
            budgets.of(1).publish(figures(3), other)
        with pytest.raises(LeaseLost):
            budgets.of(1).admit("w", (), 1.0, False, GUARD, "99:stale")
        budgets.of(1).publish(figures(3), mine)
        assert budgets.of(0).peers(1.0, 60.0).size == 3


class TestShardedRedisStore:
    def test_each_shard_has_its_own_lease_epoch_and_fence(self, redis_client: redis.Redis) -> None:
        a, b = RedisHealthStore(redis_client, 0, 2), RedisHealthStore(redis_client, 1, 2)
        ta, tb = a.lease("ca", 30) or "", b.lease("cb", 30) or ""
        assert ta.endswith(":ca") and tb.endswith(":cb")  # both lead: different shards
        b.lease("cb", 30, tb)
        b.release(tb)
        tb2 = b.lease("cb2", 30) or ""
        assert tb2 == f"{b.epoch()}:cb2" and b.epoch() > int(tb.split(":")[0])
        assert ta == f"{a.epoch()}:ca"  # shard 0's epoch did not move
        with pytest.raises(LeaseLost):
            b.commit([worker("w1")], fence=ta)  # shard 0's token does not lead shard 1
        b.commit([worker("w1")], fence=tb2)
        assert a.leaders() == {0: ta, 1: tb2}

    def test_a_request_goes_to_its_workers_shard(self, redis_client: redis.Redis) -> None:
        fleet = RedisHealthStore(redis_client, 0, 2)  # what `fleet` commands use
        name = next(f"w{i}" for i in range(100) if shard_of(f"w{i}", 2) == 1)
        asker = threading.Thread(target=fleet.ask, args=({"id": "r1", "worker": name}, 0.5))
        asker.start()
        shard1 = RedisHealthStore(redis_client, 1, 2)
        token = shard1.lease("c", 30) or ""
        got = wait_until(lambda: shard1.take_requests(fence=token), 5,
                         "the request in shard 1's list")
        assert got[0]["worker"] == name
        assert RedisHealthStore(redis_client, 0, 2).take_requests() == []
        # unanswered, it gives up within its 0.5 s: joined here, not left blocked on a
        # connection the next test's setup closes (an unhandled error in a thread then)
        asker.join(5)
        assert not asker.is_alive()


def test_racing_shards_never_admit_past_the_bound(redis_client: redis.Redis) -> None:
    """3 shards x 8 threads ask at once for 24 workers; the fleet of 30 has a bound of 7."""
    stores = [RedisHealthStore(redis.Redis(connection_pool=redis_client.connection_pool), k, 3)
              for k in range(3)]
    tokens = [s.lease("c", 30) or "" for s in stores]
    for k, s in enumerate(stores):
        s.budget().publish(figures(10, tweets=(10, 0)), tokens[k])
    guard = Guard(max_ejections_per_window=100)
    admitted: list[str] = []
    start = threading.Barrier(24)

    def ask(k: int, i: int) -> None:
        budget = stores[k].budget()
        start.wait()
        if budget.admit(f"s{k}-w{i}", ("tweets",), 1.0, False, guard, tokens[k]) is None:
            admitted.append(f"s{k}-w{i}")

    threads = [threading.Thread(target=ask, args=(k, i)) for k in range(3) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 7
    assert sum(int(redis_client.hget(keys.guard(k), "out") or 0) for k in range(3)) == 7
