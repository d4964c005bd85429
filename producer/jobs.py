"""A job from start to end, as every door runs it: ``celery -A host job`` and the HTTP API.

A job is a record in the job store (``new_job``), an input file and an output file. ``run_job``
runs or resumes it to its end and says how it ended; ``status`` is what both doors show.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from celery import Celery

from broker_config.app import settings_of
from broker_config.policy_file import load_policy
from broker_config.queues import BULK
from healthcheck.store import RedisHealthStore
from producer.chunks import JobReport, new_job_id
from producer.feed import read_lines
from producer.inflight import BROKEN
from producer.job_runner import JobProgress, JobRunner
from producer.job_store import JobStore
from producer.pacing import ChunkBudget, fleet_pressure
from workers.inbound import Limits

BUDGET = ChunkBudget()
#: The states of a job that never change again.
FINAL = ("done", "cancelled")


def new_job(store: JobStore, source: str, out: str, fmt: str = "auto",
            chunk_cpu: float = BUDGET.cpu_s, chunk_mem: float = BUDGET.mem_mb,
            parallel: int | None = None, **extra: Any) -> str:
    """Record a new job over ``source`` writing to ``out`` (emptied); its id."""
    job_id = new_job_id()
    meta = {"input": str(Path(source).resolve()), "out": str(Path(out).resolve()),
            "format": fmt, "chunk_cpu": chunk_cpu, "chunk_mem": chunk_mem, "parallel": parallel,
            "state": "running", "created_at": time.time(), "items_written": 0, "out_bytes": 0,
            "total": count_lines(source), "waiting": "", **extra}
    Path(out).write_bytes(b"")
    store.create(job_id, meta)
    return job_id


def reopen(store: JobStore, job_id: str) -> dict[str, Any]:
    """Make a stopped job ready to run again: its output cut back to the last chunk written.

    Raises:
        LookupError: no such job.
        ValueError: the job is done or cancelled.
    """
    meta = store.get(job_id)
    if meta is None:
        raise LookupError(f"no job {job_id}")
    if meta["state"] in FINAL:
        raise ValueError(f"job {job_id} is {meta['state']}: nothing to resume")
    with open(meta["out"], "r+b") as out:
        out.truncate(int(meta["out_bytes"]))
    store.update(job_id, state="running")
    return meta


def run_job(app: Celery, store: JobStore, job_id: str,
            progress: JobProgress | None = None) -> JobReport:
    """Run (or go on with) a job until it is done, cancelled, or the broker or store stay away;
    the store says so when it ends (``done``, or ``interrupted``: resumable)."""
    meta = store.get(job_id)
    if meta is None:
        raise LookupError(f"no job {job_id}")
    settings = settings_of(app)
    limits = Limits(settings.max_line_bytes, settings.max_text_chars)
    budget = ChunkBudget(cpu_s=float(meta["chunk_cpu"]), mem_mb=float(meta["chunk_mem"]))
    fleet = fleet_reader(app)
    written = int(meta["items_written"])
    parallel = meta.get("parallel") or max(2, 2 * fleet()[1])
    with ExitStack() as stack:
        inp: IO[bytes] = stack.enter_context(open(meta["input"], "rb"))
        out: IO[bytes] = stack.enter_context(open(meta["out"], "ab"))
        lines = itertools.islice(read_lines(inp, meta["input"], meta["format"], limits),
                                 written, None)
        runner = JobRunner(app, store, job_id, out, budget, parallel, fleet, progress,
                           total=int(meta.get("total", 0)))
        report = runner.run(lines, written, store.plan(job_id))
    if report.state == "done":
        store.finish(job_id, "done")
    elif report.state == "interrupted":
        with contextlib.suppress(*BROKEN):  # the store is what went away: resume says so later
            store.update(job_id, state="interrupted")
    return report


def fleet_reader(app: Celery) -> Callable[[], tuple[float, int]]:
    """What paces a job: (the fleet's wear pressure, workers in rotation consuming ``bulk``),
    from the checker's records."""
    settings = settings_of(app)
    health = RedisHealthStore.from_url(settings.store)
    soft = {m: t.soft for m, t in load_policy(settings.policy_file or None).thresholds.items()
            if t.soft}

    def fleet() -> tuple[float, int]:
        workers = health.load()
        in_rotation = {n for n, w in workers.items() if w.consumes(BULK)}
        return fleet_pressure(health.reports(), in_rotation, soft), len(in_rotation)
    return fleet


def status(store: JobStore, job_id: str) -> dict[str, Any] | None:
    """A job's progress, what it waits for and what its chunks cost (None: no such job)."""
    meta = store.get(job_id)
    if meta is None:
        return None
    costs = store.costs(job_id)
    cpus = sorted(c.get("cpu_s", 0.0) for c in costs)
    elapsed = max(1e-9, float(meta.get("updated_at", meta["created_at"])) - meta["created_at"])
    rate = meta["items_written"] / elapsed
    left = max(0, int(meta.get("total", 0)) - meta["items_written"])
    return {"job": job_id, "state": meta["state"], "input": meta["input"], "out": meta["out"],
            "items_written": meta["items_written"], "total": meta.get("total", 0),
            "out_bytes": meta.get("out_bytes", 0), "chunks": len(costs),
            "rate_per_s": round(rate, 1),
            "eta_s": round(left / rate, 1) if rate and meta["state"] == "running" else None,
            "waiting": meta.get("waiting", ""), "chunk_cpu_budget_s": meta["chunk_cpu"],
            "chunk_cpu_median_s": cpus[len(cpus) // 2] if cpus else None,
            "chunk_cpu_max_s": cpus[-1] if cpus else None,
            "chunk_rss_max_mb": max((c.get("rss_mb", 0.0) for c in costs), default=None),
            "created_at": meta["created_at"], "via": meta.get("via", "cli"), "costs": costs}


def count_lines(path: str) -> int:
    """Lines in the file (items, for the progress total), counted without decoding."""
    count = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
    return count
