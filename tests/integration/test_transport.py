"""The transport's orphan keeping, on a real redis-server, with the broker's failure injected at
the one moment that matters: after BRPOP took the message, before its unacked record is written."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from broker_config import transport
from cli.redis_server import RedisServer

QUEUE = Queue("orphan-test", Exchange("orphan-test"), routing_key="orphan-test")


@pytest.fixture
def conn(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Connection]:
    with Connection(redis_server.url, transport="broker_config.transport:Transport",
                    transport_options={"visibility_timeout": 3600}) as c:
        yield c


def publish(conn: Connection, body: str) -> None:
    with conn.Producer() as producer:
        producer.publish(body, exchange=QUEUE.exchange, routing_key="orphan-test",
                         declare=[QUEUE], serializer="json")


def receive(conn: Connection, timeout: float = 5.0) -> list[Any]:
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    with conn.Consumer([QUEUE], callbacks=[on_message]), contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=timeout)
    return got


ORIGINAL_APPEND = kombu_redis.QoS.append


def broker_gone(record_first: bool) -> Any:
    """A QoS.append that fails once as if Redis vanished after the message left its list:
    before writing the unacked record, or (``record_first``) after it, losing only the reply."""
    calls: list[int] = []

    def append(qos: Any, message: Any, delivery_tag: str) -> None:
        if calls:
            return ORIGINAL_APPEND(qos, message, delivery_tag)
        calls.append(1)
        if record_first:
            ORIGINAL_APPEND(qos, message, delivery_tag)
        raise redis.ConnectionError("Connection reset by peer (injected)")

    return append


class TestOrphans:
    def test_a_message_taken_while_the_broker_vanished_is_put_back(
            self, conn: Connection, redis_client: redis.Redis,
            monkeypatch: pytest.MonkeyPatch) -> None:
        publish(conn, "tweet-1")
        monkeypatch.setattr(kombu_redis.QoS, "append", broker_gone(record_first=False))
        with pytest.raises(redis.ConnectionError):
            receive(conn)
        # Taken off the list, recorded nowhere in Redis: only the orphan list has it
        assert transport.orphans() == 1
        assert redis_client.llen("orphan-test") == 0 and redis_client.hlen("unacked") == 0
        # The channel talks to Redis again: the orphan goes back first and is delivered
        assert receive(conn) == ["tweet-1"]
        assert transport.orphans() == 0 and redis_client.hlen("unacked") == 0

    def test_an_orphan_whose_record_was_written_is_not_put_back_twice(
            self, conn: Connection, redis_client: redis.Redis,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """The record reached Redis and only the reply was lost: the visibility timeout
        brings the message back; putting it back too would run it twice."""
        publish(conn, "tweet-2")
        monkeypatch.setattr(kombu_redis.QoS, "append", broker_gone(record_first=True))
        with pytest.raises(redis.ConnectionError):
            receive(conn)
        monkeypatch.undo()
        assert transport.orphans() == 1 and redis_client.hlen("unacked") == 1
        assert receive(conn, timeout=1.0) == []
        assert transport.orphans() == 0 and redis_client.llen("orphan-test") == 0
        assert redis_client.hlen("unacked") == 1  # left for the visibility sweep
