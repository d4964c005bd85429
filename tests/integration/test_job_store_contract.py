"""The job store's port, the same cases on Redis and in memory: what the runner and the commands
write, they read back; a chunk's records come from the worker's key; the plan always tiles."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from broker_config import keys
from harness.redis_server import RedisServer
from producer.chunks import Chunk
from producer.job_store import JOB_KEEP_S, InMemoryJobStore, JobStore, RedisJobStore
from workers.inbound import Line


@dataclass
class Subject:
    store: JobStore
    #: What a worker does when it has analysed a chunk.
    put_chunk: Callable[[str, int, list[dict[str, Any]]], object]
    ttl: Callable[[str], float | None]  # seconds the job's records still live (None: forever)


@pytest.fixture(params=["memory", "redis"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "memory":
        memory = InMemoryJobStore()
        yield Subject(memory, memory.put_chunk, lambda job_id: None)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushall()
    store = RedisJobStore.from_url(server.url)

    def put(job_id: str, chunk_id: int, records: list[dict[str, Any]]) -> None:
        client.set(keys.job_chunk(job_id, chunk_id), json.dumps({"records": records}))

    def ttl(job_id: str) -> float | None:
        left = client.ttl(keys.job(job_id))
        return None if left < 0 else float(left)

    yield Subject(store, put, ttl)
    client.close()


def chunk(cid: int, first: int, n: int) -> Chunk:
    return Chunk(cid, first, [Line(f"r{first + i}", "text", None) for i in range(n)],
                 task_id=f"t{cid}")


class TestJobRecords:
    def test_a_job_is_created_read_and_updated(self, subject: Subject) -> None:
        store = subject.store
        assert store.get("j1") is None
        store.create("j1", {"state": "running", "source": "in.tsv", "total": 3})
        store.update("j1", items_written=2, waiting="")
        assert store.get("j1") == {"state": "running", "source": "in.tsv", "total": 3,
                                   "items_written": 2, "waiting": ""}

    def test_jobs_are_listed_newest_first(self, subject: Subject) -> None:
        for job_id in ("old", "mid", "new"):
            subject.store.create(job_id, {"state": "running"})
        assert subject.store.jobs() == ["new", "mid", "old"]
        assert subject.store.jobs(limit=2) == ["new", "mid"]

    def test_the_plan_tiles_the_input_in_order(self, subject: Subject) -> None:
        store = subject.store
        store.create("j1", {"state": "running"})
        a, b = chunk(0, 0, 50), chunk(1, 50, 200)
        store.planned("j1", [b, a])
        assert [(e["id"], e["first"], e["n"], e["task"]) for e in store.plan("j1")] == [
            (0, 0, 50, "t0"), (1, 50, 200, "t1")]
        # b is split in two: one change, the halves in, the whole out
        b1, b2 = chunk(2, 50, 100), chunk(3, 150, 100)
        store.planned("j1", [b1, b2], [b])
        assert [(e["first"], e["n"]) for e in store.plan("j1")] == [(0, 50), (50, 100), (150, 100)]

    def test_a_written_chunk_leaves_the_plan_and_moves_the_mark(self, subject: Subject) -> None:
        store = subject.store
        store.create("j1", {"state": "running"})
        a = chunk(0, 0, 2)
        store.planned("j1", [a])
        assert store.chunk_records("j1", 0) is None  # not analysed yet
        records: list[dict[str, Any]] = [{"status": "analysed", "ref": f"r{i}"} for i in (0, 1)]
        subject.put_chunk("j1", 0, records)
        assert store.chunk_records("j1", 0) == records
        store.written("j1", a, items=2, out_bytes=120)
        meta = store.get("j1")
        assert meta is not None and (meta["items_written"], meta["out_bytes"]) == (2, 120)
        assert store.plan("j1") == [] and store.chunk_records("j1", 0) is None

    def test_costs_are_kept_in_order(self, subject: Subject) -> None:
        subject.store.cost("j1", {"n": 50, "cpu_s": 0.01})
        subject.store.cost("j1", {"n": 200, "cpu_s": 0.05, "rss_mb": 40.5})
        assert subject.store.costs("j1") == [{"n": 50, "cpu_s": 0.01},
                                             {"n": 200, "cpu_s": 0.05, "rss_mb": 40.5}]
        assert subject.store.costs("other") == []

    def test_cancel_is_seen_and_says_so(self, subject: Subject) -> None:
        store = subject.store
        store.create("j1", {"state": "running"})
        assert not store.cancelled("j1")
        store.cancel("j1")
        assert store.cancelled("j1") and not store.cancelled("j2")
        assert (store.get("j1") or {})["state"] == "cancelled"

    def test_a_finished_job_says_when_and_its_records_expire(self, subject: Subject) -> None:
        store = subject.store
        store.create("j1", {"state": "running"})
        store.finish("j1", "done")
        meta = store.get("j1")
        assert meta is not None and meta["state"] == "done" and meta["finished_at"] > 0
        left = subject.ttl("j1")
        assert left is None or 0 < left <= JOB_KEEP_S  # memory keeps it for the test's life

    def test_what_is_read_is_a_copy(self, subject: Subject) -> None:
        store = subject.store
        meta: dict[str, Any] = {"state": "running", "tags": ["a"]}
        store.create("j1", meta)
        meta["tags"].append("b")
        read = store.get("j1")
        assert read is not None and read["tags"] == ["a"]
        read["tags"].append("c")
        assert (store.get("j1") or {})["tags"] == ["a"]
