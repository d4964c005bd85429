"""A job's records: the port the job runner and the commands use, and its two implementations.

Progress lives in the store (``keys.job*``): the job's definition and state, the plan of chunks
not yet written, how many items and bytes of output are written, every chunk's cost, and a
cancellation mark. Workers store each chunk's records under the job and chunk id
(``workers/jobs.py``); the runner reads them from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

from broker_config import keys
from broker_config.redis_url import RedisAddress, address

#: How long a job's records (definition, costs) stay after it ends.
JOB_KEEP_S = 7 * 24 * 3600


class PlanEntry(Protocol):
    """What the store keeps of a planned chunk."""

    id: int

    def plan_entry(self) -> str: ...


class JobStore(Protocol):
    """A job's records, by job id."""

    def create(self, job_id: str, meta: Mapping[str, Any]) -> None: ...
    def get(self, job_id: str) -> dict[str, Any] | None: ...
    def update(self, job_id: str, **fields: Any) -> None: ...
    def jobs(self, limit: int = 20) -> list[str]: ...
    def plan(self, job_id: str) -> list[dict[str, Any]]: ...
    def planned(self, job_id: str, add: list[Any], drop: list[Any] | None = None) -> None: ...
    def written(self, job_id: str, chunk: Any, items: int, out_bytes: int) -> None: ...
    def chunk_records(self, job_id: str, chunk_id: int) -> list[dict[str, Any]] | None: ...
    def cost(self, job_id: str, cost: Mapping[str, Any]) -> None: ...
    def costs(self, job_id: str) -> list[dict[str, Any]]: ...
    def cancel(self, job_id: str) -> None: ...
    def cancelled(self, job_id: str) -> bool: ...
    def finish(self, job_id: str, state: str) -> None: ...


class RedisJobStore:
    """A job's records in Redis."""

    def __init__(self, client: Any) -> None:
        self.client = client  # decoding responses to str

    @classmethod
    def from_url(cls, url: RedisAddress | str) -> RedisJobStore:
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

    def planned(self, job_id: str, add: list[Any], drop: list[Any] | None = None) -> None:
        pipe = self.client.pipeline()  # one transaction: the plan always tiles the input
        if add:
            pipe.hset(keys.job_plan(job_id), mapping={str(c.id): c.plan_entry() for c in add})
        if drop:
            pipe.hdel(keys.job_plan(job_id), *[str(c.id) for c in drop])
        pipe.execute()

    def written(self, job_id: str, chunk: Any, items: int, out_bytes: int) -> None:
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


class InMemoryJobStore:
    """A job's records in memory: the double for tests (``put_chunk`` stands in for a worker)."""

    def __init__(self) -> None:
        self.meta: dict[str, dict[str, Any]] = {}
        self.created: dict[str, float] = {}
        self.plans: dict[str, dict[int, dict[str, Any]]] = {}
        self.chunks: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.cost_log: dict[str, list[dict[str, Any]]] = {}
        self.cancels: set[str] = set()

    def create(self, job_id: str, meta: Mapping[str, Any]) -> None:
        self.meta.setdefault(job_id, {}).update(_copy(meta))
        self.created[job_id] = time.time()

    def get(self, job_id: str) -> dict[str, Any] | None:
        meta = self.meta.get(job_id)
        return _copy(meta) if meta else None

    def update(self, job_id: str, **fields: Any) -> None:
        self.meta.setdefault(job_id, {}).update(_copy(fields))

    def jobs(self, limit: int = 20) -> list[str]:
        return sorted(self.created, key=lambda j: self.created[j], reverse=True)[:limit]

    def plan(self, job_id: str) -> list[dict[str, Any]]:
        entries = [{"id": k, **v} for k, v in self.plans.get(job_id, {}).items()]
        return sorted(entries, key=lambda e: e["first"])

    def planned(self, job_id: str, add: list[Any], drop: list[Any] | None = None) -> None:
        plan = self.plans.setdefault(job_id, {})
        for c in add:
            plan[c.id] = json.loads(c.plan_entry())
        for c in drop or []:
            plan.pop(c.id, None)

    def written(self, job_id: str, chunk: Any, items: int, out_bytes: int) -> None:
        self.update(job_id, items_written=items, out_bytes=out_bytes, updated_at=time.time())
        self.plans.get(job_id, {}).pop(chunk.id, None)
        self.chunks.pop((job_id, chunk.id), None)

    def put_chunk(self, job_id: str, chunk_id: int, records: list[dict[str, Any]]) -> None:
        """What a worker does when a chunk is analysed."""
        self.chunks[(job_id, chunk_id)] = _copy(records)

    def chunk_records(self, job_id: str, chunk_id: int) -> list[dict[str, Any]] | None:
        records = self.chunks.get((job_id, chunk_id))
        return _copy(records) if records is not None else None

    def cost(self, job_id: str, cost: Mapping[str, Any]) -> None:
        self.cost_log.setdefault(job_id, []).append(_copy(cost))

    def costs(self, job_id: str) -> list[dict[str, Any]]:
        costs: list[dict[str, Any]] = _copy(self.cost_log.get(job_id, []))
        return costs

    def cancel(self, job_id: str) -> None:
        self.cancels.add(job_id)
        self.update(job_id, state="cancelled")

    def cancelled(self, job_id: str) -> bool:
        return job_id in self.cancels

    def finish(self, job_id: str, state: str) -> None:
        self.update(job_id, state=state, finished_at=time.time())


def _copy(value: Any) -> Any:
    """What a round trip through the store gives back: JSON's values, never the caller's."""
    return json.loads(json.dumps(value))
