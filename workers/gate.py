"""The health gate: whether this worker may start work-queue tasks, and taking it in or out of rotation.

The gate is one flag in memory shared with the pool (created by the main process before it
forks), so a pool process checks it at the moment a task would start: a worker out of rotation
never starts a data-plane task, not even one it had already reserved. Such a message goes back
to the broker (``Reject(requeue=True)`` under late acknowledgement) for a healthy worker.

Taking a worker out of rotation is, in order: close the gate, then stop consuming every work
queue (the private verify queue stays). Both happen before the control command replies, so a
reply is a confirmation, unlike Celery's ``cancel_consumer``, which replies before it acts.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import time
from typing import Any

from broker_config.queues import verify_queue_name
from broker_config.signing import RedisNonces
from workers import handback
from workers.logs import get_logger

log = get_logger(__name__)


class Gate:
    """Open or closed, with the reason and time of the last change (shared with the pool)."""

    def __init__(self, open_: bool = True, reason: str = "clean start") -> None:
        self._open: Any = multiprocessing.RawValue(ctypes.c_bool, open_)
        self.reason = reason
        self.changed_at = time.time()
        self.self_protected: str | None = None

    def is_open(self) -> bool:
        """True while work-queue tasks may start."""
        return bool(self._open.value)

    def allows(self, queue: str | None) -> bool:
        """Whether a task that came from ``queue`` may start now (from this worker's own verify
        queue always; from any other queue only while the gate is open)."""
        return self.is_open() or not in_rotation_only(queue)

    def close(self, reason: str) -> None:
        """Refuse work-queue tasks from now on."""
        self._open.value = False
        self.reason, self.changed_at = reason, time.time()

    def open(self, reason: str) -> None:
        """Accept work-queue tasks again."""
        self._open.value = True
        self.reason, self.changed_at = reason, time.time()
        self.self_protected = None


_gate: Gate | None = None
#: This worker's own verify queue: the one queue it consumes out of rotation.
_verify = ""


def install_gate(open_: bool, reason: str, worker: str = "") -> Gate:
    """Create this worker's gate (main process, before the pool forks)."""
    global _gate, _verify
    _gate = Gate(open_, reason)
    _verify = verify_queue_name(worker) if worker else ""
    return _gate


def in_rotation_only(queue: str | None) -> bool:
    """True for every queue but this worker's own verify queue — the work queues, and any
    other queue somebody made it consume: a worker out of rotation takes from none of them."""
    return queue != _verify or not queue


def gate() -> Gate | None:
    """This worker's gate (None outside a host worker)."""
    return _gate


def allows(queue: str | None, worker: str | None = None) -> bool:
    """Whether a task from ``queue`` may start in this process (always, outside a host worker).

    Both the local flag (set by the drain command) and the checker's gate key in the store
    (set at the verdict) must be open. When the store does not answer, the local flag decides.
    """
    if _gate is None or not in_rotation_only(queue):
        return True
    if not _gate.is_open():
        return False
    return worker is None or not _closed_in_store(worker)


_remote: Any = None


def use_store(url: str) -> None:
    """Where the checker's gate keys live (called when the worker sets up)."""
    global _remote
    import redis

    _remote = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def nonces() -> RedisNonces | None:
    """The fleet-wide memory of used control nonces, in the store (None before use_store)."""
    return None if _remote is None else RedisNonces(_remote)


def _closed_in_store(worker: str) -> bool:
    if _remote is None:
        return False
    import redis

    from broker_config import keys

    try:
        return bool(_remote.exists(keys.gate(worker)))
    except (redis.ConnectionError, redis.TimeoutError):
        return False  # fail static: the local flag has decided already


def closed_reason_in_store(worker: str) -> str | None:
    """The reason the checker holds ``worker`` out, if it does (None when unknown or open)."""
    if _remote is None:
        return None
    import redis

    from broker_config import keys

    try:
        value = _remote.get(keys.gate(worker))
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    return value.decode() if value else None


def checker_epoch() -> int | None:
    """The checker lease's current fencing epoch (None when the store cannot tell)."""
    if _remote is None:
        return None
    import redis

    from broker_config import keys

    try:
        value = _remote.get(keys.EPOCH)
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    return int(value) if value else 0


def holds_back(queue: str | None) -> bool:
    """The local flag alone, cheap enough for every message: True when a message from
    ``queue`` must be handed back (out of rotation, and not from the own verify queue)."""
    return _gate is not None and not _gate.is_open() and in_rotation_only(queue)


#: Work-queue subscriptions a worker out of rotation undid itself, and how often.
UNDONE: dict[str, int] = {}


def undo_subscriptions(consumer: Any, why: str) -> list[str]:
    """Out of rotation but subscribed to work queues (somebody re-subscribed it): cancel them
    now, without waiting for the checker. Returns the queues cancelled."""
    if _gate is None or _gate.is_open():
        return []
    cancelled = consuming_work_queues(consumer)
    handback.remember_tags(consumer.task_consumer)
    for name in cancelled:
        consumer.cancel_task_queue(name)
        UNDONE[name] = UNDONE.get(name, 0) + 1
    if cancelled:
        log.warning("subscription_undone", queues=cancelled, reason=why,
                    gate_reason=_gate.reason, worker=consumer.hostname)
    return cancelled


#: The worker's consumer (main process), set when it is built.
_consumer: Any = None


def attach(consumer: Any) -> None:
    """Remember the worker's consumer, for ``hold_out``."""
    global _consumer
    _consumer = consumer


def task_consumer() -> Any:
    """The worker's kombu task consumer (None before it has one, or outside a worker)."""
    return getattr(_consumer, "task_consumer", None)


def hold_out(reason: str) -> None:
    """The checker's gate key refused a task: close the local gate too and stop consuming,
    so that the worker hands back what it reserved once, not in a loop. Main process only."""
    if _gate is not None and _gate.is_open() and _consumer is not None:
        take_out(_consumer, reason)
        log.warning("held_out_by_store_gate", reason=reason, worker=_consumer.hostname)


def take_out(consumer: Any, reason: str) -> dict[str, Any]:
    """Close the gate and stop consuming every work queue; what the worker now holds."""
    g = _require()
    g.close(reason)
    if consumer.task_consumer is not None:
        handback.remember_tags(consumer.task_consumer)
    for name in consuming_work_queues(consumer):
        consumer.cancel_task_queue(name)
    return status(consumer)


def put_back(consumer: Any, reason: str) -> dict[str, Any]:
    """Consume the configured work queues again and open the gate."""
    g = _require()
    consuming = set(consuming_work_queues(consumer))
    for name in configured_work_queues(consumer):
        if name not in consuming:
            consumer.add_task_queue(name)
    g.open(reason)
    return status(consumer)


def status(consumer: Any) -> dict[str, Any]:
    """The gate and the queues, as control replies and wear reports carry them."""
    from celery.worker import state as worker_state

    g = _require()
    return {
        "gate": "open" if g.is_open() else "closed",
        "gate_reason": g.reason,
        "gate_changed_at": g.changed_at,
        "self_protected": g.self_protected,
        "consuming": consuming_work_queues(consumer),
        "inflight": len(worker_state.active_requests) + len(worker_state.reserved_requests),
        "at": time.time(),
    }


def consuming_work_queues(consumer: Any) -> list[str]:
    """Queues the consumer is subscribed to right now, its own verify queue aside."""
    queues = consumer.task_consumer.queues if consumer.task_consumer else []
    return sorted(q.name for q in queues if in_rotation_only(q.name))


def configured_work_queues(consumer: Any) -> list[str]:
    """Work queues this worker was started to consume (``-Q``), whatever its state."""
    return configured_work_queues_of(consumer.hostname)


def configured_work_queues_of(worker: str) -> list[str]:
    """Work queues the named worker (of this process) was started to consume."""
    return sorted(_configured.get(worker, ()))


#: Work queues selected at start, by worker name (filled when the worker sets up).
_configured: dict[str, tuple[str, ...]] = {}


def remember_configured(worker: str, queues: list[str]) -> None:
    """Record the work queues a worker was started with (before any drain deselects them)."""
    _configured[worker] = tuple(q for q in queues if q != verify_queue_name(worker))


def _require() -> Gate:
    if _gate is None:
        raise RuntimeError("no health gate: not inside a host worker")
    return _gate
