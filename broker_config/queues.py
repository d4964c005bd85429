"""Queue declarations and task routes: which queue each kind of work travels on."""

from __future__ import annotations

from kombu import Exchange, Queue

from broker_config import contract

TWEETS = contract.TWEETS_QUEUE
DEFAULT = "default"
BULK = "bulk"
#: The data-plane queues. A worker consumes these only while it is healthy.
WORK_QUEUES: tuple[str, ...] = (TWEETS, DEFAULT, BULK)
VERIFY_PREFIX = "host.verify."

#: Where host's own tasks go (the producer contract, broker_config.contract).
TASK_ROUTES: dict[str, dict[str, str]] = contract.ROUTES
#: Queues no host worker consumes where host's tasks may still land: watched and alerted on.
WATCHED_QUEUES: tuple[str, ...] = (contract.CELERY_DEFAULT_QUEUE,)


def work_queues() -> tuple[Queue, ...]:
    """The work queues, each on a direct exchange of its own name."""
    return tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in WORK_QUEUES)


def verify_queue_name(worker: str) -> str:
    """The private queue of one worker: ``w1@node`` -> ``host.verify.w1@node``."""
    if not worker:
        raise ValueError("a worker name is required for its verify queue")
    return VERIFY_PREFIX + worker


def verify_queue(worker: str) -> Queue:
    """The private verify queue of one worker; it is consumed whatever the worker's state."""
    name = verify_queue_name(worker)
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def is_work_queue(name: str) -> bool:
    """True for the data-plane queues (not a worker's private verify queue)."""
    return name in WORK_QUEUES
