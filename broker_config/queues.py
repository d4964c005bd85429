"""Queue declarations and task routes: which queue each kind of work travels on."""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from broker_config import contract

TWEETS = contract.TWEETS_QUEUE
DEFAULT = "default"
BULK = "bulk"
#: The data-plane queues. A worker consumes these only while it is healthy.
WORK_QUEUES: tuple[str, ...] = (TWEETS, DEFAULT, BULK)
VERIFY_PREFIX = "host.verify."
#: RabbitMQ quorum queues: where the broker dead-letters a message past its delivery limit.
#: Workers in rotation consume it and turn every message into a host dead-letter record.
DEAD = "host.dead"

#: Where host's own tasks go (the producer contract, broker_config.contract).
TASK_ROUTES: dict[str, dict[str, str]] = {**contract.ROUTES, "host.job_chunk": {"queue": BULK}}
#: Queues no host worker consumes where host's tasks may still land: watched and alerted on.
WATCHED_QUEUES: tuple[str, ...] = (contract.CELERY_DEFAULT_QUEUE,)


def work_queues(queue_type: str = "classic", delivery_limit: int = 20) -> tuple[Queue, ...]:
    """The work queues, each on a direct exchange of its own name.

    ``quorum`` (RabbitMQ) makes each a quorum queue that dead-letters a message delivered
    ``delivery_limit`` times to ``host.dead`` (at least once: the broker keeps it until that
    queue has it), so that nothing can vanish by being redelivered; the ``host.dead`` queue
    is then declared and consumed too.
    """
    if queue_type == "classic":
        return tuple(Queue(name, Exchange(name, type="direct"), routing_key=name)
                     for name in WORK_QUEUES)
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": DEAD,
        "x-dead-letter-routing-key": DEAD,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    work = tuple(Queue(name, Exchange(name, type="direct"), routing_key=name,
                       queue_arguments=arguments) for name in WORK_QUEUES)
    return (*work, dead_queue())


def dead_queue() -> Queue:
    """``host.dead``: a quorum queue itself (no delivery limit: it is recorded, never retried)."""
    return Queue(DEAD, Exchange(DEAD, type="direct"), routing_key=DEAD,
                 queue_arguments={"x-queue-type": "quorum"})


def verify_queue_name(worker: str) -> str:
    """The private queue of one worker: ``w1@node`` -> ``host.verify.w1@node``."""
    if not worker:
        raise ValueError("a worker name is required for its verify queue")
    return VERIFY_PREFIX + worker


def verify_queue(worker: str) -> Queue:
    """The private verify queue of one worker; it is consumed whatever the worker's state."""
    name = verify_queue_name(worker)
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def is_dead_queue(name: str | None) -> bool:
    """True for ``host.dead``, whose messages are records to keep, not tasks to run."""
    return name == DEAD


def is_work_queue(name: str) -> bool:
    """True for the data-plane queues (not a worker's private verify queue)."""
    return name in WORK_QUEUES


def queue_label(queue: object) -> str:
    """A bounded queue label for metrics: a work queue's name, ``verify`` for a worker's
    verify queue (probes), else ``other``."""
    if isinstance(queue, str) and is_work_queue(queue):
        return queue
    if isinstance(queue, str) and queue.startswith(VERIFY_PREFIX):
        return "verify"
    return "other"
