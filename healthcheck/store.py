"""Where the checker keeps worker states and the audit log: Redis, or memory for tests."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import redis

from broker_config import keys
from broker_config.signing import RedisNonces
from healthcheck.errors import LeaseLost, StoreUnavailable
from healthcheck.policy import Cause, State, WorkerHealth

#: Audit records kept (Redis trims the stream to about this many).
AUDIT_KEEP = 100_000

#: What a fenced script returns when the caller's token no longer holds the lease.
FENCED = b"fenced"
#: Every fenced script starts so: KEYS[1] is the lease, ARGV[1] the caller's token ("": none).
_FENCE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'fenced' end
"""
#: States, audit records and report summaries in one step: readers never see a state
#: without the record of how it came about.
COMMIT = _FENCE + """
local i = 3
local n = tonumber(ARGV[i])
for j = 1, n do redis.call('HSET', KEYS[2], ARGV[i + 2 * j - 1], ARGV[i + 2 * j]) end
i = i + 2 * n + 1
n = tonumber(ARGV[i])
for j = 1, n do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'json', ARGV[i + j])
end
i = i + n + 1
n = tonumber(ARGV[i])
for j = 1, n do redis.call('HSET', KEYS[4], ARGV[i + 2 * j - 1], ARGV[i + 2 * j]) end
return 'ok'
"""
GATE = _FENCE + """
if ARGV[2] == 'close' then redis.call('SET', KEYS[2], ARGV[3]) else redis.call('DEL', KEYS[2]) end
return 'ok'
"""
TAKE = _FENCE + """
return redis.call('RPOP', KEYS[2], ARGV[2])
"""
#: Renew the caller's lease, or take a free one under a new epoch; the leader afterwards.
LEASE = """
local current = redis.call('GET', KEYS[1])
if current and current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return current
end
if current then return current end
local token = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[2]
redis.call('SET', KEYS[1], token, 'PX', ARGV[3])
return token
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 'ok'
"""


def to_dict(w: WorkerHealth) -> dict[str, Any]:
    """A worker's health as plain JSON-ready data."""
    data = dataclasses.asdict(w)
    data["state"], data["cause"] = w.state.value, w.cause.value
    data["resume"] = w.resume.value if w.resume else None
    data["queues"] = list(w.queues)
    data["consuming"] = None if w.consuming is None else list(w.consuming)
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
    consuming = values.get("consuming")
    values["consuming"] = None if consuming is None else tuple(consuming)
    return WorkerHealth(**values)


class HealthStore(Protocol):
    """The checker's memory. Every method raises StoreUnavailable when the store is down."""

    def load(self) -> dict[str, WorkerHealth]:
        """Every stored worker's health."""

    def get(self, worker: str) -> WorkerHealth | None:
        """One worker's stored health."""

    def commit(self, workers: Iterable[WorkerHealth], records: Iterable[Mapping[str, Any]] = (),
               reports: Mapping[str, Mapping[str, Any]] | None = None, fence: str = "") -> None:
        """Store workers' health, audit records and report summaries, all or nothing.

        With a ``fence`` (a lease token) the write happens only while that token holds the
        lease; otherwise LeaseLost is raised and nothing is written.
        """

    def save(self, workers: Iterable[WorkerHealth]) -> None:
        """Store these workers' health (unfenced: tools and tests)."""

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add records to the audit log (unfenced: tools and tests)."""

    def history(self, worker: str | None = None, since: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        """Audit records, oldest first (the newest ``limit`` of them)."""

    def reports(self) -> dict[str, dict[str, Any]]:
        """Every worker's last report summary."""

    def take_requests(self, limit: int = 100, fence: str = "") -> list[dict[str, Any]]:
        """Operators' requests waiting for the checker, oldest first (removed from the queue)."""

    def reply(self, request_id: str, answer: Mapping[str, Any]) -> None:
        """Answer one operator request."""

    def close_gate(self, worker: str, reason: str, fence: str = "") -> None:
        """Hold ``worker`` out: its pool processes refuse work-queue tasks from now on."""

    def open_gate(self, worker: str, fence: str = "") -> None:
        """Let ``worker``'s pool processes start work-queue tasks again."""

    def lease(self, candidate: str, ttl_s: float, token: str = "") -> str | None:
        """Take or renew the checker lease; the leading token afterwards (None: nobody leads).

        ``token`` is the caller's current token, renewed if it still leads; otherwise a free
        lease is taken under a new epoch (``"<epoch>:<candidate>"``).
        """

    def release(self, token: str) -> None:
        """Give the lease up, if ``token`` still holds it."""

    def epoch(self) -> int:
        """The fencing epoch: how many times the lease has been taken."""


class RedisHealthStore:
    """States in a hash, the audit log in a capped stream.

    Args:
        client: a Redis client.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._commit = client.register_script(COMMIT)
        self._gate = client.register_script(GATE)
        self._take = client.register_script(TAKE)
        self._lease = client.register_script(LEASE)
        self._release = client.register_script(RELEASE)

    @classmethod
    def from_url(cls, url: str) -> RedisHealthStore:
        """A store on the Redis at ``url``."""
        # The socket timeout outlasts the longest BLPOP this store makes (operator requests: 5 s).
        return cls(redis.Redis.from_url(url, socket_timeout=15, socket_connect_timeout=5,
                                        health_check_interval=10))

    def nonces(self) -> RedisNonces:
        """The fleet-wide memory of used control nonces, on this store's connection."""
        return RedisNonces(self._client)

    def load(self) -> dict[str, WorkerHealth]:
        raw = self._call(self._client.hgetall, keys.WORKERS)
        return {k.decode(): from_dict(json.loads(v)) for k, v in raw.items()}

    def get(self, worker: str) -> WorkerHealth | None:
        raw = self._call(self._client.hget, keys.WORKERS, worker)
        return from_dict(json.loads(raw)) if raw else None

    def commit(self, workers: Iterable[WorkerHealth], records: Iterable[Mapping[str, Any]] = (),
               reports: Mapping[str, Mapping[str, Any]] | None = None, fence: str = "") -> None:
        states = [x for w in workers for x in (w.name, json.dumps(to_dict(w)))]
        audit = [json.dumps(r, default=str) for r in records]
        summaries = [x for k, v in (reports or {}).items() for x in (k, json.dumps(v, default=str))]
        if not (states or audit or summaries):
            return
        args = [fence, AUDIT_KEEP, len(states) // 2, *states, len(audit), *audit,
                len(summaries) // 2, *summaries]
        self._fenced(self._commit, [keys.LEADER, keys.WORKERS, keys.AUDIT, keys.REPORTS], args)

    def save(self, workers: Iterable[WorkerHealth]) -> None:
        self.commit(workers)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.commit((), records)

    def history(self, worker: str | None = None, since: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        low = f"{int(since * 1000)}-0" if since else "-"
        entries = self._call(self._client.xrevrange, keys.AUDIT, "+", low,
                             None if worker else limit)
        records = [json.loads(fields[b"json"]) for _, fields in entries]
        if worker:
            records = [r for r in records if r.get("worker") == worker][:limit]
        return list(reversed(records))

    def reports(self) -> dict[str, dict[str, Any]]:
        raw = self._call(self._client.hgetall, keys.REPORTS)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def take_requests(self, limit: int = 100, fence: str = "") -> list[dict[str, Any]]:
        raw = self._fenced(self._take, [keys.LEADER, keys.OPERATOR_REQUESTS], [fence, limit]) or []
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

    def close_gate(self, worker: str, reason: str, fence: str = "") -> None:
        self._fenced(self._gate, [keys.LEADER, keys.gate(worker)], [fence, "close", reason])

    def open_gate(self, worker: str, fence: str = "") -> None:
        self._fenced(self._gate, [keys.LEADER, keys.gate(worker)], [fence, "open", ""])

    def lease(self, candidate: str, ttl_s: float, token: str = "") -> str | None:
        got = self._call(self._lease, keys=[keys.LEADER, keys.EPOCH],
                         args=[token, candidate, max(1, int(ttl_s * 1000))])
        return got.decode() if got else None

    def release(self, token: str) -> None:
        self._call(self._release, keys=[keys.LEADER], args=[token])

    def epoch(self) -> int:
        return int(self._call(self._client.get, keys.EPOCH) or 0)

    def _fenced(self, script: Any, keys_: list[str], args: list[Any]) -> Any:
        result = self._call(script, keys=keys_, args=args)
        if result == FENCED:
            raise LeaseLost(f"lease lost: {args[0]} no longer leads")
        return result

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc


class InMemoryHealthStore:
    """The same contract in memory, for unit tests and the simulator.

    Args:
        clock: seconds, for the lease's TTL.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.workers: dict[str, dict[str, Any]] = {}
        self.audit: list[dict[str, Any]] = []
        self.gates: dict[str, str] = {}
        self.last_reports: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.replies: dict[str, dict[str, Any]] = {}
        self.leader: str | None = None
        self.leader_until = 0.0
        self.epochs = 0

    def load(self) -> dict[str, WorkerHealth]:
        return {k: from_dict(v) for k, v in self.workers.items()}

    def get(self, worker: str) -> WorkerHealth | None:
        data = self.workers.get(worker)
        return from_dict(data) if data else None

    def commit(self, workers: Iterable[WorkerHealth], records: Iterable[Mapping[str, Any]] = (),
               reports: Mapping[str, Mapping[str, Any]] | None = None, fence: str = "") -> None:
        self._check(fence)
        for w in workers:
            self.workers[w.name] = to_dict(w)
        self.audit.extend(dict(r) for r in records)
        self.last_reports.update({k: dict(v) for k, v in (reports or {}).items()})

    def save(self, workers: Iterable[WorkerHealth]) -> None:
        self.commit(workers)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.commit((), records)

    def history(self, worker: str | None = None, since: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        records = [r for r in self.audit if (worker is None or r.get("worker") == worker)
                   and (since is None or r.get("at", 0) >= since)]
        return records[-limit:]

    def close_gate(self, worker: str, reason: str, fence: str = "") -> None:
        self._check(fence)
        self.gates[worker] = reason

    def open_gate(self, worker: str, fence: str = "") -> None:
        self._check(fence)
        self.gates.pop(worker, None)

    def reports(self) -> dict[str, dict[str, Any]]:
        return dict(self.last_reports)

    def take_requests(self, limit: int = 100, fence: str = "") -> list[dict[str, Any]]:
        self._check(fence)
        taken, self.requests = self.requests[:limit], self.requests[limit:]
        return taken

    def reply(self, request_id: str, answer: Mapping[str, Any]) -> None:
        self.replies[request_id] = dict(answer)

    def lease(self, candidate: str, ttl_s: float, token: str = "") -> str | None:
        current = self._current()
        if current is not None and current != token:
            return current
        if current is None:
            self.epochs += 1
            self.leader = f"{self.epochs}:{candidate}"
        self.leader_until = self.clock() + ttl_s
        return self.leader

    def release(self, token: str) -> None:
        if self._current() == token:
            self.leader = None

    def epoch(self) -> int:
        return self.epochs

    def _current(self) -> str | None:
        if self.leader is not None and self.clock() >= self.leader_until:
            self.leader = None
        return self.leader

    def _check(self, fence: str) -> None:
        if fence and self._current() != fence:
            raise LeaseLost(f"lease lost: {fence} no longer leads")
