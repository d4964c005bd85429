"""The transport's atomic take, on a real redis-server: a message is always in its queue or in
the unacknowledged hash, whatever happens to the reply that carries it to the worker."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from broker_config import transport
from harness.redis_server import RedisServer

QUEUE = Queue("take-test", Exchange("take-test"), routing_key="take-test")
OTHER = Queue("take-other", Exchange("take-other"), routing_key="take-other")


@pytest.fixture
def conn(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Connection]:
    with Connection(redis_server.url, transport="broker_config.transport:Transport",
                    transport_options={"visibility_timeout": 1, "unacked_restore_interval": 0.2,
                                       "unacked_restore_throttle": 1}) as c:
        yield c


def publish(conn: Connection, body: str, queue: Queue = QUEUE) -> None:
    with conn.Producer() as producer:
        producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                         declare=[queue], serializer="json")


def receive(conn: Connection, timeout: float = 5.0, queues: tuple[Queue, ...] = (QUEUE,),
            limit: int = 1) -> list[Any]:
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    deadline = time.monotonic() + timeout
    with conn.Consumer(list(queues), callbacks=[on_message]), contextlib.suppress(TimeoutError):
        while len(got) < limit and time.monotonic() < deadline:
            conn.drain_events(timeout=max(0.01, deadline - time.monotonic()))
    return got


def hold(conn: Connection, held: list[Any], timeout: float = 5.0) -> None:
    """Drain events until a consumer callback has put a message (unacknowledged) in ``held``."""
    deadline = time.monotonic() + timeout
    while not held and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.5)


def take(redis_client: redis.Redis, *queues: str) -> Any:
    """The script exactly as the channel sends it: what Redis does whether or not the reply
    ever reaches the worker."""
    return redis_client.eval(transport.TAKE_SCRIPT, len(queues) + 2, *queues, "unacked",
                             "unacked_index", repr(time.time()), *["1"] * len(queues))


class TestAtomicTake:
    def test_a_taken_message_is_always_recorded(self, conn: Connection,
                                                redis_client: redis.Redis) -> None:
        """Popped and recorded in one step: the reply lost, the record brings it back once."""
        publish(conn, "tweet-1")
        key, _ = take(redis_client, "take-test")
        assert key == b"take-test"
        # the worker never saw the reply: the message is in no queue, but it is recorded ...
        assert redis_client.llen("take-test") == 0 and redis_client.hlen("unacked") == 1
        # ... so the visibility sweep hands it out again, once
        assert receive(conn, timeout=10) == ["tweet-1"]
        assert receive(conn, timeout=1.5) == []
        assert redis_client.hlen("unacked") == 0 and redis_client.llen("take-test") == 0

    def test_stock_brpop_loses_what_it_popped(self, conn: Connection,
                                              redis_client: redis.Redis) -> None:
        """The window the take closes: kombu's BRPOP with its reply lost leaves nothing."""
        publish(conn, "tweet-2")
        assert redis_client.brpop(["take-test"], timeout=1) is not None
        assert redis_client.llen("take-test") == 0 and redis_client.hlen("unacked") == 0
        assert receive(conn, timeout=2.5) == []

    def test_a_taken_message_is_recorded_once_and_a_fetched_one_as_kombu_does(
            self, conn: Connection, redis_client: redis.Redis,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """kombu's second write of the record (a pipeline per message) is skipped for what the
        take recorded; a message fetched with basic_get is still recorded by kombu; both leave
        nothing behind once acknowledged."""
        writes: list[str] = []
        original = kombu_redis.QoS.append

        def append(qos: Any, message: Any, tag: str) -> None:
            writes.append(tag)
            original(qos, message, tag)

        monkeypatch.setattr(kombu_redis.QoS, "append", append)
        publish(conn, "tweet-3")
        held: list[Any] = []
        with conn.Consumer([QUEUE], callbacks=[lambda body, message: held.append(message)]):
            hold(conn, held)
            assert len(held) == 1 and writes == []
            assert redis_client.hlen("unacked") == 1  # recorded by the take alone
            held[0].ack()
        assert redis_client.hlen("unacked") == 0 and redis_client.zcard("unacked_index") == 0
        publish(conn, "tweet-4")
        channel: Any = conn.default_channel
        fetched = channel.basic_get(QUEUE.name, no_ack=False)
        assert fetched is not None and len(writes) == 1
        assert redis_client.hlen("unacked") == 1
        fetched.ack()
        assert redis_client.hlen("unacked") == 0

    def test_every_queue_is_served_in_turn_and_idle_waits_are_short(
            self, conn: Connection) -> None:
        """Two queues, both served; a message published while idle arrives within 0.5 s."""
        for i in range(3):
            publish(conn, f"a{i}")
            publish(conn, f"b{i}", OTHER)
        got = receive(conn, queues=(QUEUE, OTHER), limit=6)
        assert sorted(got) == ["a0", "a1", "a2", "b0", "b1", "b2"]
        def on_message(body: Any, message: Any) -> None:
            got.append(body)
            message.ack()

        with conn.Consumer([QUEUE], callbacks=[on_message]):
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.5)  # idle: the channel backs off to 100 ms waits
            sent = time.monotonic()
            publish(conn, "late")
            while "late" not in got and time.monotonic() - sent < 5:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.2)
            assert "late" in got and time.monotonic() - sent < 0.5

    def test_a_redis_that_forgot_the_script_is_taught_it_again(
            self, conn: Connection, redis_client: redis.Redis) -> None:
        """Taken by digest once loaded; after SCRIPT FLUSH (as after a restart) by its text."""
        publish(conn, "first")
        assert receive(conn) == ["first"]
        assert redis_client.script_exists(transport.TAKE_SHA) == [True]
        redis_client.script_flush()
        publish(conn, "second")
        assert receive(conn) == ["second"]
        assert redis_client.script_exists(transport.TAKE_SHA) == [True]

    def test_a_message_the_consumer_chokes_on_is_handed_to_the_hook(
            self, conn: Connection, redis_client: redis.Redis,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """Past every envelope check, an exception while delivering ends no consumer: the
        message goes to the undeliverable hook and its record is dropped."""
        import json

        seen: list[tuple[str, str]] = []
        monkeypatch.setattr(transport, "undeliverable",
                            lambda raw, queue, code, detail: seen.append((queue, detail)))
        monkeypatch.setattr(transport, "envelope_problem", lambda payload: None)
        publish(conn, "choke")
        raw = json.loads(redis_client.rpop("take-test"))  # type: ignore[arg-type]
        raw["properties"]["body_encoding"] = "rot13"  # kombu cannot decode it
        redis_client.lpush("take-test", json.dumps(raw))
        publish(conn, "after")
        assert receive(conn) == ["after"]
        assert seen and seen[0][0] == "take-test"
        assert redis_client.hlen("unacked") == 0


class TestChannelGone:
    def test_settling_a_message_on_a_channel_whose_connection_is_gone(
            self, conn: Connection, redis_server: RedisServer,
            redis_client: redis.Redis) -> None:
        """A broker restart closes the channel (its connection and pool gone) while a task
        still runs. Stock kombu then raised AttributeError on the ack and on restoring at
        exit, which stopped a worker; host's transport forgets the message in memory only,
        and the visibility sweep hands it out again: nothing lost, nothing raised."""
        publish(conn, "tweet-gone")
        held: list[Any] = []
        with conn.Consumer([QUEUE], callbacks=[lambda body, message: held.append(message)]):
            hold(conn, held)
            assert len(held) == 1
            channel: Any = held[0].channel
            channel._pool = None  # what a lost connection leaves: no pool, no connection
            conn.transport.close_channel(channel)
            held[0].ack()
            channel.qos.restore_unacked_once()
        conn._default_channel = None  # type: ignore[attr-defined]  # closed above: not again
        assert redis_client.hlen("unacked") == 1  # still recorded: the sweep will restore it
        with Connection(redis_server.url, transport="broker_config.transport:Transport",
                        transport_options={"visibility_timeout": 1,
                                           "unacked_restore_interval": 0.2}) as again:
            assert receive(again, timeout=10) == ["tweet-gone"]
