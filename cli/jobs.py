"""Jobs: a large input split into chunks sized to a budget, run on the ``bulk`` queue, and
written out in input order, exactly once, across worker deaths, drains and producer deaths.

The chunk size follows what chunks cost: the first chunks are small, each measured chunk
updates the cost per item, and the next chunk is sized to land at ``TARGET_SHARE`` of the CPU
budget. A chunk that ran over its budget makes the rest of the job use its (higher) cost; a
chunk that stops itself after ``hard_multiple`` budgets of CPU, or fails, is split in two and
sent again; an item alone that still fails is written as failed, never retried for ever.

Progress lives in the store (``keys.job*``): the plan of chunks not yet written, how many items
and bytes of output are written, and every chunk's cost. Workers store each chunk's records
under the job and chunk id; the producer writes them to the output in input order and only
then moves its mark. ``resume`` truncates the output to the mark and goes on from there.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import redis
from celery import Celery
from celery.result import denied_join_result
from celery.utils import uuid as task_uuid

from broker_config import keys
from broker_config.contract import envelope
from broker_config.redis_url import RedisAddress, address
from cli.feed import BROKEN, POLL_S, line_of
from cli.results import ResultReader
from workers.inbound import Line

#: The share of the CPU budget a chunk is sized to use, leaving room for noise.
TARGET_SHARE = 0.8
#: How long a job's records (definition, costs) stay after it ends.
JOB_KEEP_S = 7 * 24 * 3600
#: Seconds between looks at the fleet (wear, who is in rotation) and at cancellation.
LOOK_S = 1.0


@dataclass(frozen=True, slots=True)
class Budget:
    """What one chunk may cost. Defaults: docs/jobs.md says where each comes from."""

    #: CPU seconds per chunk (Dask's guidance: units of work of about a second or more keep
    #: the per-task overhead below 1%; host aims lower than Dask's 5 s adaptive target so that a
    #: drain waits seconds, not tens of seconds).
    cpu_s: float = 2.0
    #: Resident memory of the pool process holding a chunk's records, in MB.
    mem_mb: float = 512.0
    #: A chunk that has used this many budgets of CPU stops between two items and is split.
    hard_multiple: float = 4.0
    #: Items in the first chunk: small, so the first measurement comes fast.
    first_items: int = 50
    #: The most items in one chunk (one message), whatever the budget allows.
    max_items: int = 20_000
    #: A chunk is at most this many times larger than the one before it.
    growth: float = 4.0


class Sizer:
    """The next chunk's size, from the cost per item measured so far."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.per_item: float | None = None
        self.size = budget.first_items

    def measured(self, items: int, cpu_s: float, rss_mb: float = 0.0) -> None:
        """Take one chunk's measurement into account."""
        if items <= 0:
            return
        per = max(cpu_s, 1e-6) / items
        if self.per_item is None or per > self.per_item:
            self.per_item = per  # a costlier chunk is believed at once
        else:
            self.per_item = 0.7 * self.per_item + 0.3 * per
        target = self.budget.cpu_s * TARGET_SHARE / self.per_item
        if rss_mb > self.budget.mem_mb:
            target = min(target, items / 2)
        ceiling = min(self.budget.max_items, self.size * self.budget.growth)
        self.size = max(1, int(min(target, ceiling)))


def pace(pressure: float, parallel: int) -> int:
    """Chunks the job may have in flight when the most worn worker in rotation is at
    ``pressure`` (its highest wear reading over that metric's soft limit): all of them below
    0.8, one from 0.8, none from 0.95 (the next step would be SUSPECT)."""
    if pressure >= 0.95:
        return 0
    if pressure >= 0.8:
        return 1
    return parallel


def fleet_pressure(reports: Mapping[str, Mapping[str, Any]], in_rotation: set[str],
                   soft: Mapping[str, float]) -> float:
    """The highest reading/soft-limit ratio among the workers in rotation (0 when none)."""
    worst = 0.0
    for worker, report in reports.items():
        if worker not in in_rotation:
            continue
        for metric, value in (report.get("wear") or {}).items():
            limit = soft.get(metric)
            if limit and isinstance(value, (int, float)):
                worst = max(worst, float(value) / limit)
    return worst


@dataclass
class Chunk:
    """A run of consecutive input items, sent as one task."""

    id: int
    first: int
    lines: list[Line]
    task_id: str = ""
    sent_at: float = 0.0
    records: list[dict[str, Any]] | None = None

    @property
    def n(self) -> int:
        return len(self.lines)

    def plan_entry(self) -> str:
        return json.dumps({"first": self.first, "n": self.n, "task": self.task_id})


@dataclass
class JobReport:
    """How a job run (or resume) ended."""

    job_id: str
    state: str = "running"
    items: int = 0
    written: int = 0
    chunks: int = 0
    resent: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    #: Why the run stopped early (state "interrupted"): the broker or the store went away.
    error: str = ""
    costs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("costs")
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d


class JobStore:
    """A job's records in the store."""

    def __init__(self, client: Any) -> None:
        self.client = client  # decoding responses to str

    @classmethod
    def from_url(cls, url: RedisAddress | str) -> JobStore:
        # Bounded: a store that stops answering fails a command after 10 s (the job stops,
        # resumable), never hangs it.
        return cls(address(url).client(decode_responses=True, socket_timeout=10,
                                       socket_connect_timeout=5))

    def create(self, job_id: str, meta: Mapping[str, Any]) -> None:
        pipe = self.client.pipeline()
        pipe.hset(keys.job(job_id), mapping={k: json.dumps(v) for k, v in meta.items()})
        pipe.zadd(keys.JOBS, {job_id: time.time()})
        pipe.execute()

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.client.hgetall(keys.job(job_id))
        return {k: json.loads(v) for k, v in raw.items()} if raw else None

    def update(self, job_id: str, **fields: Any) -> None:
        self.client.hset(keys.job(job_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    def jobs(self, limit: int = 20) -> list[str]:
        return list(self.client.zrevrange(keys.JOBS, 0, limit - 1))

    def plan(self, job_id: str) -> list[dict[str, Any]]:
        """The chunks planned and not yet written, in input order."""
        raw = self.client.hgetall(keys.job_plan(job_id))
        entries = [{"id": int(k), **json.loads(v)} for k, v in raw.items()]
        return sorted(entries, key=lambda e: e["first"])

    def planned(self, job_id: str, add: list[Chunk], drop: list[Chunk] | None = None) -> None:
        pipe = self.client.pipeline()  # one transaction: the plan always tiles the input
        if add:
            pipe.hset(keys.job_plan(job_id), mapping={str(c.id): c.plan_entry() for c in add})
        if drop:
            pipe.hdel(keys.job_plan(job_id), *[str(c.id) for c in drop])
        pipe.execute()

    def written(self, job_id: str, chunk: Chunk, items: int, out_bytes: int) -> None:
        pipe = self.client.pipeline()
        pipe.hset(keys.job(job_id), mapping={"items_written": json.dumps(items),
                                             "out_bytes": json.dumps(out_bytes),
                                             "updated_at": json.dumps(time.time())})
        pipe.hdel(keys.job_plan(job_id), str(chunk.id))
        pipe.delete(keys.job_chunk(job_id, chunk.id))
        pipe.execute()

    def chunk_records(self, job_id: str, chunk_id: int) -> list[dict[str, Any]] | None:
        raw = self.client.get(keys.job_chunk(job_id, chunk_id))
        if raw is None:
            return None
        records: list[dict[str, Any]] = json.loads(raw)["records"]
        return records

    def cost(self, job_id: str, cost: Mapping[str, Any]) -> None:
        self.client.rpush(keys.job_costs(job_id), json.dumps(cost))

    def costs(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(c) for c in self.client.lrange(keys.job_costs(job_id), 0, -1)]

    def cancel(self, job_id: str) -> None:
        self.client.set(keys.job_cancelled(job_id), "1", ex=JOB_KEEP_S)
        self.update(job_id, state="cancelled")

    def cancelled(self, job_id: str) -> bool:
        return bool(self.client.exists(keys.job_cancelled(job_id)))

    def finish(self, job_id: str, state: str) -> None:
        self.update(job_id, state=state, finished_at=time.time())
        for key in (keys.job(job_id), keys.job_costs(job_id), keys.job_plan(job_id)):
            self.client.expire(key, JOB_KEEP_S)


#: Called with (items written, items known, chunks written, detail text).
JobProgress = Callable[[int, int, int, str], None]


class JobRunner:
    """Runs (or resumes) one job: plans chunks, sends them, collects and writes them in order.

    Args:
        app: the host app.
        store: the job's records.
        job_id: the job.
        out: the output, positioned where the next line goes (binary: offsets are bytes).
        budget: what one chunk may cost.
        parallel: the most chunks in flight (fewer when the fleet is worn).
        fleet: returns (pressure, workers in rotation consuming ``bulk``); see ``pace``.
        progress: called as chunks are written.
    """

    def __init__(self, app: Celery, store: JobStore, job_id: str, out: IO[bytes], budget: Budget,
                 parallel: int, fleet: Callable[[], tuple[float, int]],
                 progress: JobProgress | None = None, total: int = 0) -> None:
        self.app, self.store, self.job_id, self.out = app, store, job_id, out
        self.budget, self.parallel, self.fleet, self.progress = budget, parallel, fleet, progress
        self.total = total
        self.sizer = Sizer(budget)
        self.results = ResultReader(app.backend)
        self.inflight: dict[str, Chunk] = {}  # task id -> chunk
        self.ready: dict[int, Chunk] = {}  # first item -> collected chunk
        self.next_id = 0
        self.allowed = parallel
        self.waiting = ""
        #: When a result was last heard of (or the stored ones last read).
        self.heard = time.monotonic()

    def run(self, lines: Iterator[Line], written: int, plan: list[dict[str, Any]]) -> JobReport:
        """Go on from ``written`` items: first the chunks of ``plan`` (a resumed job's), then
        new chunks from ``lines`` (which starts at item ``written``)."""
        started = time.monotonic()
        report = JobReport(self.job_id, items=written, written=written)
        for cost in self.store.costs(self.job_id)[-5:]:
            self.sizer.measured(cost.get("n", 0), cost.get("cpu_s", 0.0), cost.get("rss_mb", 0.0))
        self.next_id = max([e["id"] for e in plan], default=-1) + 1
        self.next_id = max(self.next_id, int((self.store.get(self.job_id) or {}).get("next_id", 0)))
        pending_plan = list(plan)
        first = written
        reading = True
        looked = 0.0
        try:
            with self.app.producer_or_acquire() as producer:
                while reading or pending_plan or self.inflight or self.ready:
                    now = time.monotonic()
                    if now - looked >= LOOK_S:
                        looked = now
                        if self.store.cancelled(self.job_id):
                            report.state = "cancelled"
                            break
                        self._look()
                    while len(self.inflight) < self.allowed and (pending_plan or reading):
                        if pending_plan:
                            entry = pending_plan.pop(0)
                            chunk = Chunk(entry["id"], entry["first"],
                                          _take(lines, entry["n"]), entry.get("task", ""))
                            first = chunk.first + chunk.n
                            report.items = max(report.items, first)
                            self._resume_chunk(producer, chunk, report)
                            continue
                        taken = _take(lines, self._next_size(first))
                        if not taken:
                            reading = False
                            break
                        chunk = Chunk(self._new_id(), first, taken)
                        first += chunk.n
                        report.items = first
                        self._send(producer, chunk)
                        self.store.planned(self.job_id, [chunk])
                    self._collect(producer, report)
                    report.written = self._write(report.written, report)
        except BROKEN as exc:  # publishing gave up after its retries, or the store is gone
            report.state, report.error = "interrupted", str(exc)
        finally:
            with contextlib.suppress(redis.RedisError, OSError):
                self.results.close()
        if report.state == "running":
            report.state = "done"
        report.elapsed_s = time.monotonic() - started
        return report

    def _next_size(self, first: int) -> int:
        """The sizer's size, but never so large that the last chunks leave workers idle: at
        most an equal share of what is left for each chunk allowed in flight."""
        left = self.total - first
        if left <= 0:
            return self.sizer.size
        share = math.ceil(left / max(1, self.parallel))
        return max(1, min(self.sizer.size, max(share, self.budget.first_items)))

    def _new_id(self) -> int:
        self.next_id += 1
        self.store.update(self.job_id, next_id=self.next_id)
        return self.next_id - 1

    def _look(self) -> None:
        pressure, in_rotation = self.fleet()
        self.allowed = pace(pressure, self.parallel)
        waiting = ""
        if in_rotation == 0:
            waiting = "no worker in rotation consumes bulk (by the checker's records): chunks wait"
        elif self.allowed < self.parallel:
            waiting = f"fleet wear at {pressure:.0%} of its soft limits: pacing to {self.allowed}"
        if waiting != self.waiting:
            self.waiting = waiting
            self.store.update(self.job_id, waiting=waiting)

    def _send(self, producer: Any, chunk: Chunk) -> None:
        chunk.task_id, chunk.sent_at = task_uuid(), time.monotonic()
        envs = [envelope(ln.ref, ln.text, "auto", time.time())
                for ln in chunk.lines if ln.text is not None]
        self.inflight[chunk.task_id] = chunk
        self.results.watch(chunk.task_id)
        with denied_join_result():  # results are read by self.results
            self.app.send_task("host.job_chunk", task_id=chunk.task_id, producer=producer,
                               args=[self.job_id, chunk.id, envs,
                                     self.budget.cpu_s * self.budget.hard_multiple])

    def _resume_chunk(self, producer: Any, chunk: Chunk, report: JobReport) -> None:
        """A chunk of a resumed job: done while nobody listened, or sent again."""
        records = self.store.chunk_records(self.job_id, chunk.id)
        if records is not None:
            chunk.records = records
            self.ready[chunk.first] = chunk
            return
        # Its task may still be queued: then it runs twice, and stores the same records
        # under the same key; the output takes them once.
        report.resent += 1
        self._send(producer, chunk)
        self.store.planned(self.job_id, [chunk])

    def _collect(self, producer: Any, report: JobReport) -> None:
        if not self.inflight:
            return
        got = self.results.arrived(0.2)
        now = time.monotonic()
        if got:
            self.heard = now
        elif now - self.heard >= POLL_S:
            # no news for a while: read what is stored (notifications lost in a restart)
            self.heard = now
            got = self.results.stored(list(self.inflight))
        for task_id, meta in got:
            self._settle(producer, task_id, meta, report)
        if got:
            self.results.forget([t for t, _ in got])

    def _settle(self, producer: Any, task_id: str, meta: dict[str, Any], report: JobReport) -> None:
        chunk = self.inflight.pop(task_id, None)
        if chunk is None:
            return
        cost = meta.get("result") if meta.get("status") == "SUCCESS" else None
        if isinstance(cost, dict) and cost.get("cancelled"):
            return
        if isinstance(cost, dict) and not cost.get("over"):
            records = self.store.chunk_records(self.job_id, chunk.id)
            if records is not None:
                self.store.cost(self.job_id, cost)
                report.costs.append(cost)
                self.sizer.measured(cost.get("n", 0), cost.get("cpu_s", 0.0),
                                    cost.get("rss_mb", 0.0))
                chunk.records = records
                self.ready[chunk.first] = chunk
                return
        # stopped itself over budget, failed, or its records are missing: split, send again
        report.resent += 1
        if isinstance(cost, dict):  # it stopped itself: what it did tells the cost per item
            self.sizer.measured(int(cost.get("done") or 1), float(cost.get("cpu_s", 0.0)))
        if chunk.n == 1:
            reason = f"chunk task {meta.get('status')}: {meta.get('result')!r}"[:300]
            chunk.records = [{"status": "failed", "ref": chunk.lines[0].ref, "reason": reason}]
            report.failed += 1
            self.ready[chunk.first] = chunk
            return
        half = chunk.n // 2
        parts = [Chunk(self._new_id(), chunk.first, chunk.lines[:half]),
                 Chunk(self._new_id(), chunk.first + half, chunk.lines[half:])]
        for part in parts:
            self._send(producer, part)
        self.store.planned(self.job_id, parts, [chunk])

    def _write(self, written: int, report: JobReport) -> int:
        """Write the collected chunks that come next in input order; returns items written."""
        while written in self.ready:
            chunk = self.ready.pop(written)
            for record in _merge(chunk):
                self.out.write(line_of(record).encode("utf-8"))
            self.out.flush()
            written += chunk.n
            report.chunks += 1
            self.store.written(self.job_id, chunk, written, self.out.tell())
            if self.progress:
                self.progress(written, max(self.total, report.items), report.chunks, self.waiting)
        return written


def _merge(chunk: Chunk) -> list[dict[str, Any]]:
    """One record per line of the chunk: its framing rejection, or the worker's record."""
    analysed = iter(chunk.records or [])
    out = []
    for line in chunk.lines:
        if line.rejection is not None:
            out.append(line.rejection.record(at=time.time(), stage="job"))
        else:
            out.append(next(analysed, {"status": "failed", "ref": line.ref,
                                       "reason": "no record for this item"}))
    return out


def _take(lines: Iterator[Line], n: int) -> list[Line]:
    out = []
    for _ in range(n):
        line = next(lines, None)
        if line is None:
            break
        out.append(line)
    return out


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]
