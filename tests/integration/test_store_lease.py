"""Two leaderships on one real redis-server, and the workers' epoch fence (the store's own
cases: tests/integration/test_store_contract.py)."""

from __future__ import annotations

import pytest
import redis

from broker_config import keys
from broker_config.app import HostCelery
from healthcheck.actuator import control_reply
from healthcheck.errors import LeaseLost
from healthcheck.lease import Leadership
from healthcheck.policy import State, WorkerHealth
from healthcheck.store import RedisHealthStore
from tests.conftest import WorkerFactory
from tests.support.polling import consumed, wait_until


def worker(name: str, state: State = State.HEALTHY) -> WorkerHealth:
    return WorkerHealth(name=name, state=state, since=1.0, last_seen=1.0, queues=("tweets",))


class TestLeadershipOnRedis:
    def test_two_leaderships_on_one_redis(self, redis_client: redis.Redis) -> None:
        store = RedisHealthStore(redis_client)
        a, b = Leadership(store, "a", 3.0), Leadership(store, "b", 3.0)
        a.step()
        b.step()
        assert a.leading() and not b.leading() and b.leader == a.token
        # a stops renewing (as if killed): b takes over once the lease expires
        wait_until(lambda: b.step() or b.leading(), 8, "b to take over")
        assert b.epoch > a.epoch and not a.leading()


class TestFencedWrites:
    def test_commit_is_refused_to_a_former_leader_and_writes_nothing(
            self, redis_client: redis.Redis) -> None:
        store = RedisHealthStore(redis_client)
        old = store.lease("a", 30)
        assert old is not None
        store.commit([worker("w1")], [{"kind": "joined", "worker": "w1"}], fence=old)
        redis_client.delete(keys.LEADER)  # the lease expired while a was paused...
        new = store.lease("b", 30)  # ...and b took it
        with pytest.raises(LeaseLost):
            store.commit([worker("w1", State.DRAINING)], [{"kind": "transition", "worker": "w1"}],
                         {"w1": {"at": 2}}, fence=old)
        with pytest.raises(LeaseLost):
            store.close_gate("w1", "stale", fence=old)
        with pytest.raises(LeaseLost):
            store.take_requests(fence=old)
        assert store.get("w1").state is State.HEALTHY  # type: ignore[union-attr]
        assert [r["kind"] for r in store.history()] == ["joined"]
        assert store.reports() == {} and not redis_client.exists(keys.gate("w1"))
        store.close_gate("w1", "fresh", fence=new or "")
        assert redis_client.get(keys.gate("w1")) == b"fresh"

    def test_a_commit_writes_states_records_and_reports_together(
            self, redis_client: redis.Redis) -> None:
        store = RedisHealthStore(redis_client)
        token = store.lease("a", 30) or ""
        store.commit([worker("w1", State.QUARANTINED), worker("w2")],
                     [{"kind": "transition", "worker": "w1", "n": i} for i in range(3)],
                     {"w2": {"at": 5, "gate": "open"}}, fence=token)
        assert store.get("w1").state is State.QUARANTINED  # type: ignore[union-attr]
        assert [r["n"] for r in store.history("w1")] == [0, 1, 2]
        assert store.reports() == {"w2": {"at": 5, "gate": "open"}}

    def test_operator_requests_are_taken_oldest_first(self, redis_client: redis.Redis) -> None:
        store = RedisHealthStore(redis_client)
        token = store.lease("a", 30) or ""
        for i in range(3):
            redis_client.lpush(keys.OPERATOR_REQUESTS, f'{{"id": "{i}"}}')
        assert [r["id"] for r in store.take_requests(2, fence=token)] == ["0", "1"]
        assert [r["id"] for r in store.take_requests(fence=token)] == ["2"]
        assert store.take_requests(fence=token) == []


class TestWorkerFence:
    def test_a_worker_refuses_commands_of_an_older_epoch(
            self, app: HostCelery, start_worker: WorkerFactory, redis_client: redis.Redis) -> None:
        """A drain signed with epoch 1 once epoch 2 leads is refused; the current one runs."""
        w = start_worker("fe1")
        redis_client.set(keys.EPOCH, 2)
        stale = control_reply(app, "host_drain", w.name, {"reason": "stale", "epoch": 1}, 2.0)
        assert stale is not None and "stale_leader" in stale["error"]
        assert "tweets" in consumed(app, w.name)
        current = control_reply(app, "host_drain", w.name, {"reason": "now", "epoch": 2}, 2.0)
        assert current is not None and current["ok"] is True
        wait_until(lambda: "tweets" not in consumed(app, w.name), 5, "drained")

    def test_a_command_is_fenced_by_the_epoch_of_the_shard_it_names(
            self, app: HostCelery, start_worker: WorkerFactory, redis_client: redis.Redis) -> None:
        """Shard 1 is at epoch 3, shard 0 at 1: epoch 2 naming shard 1 is stale, though it
        would be current for shard 0; epoch 3 naming shard 1 runs."""
        w = start_worker("fe2")
        redis_client.set(keys.epoch(0), 1)
        redis_client.set(keys.epoch(1), 3)
        stale = control_reply(app, "host_drain", w.name,
                              {"reason": "stale", "epoch": 2, "shard": 1}, 2.0)
        assert stale is not None and "stale_leader (epoch 2 < 3)" in stale["error"]
        bad = control_reply(app, "host_drain", w.name, {"reason": "x", "epoch": 9, "shard": -1},
                            2.0)
        assert bad is not None and "bad shard" in bad["error"]
        assert "tweets" in consumed(app, w.name)
        current = control_reply(app, "host_drain", w.name,
                                {"reason": "now", "epoch": 3, "shard": 1}, 2.0)
        assert current is not None and current["ok"] is True

    def test_an_epoch_a_failover_rewound_in_the_store_is_still_refused(
            self, app: HostCelery, start_worker: WorkerFactory, redis_client: redis.Redis) -> None:
        """The worker obeyed epoch 7; the store then lost it (a failover to a replica that had
        only epoch 5): a command under 6 is refused all the same, one under 7 still runs."""
        w = start_worker("fe3")
        redis_client.set(keys.EPOCH, 7)
        obeyed = control_reply(app, "host_admit", w.name, {"reason": "seven", "epoch": 7}, 2.0)
        assert obeyed is not None and obeyed["ok"] is True
        redis_client.set(keys.EPOCH, 5)
        stale = control_reply(app, "host_drain", w.name, {"reason": "six", "epoch": 6}, 2.0)
        assert stale is not None and "stale_leader (epoch 6 < 7)" in stale["error"]
        assert "tweets" in consumed(app, w.name)
        current = control_reply(app, "host_drain", w.name, {"reason": "seven", "epoch": 7}, 2.0)
        assert current is not None and current["ok"] is True
        wait_until(lambda: "tweets" not in consumed(app, w.name), 5, "drained")
