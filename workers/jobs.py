"""One chunk of a job, run on a worker: analyse it, measure it, store its records by job and
chunk id.

A chunk's records are stored under its own key (``keys.job_chunk``) with a plain SET: a chunk
that runs twice (its worker was killed, or a resumed job sent it again) stores the same records
under the same key, so nothing is ever counted twice. The task's own result is only the
measurement, which the job uses to size the chunks that follow.
"""

from __future__ import annotations

import json
import resource
import time
from functools import cache
from typing import Any

import psutil
import redis
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from broker_config import keys
from broker_config.app import settings_of
from broker_config.redis_url import RedisAddress
from workers import tally
from workers.analysis import analyse_envelope, keep_dead_letters
from workers.deadletter import store_of
from workers.requests import HostTask
from workers.sentiment import budget_run
from workers.tasks import _context, _injected

#: Seconds a chunk's records stay stored if the job never collects them (its producer died
#: and nobody resumed it).
CHUNK_KEEP_S = 7 * 24 * 3600


@shared_task(name="host.job_chunk", bind=True, base=HostTask)
def job_chunk(self: Task[Any, Any], job_id: str, chunk_id: int, envelopes: list[dict[str, Any]],
              stop_cpu_s: float | None = None) -> dict[str, Any]:
    """Analyse one chunk of job ``job_id``; returns what it cost (records go to the store).

    A chunk that has used ``stop_cpu_s`` CPU seconds stops between two items and says so
    (``over``): the job splits it. The check is the chunk's own, not a time-limit signal, so it
    never lands outside the task (a signal that did, in the pool's pipe, killed a worker in
    testing); each item is bounded by the per-input CPU budget, and host's task time limits
    remain the last resort."""
    store = store_of(self.app)
    client = _client(settings_of(self.app).store)
    if client.exists(keys.job_cancelled(job_id)):
        return {"chunk": chunk_id, "cancelled": True}
    _injected()  # fault injection (slow, fail_rate), as for every data-plane task
    context = _context(self)
    cpu0, wall0 = time.process_time(), time.monotonic()
    records: list[dict[str, Any]] = []
    over = False
    try:
        with budget_run(context.limits.cpu_budget_s):
            for env in envelopes:
                records.append(analyse_envelope(env, context))
                if stop_cpu_s is not None and time.process_time() - cpu0 > stop_cpu_s:
                    over = len(records) < len(envelopes)
                    break
    except SoftTimeLimitExceeded:
        over = True  # the job splits this chunk and sends its halves again
    cost = {"chunk": chunk_id, "n": len(envelopes), "done": len(records), "over": over,
            "cpu_s": round(time.process_time() - cpu0, 4),
            "wall_s": round(time.monotonic() - wall0, 4),
            # resident memory with the chunk's records held, and the pool process's peak so far
            "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "worker": context.worker}
    if over:
        return cost
    keep_dead_letters(records, store)
    tally.count(records, context.queue)
    client.set(keys.job_chunk(job_id, chunk_id),
               json.dumps({"records": records, "cost": cost}, allow_nan=False, default=str),
               ex=CHUNK_KEEP_S)
    return cost


@cache
def _client(url: RedisAddress) -> redis.Redis:
    # Bounded: a chunk whose store stops answering fails after 10 s (the job sends it again)
    # instead of holding its pool process until the hard time limit.
    return url.client(socket_timeout=10, socket_connect_timeout=5)
