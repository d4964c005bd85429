"""The core scenarios run on both brokers: one parametrised suite, not a copy.

``@on_both_brokers`` runs a test once on Redis and once on a private RabbitMQ node (see the
``broker`` fixture in tests/conftest.py); its ``host_env`` and ``app`` point at that broker,
with the store and the results in Redis either way. ``@on_every_queue_type`` adds a run on
RabbitMQ quorum queues.
"""

from __future__ import annotations

import pytest

BROKERS = ("redis", "amqp")

on_both_brokers = pytest.mark.parametrize("broker", BROKERS, indirect=True)
#: The scenarios where RabbitMQ's queue type matters (hand-backs, redeliveries) also run on
#: quorum queues, with a delivery limit of 2.
on_every_queue_type = pytest.mark.parametrize("broker", (*BROKERS, "amqp-quorum"), indirect=True)


def consumed_in_rotation(broker: str) -> list[str]:
    """The queues a worker in rotation consumes besides its verify queue, sorted: the work
    queues, and on quorum queues ``host.dead`` (dead letters the broker moved)."""
    extra = ["host.dead"] if broker == "amqp-quorum" else []
    return sorted(["bulk", "default", "tweets", *extra])
