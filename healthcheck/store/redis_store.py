"""The store on Redis: states in a hash, the audit log in a capped stream, fenced scripts.

The scripts live beside this file (``lua/``); each fenced one begins with ``lua/fence.lua``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import redis

from broker_config import keys
from broker_config.signing import RedisNonces
from healthcheck.errors import LeaseLost, StoreUnavailable
from healthcheck.policy import WorkerHealth
from healthcheck.store.codec import UnfencedWrites, from_dict, recorded_at, to_dict

#: Audit records kept (Redis trims the stream to about this many).
AUDIT_KEEP = 100_000
#: What a fenced script returns when the caller's token no longer holds the lease.
FENCED = b"fenced"
#: How far the Redis server's clock (the stream's ids) may be behind a record's own ``at``:
#: ``history(since=)`` reads the stream from this much earlier, then goes by ``at``.
CLOCK_SKEW_S = 300.0


def script(name: str, fenced: bool = False) -> str:
    """The Lua source of ``lua/<name>.lua`` (behind the fence check when ``fenced``)."""
    folder = resources.files("healthcheck.store") / "lua"
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    return ((folder / "fence.lua").read_text(encoding="utf-8") + body) if fenced else body


class RedisHealthStore(UnfencedWrites):
    """Every port of ``healthcheck.store.ports`` on one Redis.

    Args:
        client: a Redis client.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._commit = client.register_script(script("commit", fenced=True))
        self._gate = client.register_script(script("gate", fenced=True))
        self._take = client.register_script(script("take_requests", fenced=True))
        self._lease = client.register_script(script("lease"))
        self._release = client.register_script(script("release"))

    @classmethod
    def from_url(cls, url: str) -> RedisHealthStore:
        """A store on the Redis at ``url``."""
        # The socket timeout outlasts the longest BLPOP this store makes (operator requests: 5 s).
        return cls(redis.Redis.from_url(url, socket_timeout=15, socket_connect_timeout=5,
                                        health_check_interval=10))

    def nonces(self) -> RedisNonces:
        """The fleet-wide memory of used control nonces, on this store's connection."""
        return RedisNonces(self._client)

    # --- states, audit log, reports ------------------------------------------------------

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

    def history(self, worker: str | None = None, since: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        low = f"{max(0, int((since - CLOCK_SKEW_S) * 1000))}-0" if since is not None else "-"
        whole = worker is None and since is None
        entries = self._call(self._client.xrevrange, keys.AUDIT, "+", low,
                             limit if whole else None)
        records = [json.loads(fields[b"json"]) for _, fields in entries]
        if not whole:
            records = [r for r in records if (worker is None or r.get("worker") == worker)
                       and (since is None or (recorded_at(r) or -1.0) >= since)][:limit]
        return list(reversed(records))

    def reports(self) -> dict[str, dict[str, Any]]:
        raw = self._call(self._client.hgetall, keys.REPORTS)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    # --- gate keys -------------------------------------------------------------------------

    def close_gate(self, worker: str, reason: str, fence: str = "") -> None:
        self._fenced(self._gate, [keys.LEADER, keys.gate(worker)], [fence, "close", reason])

    def open_gate(self, worker: str, fence: str = "") -> None:
        self._fenced(self._gate, [keys.LEADER, keys.gate(worker)], [fence, "open", ""])

    # --- operators' requests ---------------------------------------------------------------

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
        # An unanswered request is taken back, so that a checker starting later does not act
        # on it unasked.
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

    # --- the lease -------------------------------------------------------------------------

    def lease(self, candidate: str, ttl_s: float, token: str = "") -> str | None:
        got = self._call(self._lease, keys=[keys.LEADER, keys.EPOCH],
                         args=[token, candidate, max(1, int(ttl_s * 1000))])
        return got.decode() if got else None

    def release(self, token: str) -> None:
        self._call(self._release, keys=[keys.LEADER], args=[token])

    def epoch(self) -> int:
        return int(self._call(self._client.get, keys.EPOCH) or 0)

    def _fenced(self, script_: Any, keys_: list[str], args: list[Any]) -> Any:
        result = self._call(script_, keys=keys_, args=args)
        if result == FENCED:
            raise LeaseLost(f"lease lost: {args[0]} no longer leads")
        return result

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc}") from exc
