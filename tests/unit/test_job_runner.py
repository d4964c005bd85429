"""How a job run takes the answers of its chunk tasks, without a broker: the runner is built on
a Celery app whose Redis backend is never connected to, and is handed the answers directly."""

from __future__ import annotations

import io

from celery import Celery

from producer.chunks import Chunk, JobReport
from producer.job_runner import JobRunner
from producer.job_store import InMemoryJobStore
from producer.pacing import ChunkBudget
from workers.inbound import Line


def runner() -> tuple[JobRunner, InMemoryJobStore]:
    app = Celery("unit", backend="redis://127.0.0.1:9/0", set_as_current=False)
    store = InMemoryJobStore()
    store.create("j", {"items_written": 0})
    run = JobRunner(app, store, "j", io.BytesIO(), ChunkBudget(cpu_s=1.0, mem_mb=256), 2,
                    fleet=lambda: (0.0, 1), total=10)
    return run, store


def line(i: int) -> Line:
    return Line(ref=f"in:{i}", text=f"tweet {i}", rejection=None)


def test_a_chunk_the_worker_found_cancelled_stops_the_job() -> None:
    """The worker may see a cancel before the runner's next look at the store: that answer alone
    must end the run as cancelled (reading on, the run would end "done" with items missing)."""
    run, _ = runner()
    run.inflight["t1"] = Chunk(0, 0, [line(0), line(1)], "t1")
    report = JobReport("j")
    run._settle(None, "t1", {"status": "SUCCESS", "result": {"chunk": 0, "cancelled": True}},
                report)
    assert report.state == "cancelled"
    assert not run.inflight and not run.ready and report.resent == 0


def test_a_measured_chunk_is_ready_to_write_and_the_run_goes_on() -> None:
    run, store = runner()
    run.inflight["t1"] = Chunk(0, 0, [line(0)], "t1")
    store.put_chunk("j", 0, [{"status": "ok", "ref": "in:0"}])
    report = JobReport("j")
    run._settle(None, "t1", {"status": "SUCCESS", "result": {"chunk": 0, "n": 1, "cpu_s": 0.01}},
                report)
    assert report.state == "running"
    assert run.ready[0].records == [{"status": "ok", "ref": "in:0"}]
