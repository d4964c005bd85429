"""The health gate: whether this worker may start work-queue tasks, and taking it in or out of rotation.

The gate is one flag in memory shared with the pool (created by the main process before it
forks), so a pool process checks it at the moment a task would start: a worker out of rotation
never starts a data-plane task, not even one it had already reserved. Such a message goes back
to the broker (``Reject(requeue=True)`` under late acknowledgement) for a healthy worker.

Taking a worker out of rotation is, in order: close the gate, then stop consuming every work
queue (the private verify queue stays). Both happen before the control command replies, so a
reply is a confirmation, unlike Celery's ``cancel_consumer``, which replies before it acts.
The state this reads and changes is the process's ``workers.runtime.RUNTIME``.
"""

from __future__ import annotations

import time
from typing import Any

from celery.worker import state as worker_state

from broker_config.logs import get_logger
from broker_config.queues import verify_queue_name
from workers.checker_view import CheckerView, StoreAway
from workers.runtime import RUNTIME
from workers.shared import Gate

log = get_logger(__name__)


#: Why a worker's gate is closed while the store has not said whether the checker holds it out.
NOT_KNOWN = "started while the store could not say whether the checker holds it out"


def install(worker: str, configured: list[str], checker: CheckerView | None) -> str | None:
    """Set this worker's gate up (main process, before the pool forks): closed if the checker
    still holds it out, or if the store cannot say (the reason is returned), else open.

    A worker the checker took out and that starts again while the store does not answer
    (restarted by its platform during a store stall) cannot know its verdict: it starts out of
    rotation, and ``settle`` asks again until the store answers."""
    RUNTIME.worker = worker
    RUNTIME.verify_queue = verify_queue_name(worker) if worker else ""
    RUNTIME.configured = tuple(q for q in configured if q != RUNTIME.verify_queue)
    RUNTIME.checker = checker
    try:
        held = checker.reason(worker) if checker is not None and worker else None
    except StoreAway:
        RUNTIME.gate = Gate(False, NOT_KNOWN)
        return NOT_KNOWN
    RUNTIME.gate = Gate(False, _held_out(held)) if held is not None else Gate(True, "clean start")
    return held


def settle(consumer: Any) -> bool:
    """A gate closed as ``NOT_KNOWN``: ask the store again (with the per-task timeout: this
    runs on the worker's event loop). Put back in rotation when the checker does not hold it
    out, kept out with the checker's reason when it does. True once settled, whoever settled
    it (a command from the checker may have meanwhile)."""
    g, checker = RUNTIME.gate, RUNTIME.checker
    if g is None or checker is None or g.is_open() or g.reason != NOT_KNOWN:
        return True
    try:
        held = checker.reason(RUNTIME.worker, quick=True)
    except StoreAway:
        return False
    if held is None:
        put_back(consumer, "the store answered: not held out")
        log.info("gate_settled", gate="open", worker=RUNTIME.worker)
    else:
        g.close(_held_out(held))
        log.warning("gate_settled", gate="closed", reason=held, worker=RUNTIME.worker)
    return True


def _held_out(reason: str) -> str:
    return f"restarted while held out: {reason}"


def in_rotation_only(queue: str | None) -> bool:
    """True for every queue but this worker's own verify queue — the work queues, and any
    other queue somebody made it consume: a worker out of rotation takes from none of them."""
    return queue != RUNTIME.verify_queue or not queue


def gate() -> Gate | None:
    """This worker's gate (None outside a host worker)."""
    return RUNTIME.gate


def allows(queue: str | None, worker: str | None = None) -> bool:
    """Whether a task from ``queue`` may start in this process (always, outside a host worker).

    Both the local flag (set by the drain command) and the checker's gate key in the store
    (set at the verdict) must be open. When the store does not answer, the local flag decides.
    """
    g = RUNTIME.gate
    if g is None or not in_rotation_only(queue):
        return True
    if not g.is_open():
        return False
    keys = RUNTIME.checker
    return worker is None or keys is None or not keys.closed(worker)


def holds_back(queue: str | None) -> bool:
    """The local flag alone, cheap enough for every message: True when a message from
    ``queue`` must be handed back (out of rotation, and not from the own verify queue)."""
    g = RUNTIME.gate
    return g is not None and not g.is_open() and in_rotation_only(queue)


def undo_subscriptions(consumer: Any, why: str) -> list[str]:
    """Out of rotation but subscribed to work queues (somebody re-subscribed it): cancel them
    now, without waiting for the checker. Returns the queues cancelled."""
    g = RUNTIME.gate
    if g is None or g.is_open():
        return []
    cancelled = consuming_work_queues(consumer)
    for name in cancelled:
        consumer.cancel_task_queue(name)
        RUNTIME.undone[name] += 1
    if cancelled:
        log.warning("subscription_undone", queues=cancelled, reason=why, gate_reason=g.reason,
                    worker=consumer.hostname)
    return cancelled


def task_consumer() -> Any:
    """The worker's kombu task consumer (None before it has one, or outside a worker)."""
    return getattr(RUNTIME.consumer, "task_consumer", None)


def hold_out(reason: str) -> None:
    """The checker's gate key refused a task: close the local gate too and stop consuming,
    so that the worker hands back what it reserved once, not in a loop. Main process only."""
    g, consumer = RUNTIME.gate, RUNTIME.consumer
    if g is not None and g.is_open() and consumer is not None:
        take_out(consumer, reason)
        log.warning("held_out_by_store_gate", reason=reason, worker=consumer.hostname)


def take_out(consumer: Any, reason: str, hold: str = "") -> dict[str, Any]:
    """Close the gate and stop consuming every work queue; what the worker now holds."""
    _require().close(reason, hold)
    for name in consuming_work_queues(consumer):
        consumer.cancel_task_queue(name)
    return status(consumer)


def put_back(consumer: Any, reason: str) -> dict[str, Any]:
    """Consume the configured work queues again and open the gate."""
    g = _require()
    consuming = set(consuming_work_queues(consumer))
    for name in configured_work_queues():
        if name not in consuming:
            consumer.add_task_queue(name)
    g.open(reason)
    return status(consumer)


def status(consumer: Any) -> dict[str, Any]:
    """The gate and the queues, as control replies and wear reports carry them."""
    g = _require()
    return {
        "gate": "open" if g.is_open() else "closed",
        "gate_reason": g.reason,
        "gate_hold": g.hold,
        "gate_changed_at": g.changed_at,
        "self_protected": g.self_protected,
        "consuming": consuming_work_queues(consumer),
        "inflight": holding_work(),
        "at": time.time(),
    }


def holding_work() -> int:
    """Tasks held, running or reserved, but the checker's own probes: a drain is done when no
    work is held, whichever probe runs (on a worn worker a probe can take as long as it likes,
    and the drain waited its full time-out for them)."""
    verify = RUNTIME.verify_queue
    return sum(1 for held in (worker_state.active_requests, worker_state.reserved_requests)
               for r in held if not verify or (r.delivery_info or {}).get("routing_key") != verify)


def consuming_work_queues(consumer: Any) -> list[str]:
    """Queues the consumer is subscribed to right now, its own verify queue aside."""
    queues = consumer.task_consumer.queues if consumer.task_consumer else []
    return sorted(q.name for q in queues if in_rotation_only(q.name))


def configured_work_queues() -> list[str]:
    """Work queues this worker was started to consume (``-Q``), whatever its state."""
    return sorted(RUNTIME.configured)


def _require() -> Gate:
    if RUNTIME.gate is None:
        raise RuntimeError("no health gate: not inside a host worker")
    return RUNTIME.gate
