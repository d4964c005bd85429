"""What the analysed messages were: inbound outcomes and sentiment labels, counted by the pool.

The counts live in shared memory created by the worker's main process before its pool forks;
pool processes add to them as each task finishes, and the wear reporter (main process) sends
them in every ``worker-wear`` report. The checker turns them into ``host_inbound_total`` and
``host_tweets_total``. Probes (the private verify queue) are not traffic and are not counted.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Mapping
from typing import Any

from broker_config.queues import is_work_queue
from broker_config.wear_event import LABELS, OUTCOMES
from workers.runtime import RUNTIME

_SLOTS = OUTCOMES + LABELS

def install() -> None:
    """Create the shared counters (in the main process, before the pool forks)."""
    RUNTIME.counts = multiprocessing.Array("Q", len(_SLOTS))
    RUNTIME.progress = multiprocessing.RawValue("Q", 0)


def progressed() -> None:
    """One input or work-queue task done (a pool process, or the main process as a task
    ends): the wear reporter tells progress from a stall by this count moving. No lock: two
    processes adding at once may lose one of the two, and the count still moves, which is all
    it is read for."""
    progress = RUNTIME.progress
    if progress is not None:
        progress.value += 1


def counts_as_work(queue: str | None) -> bool:
    """Whether what comes off ``queue`` is the worker's work (everything but its own verify
    queue: a probe every ten seconds explains no load)."""
    return not RUNTIME.verify_queue or queue != RUNTIME.verify_queue


def progress() -> int:
    """Inputs done since the worker started (as counted by ``progressed``)."""
    return int(RUNTIME.progress.value) if RUNTIME.progress is not None else 0


def count(results: Iterable[Mapping[str, Any]], queue: str | None) -> None:
    """Count what one task produced (in a pool process)."""
    counts = RUNTIME.counts
    if counts is None or (queue is not None and not is_work_queue(queue)):
        return
    add = [0] * len(_SLOTS)
    for r in results:
        status = r.get("status")
        if status in OUTCOMES:
            add[_SLOTS.index(status)] += 1
        label = r.get("label")
        if status == "analysed" and label in LABELS:
            add[_SLOTS.index(label)] += 1
    with counts.get_lock():
        for i, n in enumerate(add):
            counts[i] += n


def snapshot() -> dict[str, dict[str, int]]:
    """Counts since this worker started: ``{"inbound": {...}, "tweets": {...}}``."""
    counts = RUNTIME.counts
    if counts is None:
        return {"inbound": {}, "tweets": {}}
    with counts.get_lock():
        values = list(counts)
    by_slot = dict(zip(_SLOTS, values, strict=True))
    return {"inbound": {k: by_slot[k] for k in OUTCOMES},
            "tweets": {k: by_slot[k] for k in LABELS}}
