"""Where the checker keeps worker states and the audit log: Redis, or memory for tests."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import redis

from broker_config import keys
from healthcheck.errors import StoreUnavailable
from healthcheck.policy import Cause, State, WorkerHealth

#: Audit records kept (Redis trims the stream to about this many).
AUDIT_KEEP = 100_000


def to_dict(w: WorkerHealth) -> dict[str, Any]:
    """A worker's health as plain JSON-ready data."""
    data = dataclasses.asdict(w)
    data["state"], data["cause"] = w.state.value, w.cause.value
    data["resume"] = w.resume.value if w.resume else None
    data["queues"] = list(w.queues)
    return data


def from_dict(data: Mapping[str, Any]) -> WorkerHealth:
    """The inverse of ``to_dict``; unknown fields are ignored.

    Raises:
        ValueError: a field has an impossible value.
    """
    known = {f.name for f in dataclasses.fields(WorkerHealth)}
    values = {k: v for k, v in data.items() if k in known}
    values["state"] = State(values.get("state", "HEALTHY"))
    values["cause"] = Cause(values.get("cause", ""))
    values["resume"] = State(values["resume"]) if values.get("resume") else None
    values["queues"] = tuple(values.get("queues", ()))
    return WorkerHealth(**values)


class HealthStore(Protocol):
    """The checker's memory. Every method raises StoreUnavailable when the store is down."""

    def load(self) -> dict[str, WorkerHealth]:
        """Every stored worker's health."""

    def get(self, worker: str) -> WorkerHealth | None:
        """One worker's stored health."""

    def save(self, workers: Iterable[WorkerHealth]) -> None:
        """Store these workers' health."""

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add records to the audit log."""

    def history(self, worker: str | None = None, since: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        """Audit records, oldest first (the newest ``limit`` of them)."""

    def save_reports(self, reports: Mapping[str, Mapping[str, Any]]) -> None:
        """Keep each worker's last report summary (for ``fleet status``)."""

    def reports(self) -> dict[str, dict[str, Any]]:
        """Every worker's last report summary."""

    def take_requests(self, limit: int = 100) -> list[dict[str, Any]]:
        """Operators' requests waiting for the checker, oldest first (removed from the queue)."""

    def reply(self, request_id: str, answer: Mapping[str, Any]) -> None:
        """Answer one operator request."""

    def close_gate(self, worker: str, reason: str) -> None:
        """Hold ``worker`` out: its pool processes refuse work-queue tasks from now on."""

    def open_gate(self, worker: str) -> None:
        """Let ``worker``'s pool processes start work-queue tasks again."""


class RedisHealthStore:
    """States in a hash, the audit log in a capped stream.

    Args:
        client: a Redis client.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    @classmethod
    def from_url(cls, url: str) -> RedisHealthStore:
        """A store on the Redis at ``url``."""
        # The socket timeout outlasts the longest BLPOP this store makes (operator requests: 5 s).
        return cls(redis.Redis.from_url(url, socket_timeout=15, socket_connect_timeout=5,
                                        health_check_interval=10))

    def load(self) -> dict[str, WorkerHealth]:
        raw = self._call(self._client.hgetall, keys.WORKERS)
        return {k.decode(): from_dict(json.loads(v)) for k, v in raw.items()}

    def get(self, worker: str) -> WorkerHealth | None:
        raw = self._call(self._client.hget, keys.WORKERS, worker)
        return from_dict(json.loads(raw)) if raw else None

    def save(self, workers: Iterable[WorkerHealth]) -> None:
        mapping = {w.name: json.dumps(to_dict(w)) for w in workers}
        if mapping:
            self._call(self._client.hset, keys.WORKERS, mapping=mapping)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        n = 0
        for rec in records:
            pipe.xadd(keys.AUDIT, {"json": json.dumps(rec, default=str)}, maxlen=AUDIT_KEEP,
                      approximate=True)
            n += 1
        if n:
            self._call(pipe.execute)

    def history(self, worker: str | None = None, since: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        low = f"{int(since * 1000)}-0" if since else "-"
        entries = self._call(self._client.xrevrange, keys.AUDIT, "+", low,
                             None if worker else limit)
        records = [json.loads(fields[b"json"]) for _, fields in entries]
        if worker:
            records = [r for r in records if r.get("worker") == worker][:limit]
        return list(reversed(records))

    def save_reports(self, reports: Mapping[str, Mapping[str, Any]]) -> None:
        if reports:
            self._call(self._client.hset, keys.REPORTS,
                       mapping={k: json.dumps(v, default=str) for k, v in reports.items()})

    def reports(self) -> dict[str, dict[str, Any]]:
        raw = self._call(self._client.hgetall, keys.REPORTS)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def take_requests(self, limit: int = 100) -> list[dict[str, Any]]:
        raw = self._call(self._client.rpop, keys.OPERATOR_REQUESTS, limit) or []
        requests = []
        for item in raw:
            try:
                value = json.loads(item)
            except ValueError:
                continue
            if isinstance(value, dict):
                requests.append(value)
        return requests

    def ask(self, request: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        """Queue an operator request and wait for the checker's answer (None: no answer).

        An unanswered request is taken back, so that a checker starting later does not act on
        it unasked.
        """
        payload = json.dumps(request, default=str)
        self._call(self._client.lpush, keys.OPERATOR_REQUESTS, payload)
        got = self._call(self._client.blpop, [keys.operator_reply(str(request["id"]))],
                         timeout=timeout)
        if got is None:
            self._call(self._client.lrem, keys.OPERATOR_REQUESTS, 1, payload)
            return None
        answer: dict[str, Any] = json.loads(got[1])
        return answer

    def reply(self, request_id: str, answer: Mapping[str, Any]) -> None:
        key = keys.operator_reply(request_id)
        pipe = self._client.pipeline()
        pipe.rpush(key, json.dumps(answer, default=str))
        pipe.expire(key, 60)
        self._call(pipe.execute)

    def close_gate(self, worker: str, reason: str) -> None:
        self._call(self._client.set, keys.gate(worker), reason)

    def open_gate(self, worker: str) -> None:
        self._call(self._client.delete, keys.gate(worker))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc


class InMemoryHealthStore:
    """The same contract in memory, for unit tests and the simulator."""

    def __init__(self) -> None:
        self.workers: dict[str, dict[str, Any]] = {}
        self.audit: list[dict[str, Any]] = []
        self.gates: dict[str, str] = {}
        self.last_reports: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.replies: dict[str, dict[str, Any]] = {}

    def load(self) -> dict[str, WorkerHealth]:
        return {k: from_dict(v) for k, v in self.workers.items()}

    def get(self, worker: str) -> WorkerHealth | None:
        data = self.workers.get(worker)
        return from_dict(data) if data else None

    def save(self, workers: Iterable[WorkerHealth]) -> None:
        for w in workers:
            self.workers[w.name] = to_dict(w)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.audit.extend(dict(r) for r in records)

    def history(self, worker: str | None = None, since: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        records = [r for r in self.audit if (worker is None or r.get("worker") == worker)
                   and (since is None or r.get("at", 0) >= since)]
        return records[-limit:]

    def close_gate(self, worker: str, reason: str) -> None:
        self.gates[worker] = reason

    def open_gate(self, worker: str) -> None:
        self.gates.pop(worker, None)

    def save_reports(self, reports: Mapping[str, Mapping[str, Any]]) -> None:
        self.last_reports.update({k: dict(v) for k, v in reports.items()})

    def reports(self) -> dict[str, dict[str, Any]]:
        return dict(self.last_reports)

    def take_requests(self, limit: int = 100) -> list[dict[str, Any]]:
        taken, self.requests = self.requests[:limit], self.requests[limit:]
        return taken

    def reply(self, request_id: str, answer: Mapping[str, Any]) -> None:
        self.replies[request_id] = dict(answer)
