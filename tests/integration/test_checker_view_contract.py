"""The worker's gate-key port, the same cases on Redis and in memory: what the checker's store
writes, the worker reads; a store that is away fails static."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
import structlog
import structlog.testing

from broker_config import keys
from harness.redis_server import RedisServer
from healthcheck.store import RedisHealthStore
from tests.support.polling import wait_until
from workers.checker_view import CheckerView, InMemoryCheckerView, RedisCheckerView, StoreAway


@dataclass
class Subject:
    reader: CheckerView
    close: Callable[[str, str], object]  # the checker closes a worker's gate
    open: Callable[[str], object]
    set_epoch: Callable[[int], object]
    away: Callable[[], CheckerView]  # a reader whose store does not answer


@pytest.fixture(params=["memory", "redis"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "memory":
        memory = InMemoryCheckerView()

        def away_memory() -> CheckerView:
            gone = InMemoryCheckerView(dict(memory.gates), memory.current_epoch)
            gone.down = True
            return gone

        yield Subject(memory, memory.gates.__setitem__, lambda w: memory.gates.pop(w, None),
                      lambda n: setattr(memory, "current_epoch", n), away_memory)
        return
    client: redis.Redis = request.getfixturevalue("redis_client")
    store = RedisHealthStore(client)
    yield Subject(RedisCheckerView(client), store.close_gate, store.open_gate,
                  lambda n: client.set(keys.EPOCH, n),
                  lambda: RedisCheckerView.from_url("redis://127.0.0.1:1/0"))


class TestGateKeys:
    def test_a_closed_gate_is_read_with_its_reason(self, subject: Subject) -> None:
        assert not subject.reader.closed("w1") and subject.reader.reason("w1") is None
        subject.close("w1", "cpu 99 over its hard limit")
        assert subject.reader.closed("w1") and not subject.reader.closed("w2")
        assert subject.reader.reason("w1") == "cpu 99 over its hard limit"
        subject.open("w1")
        assert not subject.reader.closed("w1") and subject.reader.reason("w1") is None

    def test_the_epoch(self, subject: Subject) -> None:
        assert subject.reader.epoch() == 0
        subject.set_epoch(4)
        assert subject.reader.epoch() == 4

    def test_a_store_that_is_away_fails_static(self, subject: Subject) -> None:
        subject.close("w1", "x")
        away = subject.away()
        assert not away.closed("w1") and away.epoch() is None

    def test_a_reason_the_store_cannot_give_is_not_known_never_none(self,
                                                                    subject: Subject) -> None:
        """None would say "not held out": a worker starting then would open its gate."""
        subject.close("w1", "x")
        away = subject.away()
        for quick in (False, True):
            with pytest.raises(StoreAway):
                away.reason("w1", quick=quick)
        assert subject.reader.reason("w1", quick=True) == "x"


class TestRedisCheckerView:
    def test_a_dropped_connection_is_made_again_not_read_as_open(
            self, redis_client: redis.Redis) -> None:
        """The reader keeps its own connection; the server dropping it (a restart, a kill) costs
        one reconnection, never a closed gate read as open."""
        reader = RedisCheckerView(redis.Redis.from_url(_url(redis_client), client_name="gate-reader"))
        RedisHealthStore(redis_client).close_gate("w1", "x")
        assert reader.closed("w1")
        # Only the reader's own connection: the session's Redis serves other clients too
        ids = [c["id"] for c in redis_client.client_list() if c["name"] == "gate-reader"]
        assert ids and all(redis_client.client_kill_filter(_id=i) == 1 for i in ids)
        assert reader.closed("w1") and not reader.closed("w2")


class TestAReadThatFails:
    def test_each_window_on_the_last_answer_is_said_once_with_its_bounds(self) -> None:
        """What the nemesis's checker reads: a worker that went by its last answer says so,
        once a window, with when the window began and ends (wall clock)."""
        reader = RedisCheckerView.from_url("redis://127.0.0.1:1/0")  # nothing listens there
        with structlog.testing.capture_logs() as logs:
            before = time.time()
            answers = [reader.closed("w1") for _ in range(5)]
        said = [e for e in logs if e["event"] == "gate_read_failed"]
        assert answers == [False] * 5 and len(said) == 1, said
        (e,) = said
        assert e["worker"] == "w1" and e["last"] == "open" and e["pid"] == os.getpid()
        assert before <= e["at"] <= time.time() and e["until"] - e["at"] == pytest.approx(0.25)


class TestAStoreThatStalls:
    """SIGSTOP of the store's redis-server (a hung or overloaded Redis, a path that drops
    packets): a pool process waits once per away window, never once per task, and goes by what
    it last read; once the store answers again, every task reads the key again."""

    def test_tasks_go_by_the_last_answer_and_never_wait_per_task(self) -> None:
        server = RedisServer().start()
        try:
            writer = RedisHealthStore(redis.Redis.from_url(server.url))
            reader = RedisCheckerView.from_url(server.url)
            writer.close_gate("held", "a verdict")
            assert reader.closed("held") and not reader.closed("free")
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                took = []
                for _ in range(200):  # 200 tasks' reads while the store is stalled
                    began = time.perf_counter()
                    answers = (reader.closed("held"), reader.closed("free"))
                    took.append(time.perf_counter() - began)
                    assert answers == (True, False)  # what it last read: a verdict holds
                    time.sleep(0.005)
                waited = [t for t in took if t > 0.01]
                # about 1.5 s of reads: windows of 0.25, 0.5, 1 s, one short wait each
                assert 1 <= len(waited) <= 4, waited
                assert max(took) < 0.2 and sum(took) < 0.5, (max(took), sum(took))
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            writer.open_gate("held")
            writer.close_gate("free", "a new verdict")
            wait_until(lambda: reader.closed("free") and not reader.closed("held"), 5,
                       "the store read again")
        finally:
            server.stop()


def _url(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"
