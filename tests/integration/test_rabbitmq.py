"""RabbitMQ's own semantics, on the session's private node: hand-backs, quorum queues and their
dead-letter exchange (the scenarios both brokers share are parametrised where they live)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Producer

from broker_config.app import HostCelery
from broker_config.contract import envelope
from broker_config.queues import DEAD, TWEETS, work_queues
from broker_config.settings import Settings
from tests.conftest import WorkerFactory
from tests.support.polling import wait_until
from workers import handback
from workers.app import create_app
from workers.deadletter import RedisDeadLetterStore

pytestmark = pytest.mark.parametrize("broker", ["amqp"], indirect=True)
QUORUM = {"HOST_QUEUE_TYPE": "quorum", "HOST_DELIVERY_LIMIT": "2"}


@pytest.fixture
def quorum_app(host_env: dict[str, str]) -> HostCelery:
    return create_app(Settings.from_env({**host_env, **QUORUM}))


@pytest.fixture
def channel(broker_url: str) -> Iterator[Any]:
    """A channel on this test's virtual host, with host's quorum work queues declared."""
    with Connection(broker_url) as conn:
        ch = conn.channel()
        for q in work_queues("quorum", 2):
            q(ch).declare()
        yield ch


def take(channel: Any, queue: str = TWEETS, within_s: float = 2.0) -> Any:
    """One message off ``queue`` (basic.get, unacknowledged), or None when none comes within
    ``within_s`` (a quorum queue commits a publish a moment after the publisher sent it)."""
    bound = next(q for q in work_queues("quorum", 2) if q.name == queue)(channel)
    deadline = time.monotonic() + within_s
    while (message := bound.get(no_ack=False)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return message


def publish(channel: Any, *names: str) -> None:
    producer = Producer(channel)
    for name in names:
        producer.publish({"name": name}, exchange="", routing_key=TWEETS, serializer="json",
                         headers={"id": name})


class TestHandBack:
    def test_a_hand_back_joins_the_tail_and_never_counts_towards_the_delivery_limit(
            self, quorum_app: HostCelery, channel: Any) -> None:
        """Handed back five times each, under a delivery limit of 2, both messages are still
        there, in turn (no head-of-queue loop), with no delivery counted."""
        publish(channel, "a", "b")
        seen = []
        for _ in range(10):
            message = take(channel)
            seen.append(message.headers["id"])
            assert handback.hand_back(quorum_app, message, TWEETS) == "republished"
        assert seen == ["a", "b"] * 5
        last = take(channel)
        assert last.headers[handback.HANDED_BACK_HEADER] == 5
        assert not last.headers.get("x-delivery-count")
        assert take(channel, DEAD, within_s=0.5) is None

    def test_the_hazard_a_requeue_is_a_counted_delivery(self, channel: Any) -> None:
        """What the re-publish avoids: basic.reject with requeue comes straight back (the head
        of the queue) and, past the delivery limit, the broker dead-letters the message."""
        publish(channel, "a", "b")
        seen = []
        for _ in range(3):
            message = take(channel)
            seen.append(message.headers["id"])
            message.reject(requeue=True)
        assert seen == ["a", "a", "a"]
        dead = wait_until(lambda: take(channel, DEAD), 10, "a dead-lettered")
        assert dead.headers["id"] == "a"
        assert dead.headers["x-death"][0]["reason"] == "delivery_limit"


class TestQuorumQueues:
    def test_what_the_broker_dead_letters_becomes_a_record_and_answers_its_caller(
            self, quorum_app: HostCelery, start_worker: WorkerFactory, channel: Any,
            redis_client: Any) -> None:
        """A task rejected by some other consumer until RabbitMQ dead-letters it is recorded by
        a host worker (reason, origin queue) and its caller gets a rejection, not PENDING."""
        worker = start_worker("dq1", queues=("default",), env=QUORUM)
        result = quorum_app.send_task("host.analyse", args=[envelope("dq:1", "never runs")])
        for _ in range(3):  # another consumer of tweets that fails it three times
            message = wait_until(lambda: take(channel), 10, "the task on tweets")
            message.reject(requeue=True)
        answer = result.get(timeout=20)
        assert answer["status"] == "rejected" and answer["reason"] == "delivery_limit", answer
        record = RedisDeadLetterStore(redis_client).latest(1)[0]
        assert (record["reason"], record["queue"], record["stage"], record["worker"]) == (
            "delivery_limit", TWEETS, "broker", worker.name)
        assert record["ref"] == result.id
        assert take(channel, within_s=0.5) is None and take(channel, DEAD, within_s=0.5) is None
