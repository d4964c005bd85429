"""One suite of cases, run against every implementation of each store port: Redis and memory.

The in-memory store stands in for Redis in the unit tests and the simulator; these cases are
what makes that honest. Each case takes ``store`` (and ``expire``, to end a lease now).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from broker_config import keys
from healthcheck.errors import LeaseLost, StoreUnavailable
from healthcheck.policy import State, WorkerHealth
from healthcheck.store import HealthStore, InMemoryHealthStore, RedisHealthStore
from healthcheck.store.redis_store import script
from tests.support.polling import wait_until


def worker(name: str, state: State = State.HEALTHY) -> WorkerHealth:
    return WorkerHealth(name=name, state=state, since=1.0, last_seen=1.0, queues=("tweets",))


@dataclass
class Subject:
    store: HealthStore
    expire: Callable[[], object]  # the lease runs out now (as if its holder had paused)


@pytest.fixture(params=["memory", "redis"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "memory":
        memory = InMemoryHealthStore()
        yield Subject(memory, lambda: setattr(memory, "leader_until", 0.0))
        return
    client: redis.Redis = request.getfixturevalue("redis_client")
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
            store.close_gate("w1", "stale", fence=old)
        with pytest.raises(LeaseLost):
            store.open_gate("w1", fence=old)
        with pytest.raises(LeaseLost):
            store.take_requests(fence=old)
        assert store.get("w1").state is State.HEALTHY  # type: ignore[union-attr]
        assert [r["kind"] for r in store.history()] == ["joined"]
        assert store.reports() == {}
        store.close_gate("w1", "fresh", fence=new)  # the leader's write goes through

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
        a = store.lease("a", 30)
        assert a == "1:a"
        assert store.lease("b", 30) == "1:a"  # taken: b learns who leads
        assert store.lease("a", 30, "1:a") == "1:a"  # renewal keeps the epoch
        subject.expire()
        assert store.lease("b", 30) == "2:b" and store.epoch() == 2
        assert store.lease("a", 30, "1:a") == "2:b"  # a's old token renews nothing

    def test_a_lease_runs_out_by_itself(self, subject: Subject) -> None:
        store = subject.store
        store.lease("a", 0.2)
        wait_until(lambda: store.lease("b", 30) == "2:b", 3, "the lease to run out")

    def test_release_only_by_the_holder(self, subject: Subject) -> None:
        store = subject.store
        token = store.lease("a", 30) or ""
        store.release("7:someone-else")
        assert store.lease("b", 30) == token
        store.release(token)
        assert store.lease("b", 30) == "2:b"


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
