"""Which queue a hand-back goes to, and how, without a broker (the broker side is in
tests/integration/test_rabbitmq.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker_config.settings import Settings
from workers import handback
from workers.app import create_app


@dataclass
class FakeMessage:
    delivery_info: dict[str, Any]
    headers: dict[str, Any] = field(default_factory=dict)
    settled: list[tuple[str, bool]] = field(default_factory=list)

    def reject_log_error(self, logger: Any, errors: Any, requeue: bool = False) -> None:
        self.settled.append(("reject", requeue))

    def ack_log_error(self, logger: Any, errors: Any) -> None:
        self.settled.append(("ack", False))


@dataclass
class FakeTaskConsumer:
    _active_tags: dict[str, str]


class TestSourceQueue:
    def test_the_consumer_tag_names_the_queue_even_after_a_cancel(self) -> None:
        """A delivery through a direct exchange whose routing key is not the queue's name
        goes back to the queue it came from, also once its consumer was cancelled."""
        consumer = FakeTaskConsumer({"tweets": "tag-1", "bulk": "tag-2"})
        message = FakeMessage({"consumer_tag": "tag-2", "routing_key": "something.else"})
        assert handback.source_queue(message, consumer) == "bulk"
        consumer._active_tags.clear()  # cancelled: the tag is remembered
        assert handback.source_queue(message, consumer) == "bulk"

    def test_without_a_known_tag_the_routing_key(self) -> None:
        message = FakeMessage({"consumer_tag": "unknown", "routing_key": "tweets"})
        assert handback.source_queue(message, None) == "tweets"


class TestOnRedis:
    def test_a_hand_back_is_a_requeue(self) -> None:
        """On Redis kombu's requeue is the hand-back: nothing is re-published."""
        app = create_app(Settings())
        message = FakeMessage({"routing_key": "tweets"}, {"id": "t1"})
        assert not handback.republishes(app)
        assert handback.hand_back(app, message, "tweets") == "requeued"
        assert message.settled == [("reject", True)]

    def test_on_rabbitmq_a_closed_channel_already_gave_it_back(self) -> None:
        """A message whose channel closed is the broker's again: neither re-published nor
        acknowledged (that would make a second copy)."""
        app = create_app(Settings(broker_url="amqp://guest@localhost//",
                                  result_backend="redis://r/0", store_url="redis://r/0"))

        class Closed:
            is_open = False

        message = FakeMessage({"routing_key": "tweets"}, {"id": "t1"})
        message.channel = Closed()  # type: ignore[attr-defined]
        assert handback.republishes(app)
        assert handback.hand_back(app, message, "tweets") == "returned"
        assert message.settled == []
