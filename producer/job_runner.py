"""Running a job: a large input split into chunks sized to a budget, run on the ``bulk`` queue, and
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
import math
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import redis
from celery import Celery
from celery.result import denied_join_result
from celery.utils import uuid as task_uuid

from broker_config import tracing
from broker_config.contract import envelope, headers
from producer.chunks import Chunk, JobReport, merge, take
from producer.feed import line_of
from producer.inflight import BROKEN, POLL_S
from producer.job_store import JobStore
from producer.pacing import ChunkBudget, Sizer, pace
from producer.results import ResultReader
from workers.inbound import Line

#: Seconds between looks at the fleet (wear, who is in rotation) and at cancellation.
LOOK_S = 1.0


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

    def __init__(self, app: Celery, store: JobStore, job_id: str, out: IO[bytes], budget: ChunkBudget,
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
        self._recall(plan)
        pending_plan = list(plan)
        first = written
        reading = True
        looked = 0.0
        try:
            with self.app.producer_or_acquire() as producer:
                while report.state == "running" and (
                        reading or pending_plan or self.inflight or self.ready):
                    now = time.monotonic()
                    if now - looked >= LOOK_S:
                        looked = now
                        if self.store.cancelled(self.job_id):
                            report.state = "cancelled"
                            break
                        self._look()
                    first, reading = self._send_more(producer, lines, pending_plan, first,
                                                     reading, report)
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

    def _recall(self, plan: list[dict[str, Any]]) -> None:
        """What a resumed job knew: the cost of its last chunks, and the next chunk's id."""
        for cost in self.store.costs(self.job_id)[-5:]:
            self.sizer.measured(cost.get("n", 0), cost.get("cpu_s", 0.0), cost.get("rss_mb", 0.0))
        self.next_id = max([e["id"] for e in plan], default=-1) + 1
        self.next_id = max(self.next_id, int((self.store.get(self.job_id) or {}).get("next_id", 0)))

    def _send_more(self, producer: Any, lines: Iterator[Line], pending_plan: list[dict[str, Any]],
                   first: int, reading: bool, report: JobReport) -> tuple[int, bool]:
        """Send chunks while fewer than ``allowed`` are in flight: a resumed job's planned ones
        first, then new ones from ``lines``; the next item's number, and whether there may be
        more to read."""
        while len(self.inflight) < self.allowed and (pending_plan or reading):
            if pending_plan:
                entry = pending_plan.pop(0)
                chunk = Chunk(entry["id"], entry["first"], take(lines, entry["n"]),
                              entry.get("task", ""))
                first = chunk.first + chunk.n
                report.items = max(report.items, first)
                self._resume_chunk(producer, chunk, report)
                continue
            taken = take(lines, self._next_size(first))
            if not taken:
                return first, False
            chunk = Chunk(self._new_id(), first, taken)
            first += chunk.n
            report.items = first
            self._send(producer, chunk)
            self.store.planned(self.job_id, [chunk])
        return first, reading

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
        envs = [envelope(ln.ref, ln.text, "auto") for ln in chunk.lines if ln.text is not None]
        self.inflight[chunk.task_id] = chunk
        self.results.watch(chunk.task_id)
        # results are read by self.results
        with denied_join_result(), tracing.sending([ln.ref for ln in chunk.lines]):
            self.app.send_task("host.job_chunk", task_id=chunk.task_id, producer=producer,
                               args=[self.job_id, chunk.id, envs,
                                     self.budget.cpu_s * self.budget.hard_multiple],
                               headers=headers())

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
            # the worker saw the cancel first: its items will never be written, so the job
            # stops here, whatever is left to read (it would otherwise read on and end "done")
            report.state = "cancelled"
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
            for record in merge(chunk):
                self.out.write(line_of(record).encode("utf-8"))
            self.out.flush()
            written += chunk.n
            report.chunks += 1
            self.store.written(self.job_id, chunk, written, self.out.tell())
            if self.progress:
                self.progress(written, max(self.total, report.items), report.chunks, self.waiting)
        return written
