"""The store on Redis: states in a hash, the audit log in a capped stream, fenced scripts.

The scripts live beside this file (``lua/``); each fenced one begins with ``lua/fence.lua``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any

import redis

from broker_config import keys
from broker_config.redis_url import RedisAddress, address
from broker_config.shards import shard_of
from broker_config.signing import RedisNonces
from healthcheck.errors import LeaseLost, StoreUnavailable
from healthcheck.policy import Peers, WorkerHealth
from healthcheck.policy.config import Guard
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
        shard: the shard whose lease fences this store's writes and whose requests it takes.
        shards: how many shards the fleet has (an operator's request goes to its worker's).
    """

    def __init__(self, client: redis.Redis, shard: int = 0, shards: int = 1) -> None:
        self._client = client
        self.shard, self.shards = shard, shards
        self._leader = keys.leader(shard)
        self._commit = client.register_script(script("commit", fenced=True))
        self._gate = client.register_script(script("gate", fenced=True))
        self._take = client.register_script(script("take_requests", fenced=True))
        self._lease = client.register_script(script("lease"))
        self._release = client.register_script(script("release"))

    @classmethod
    def from_url(cls, url: RedisAddress | str, shard: int = 0, shards: int = 1) -> RedisHealthStore:
        """A store on the Redis at ``url`` (a plain URL, or an address with Sentinel options)."""
        # The socket timeout outlasts the longest BLPOP this store makes (operator requests: 5 s).
        return cls(address(url).client(socket_timeout=15, socket_connect_timeout=5,
                                       health_check_interval=10), shard, shards)

    def budget(self) -> RedisGuardBudget:
        """The fleet-wide guard budget, as this store's shard uses it."""
        return RedisGuardBudget(self._client, self.shard, self.shards)

    def nonces(self) -> RedisNonces:
        """The fleet-wide memory of used control nonces, on this store's connection."""
        return RedisNonces(self._client)

    # --- states, audit log, reports ------------------------------------------------------

    def load(self, keep: Callable[[str], bool] | None = None) -> dict[str, WorkerHealth]:
        raw = _call(self._client.hgetall, keys.WORKERS)
        names = ((k.decode(), v) for k, v in raw.items())
        return {name: from_dict(json.loads(v)) for name, v in names if keep is None or keep(name)}

    def get(self, worker: str) -> WorkerHealth | None:
        raw = _call(self._client.hget, keys.WORKERS, worker)
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
        _fenced(self._commit, [self._leader, keys.WORKERS, keys.AUDIT, keys.REPORTS], args)

    def history(self, worker: str | None = None, since: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        low = f"{max(0, int((since - CLOCK_SKEW_S) * 1000))}-0" if since is not None else "-"
        whole = worker is None and since is None
        entries = _call(self._client.xrevrange, keys.AUDIT, "+", low,
                             limit if whole else None)
        records = [json.loads(fields[b"json"]) for _, fields in entries]
        if not whole:
            records = [r for r in records if (worker is None or r.get("worker") == worker)
                       and (since is None or (recorded_at(r) or -1.0) >= since)][:limit]
        return list(reversed(records))

    def reports(self) -> dict[str, dict[str, Any]]:
        raw = _call(self._client.hgetall, keys.REPORTS)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    # --- gate keys -------------------------------------------------------------------------

    def close_gate(self, worker: str, reason: str, fence: str = "",
                   record: Mapping[str, Any] | None = None) -> None:
        self._set_gate(worker, "close", reason, fence, record)

    def open_gate(self, worker: str, fence: str = "",
                  record: Mapping[str, Any] | None = None) -> None:
        self._set_gate(worker, "open", "", fence, record)

    def _set_gate(self, worker: str, how: str, reason: str, fence: str,
                  record: Mapping[str, Any] | None) -> None:
        audit = "" if record is None else json.dumps(record, default=str)
        _fenced(self._gate, [self._leader, keys.gate(worker), keys.AUDIT],
                [fence, how, reason, AUDIT_KEEP, audit])

    # --- operators' requests ---------------------------------------------------------------

    def take_requests(self, limit: int = 100, fence: str = "") -> list[dict[str, Any]]:
        raw = _fenced(self._take, [self._leader, keys.operator_requests(self.shard)],
                           [fence, limit]) or []
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
        waiting = keys.operator_requests(shard_of(str(request.get("worker", "")), self.shards))
        _call(self._client.lpush, waiting, payload)
        got = _call(self._client.blpop, [keys.operator_reply(str(request["id"]))],
                         timeout=timeout)
        if got is None:
            _call(self._client.lrem, waiting, 1, payload)
            return None
        answer: dict[str, Any] = json.loads(got[1])
        return answer

    def forward(self, request: Mapping[str, Any], shard: int) -> None:
        _call(self._client.lpush, keys.operator_requests(shard),
                   json.dumps(request, default=str))

    def reply(self, request_id: str, answer: Mapping[str, Any]) -> None:
        key = keys.operator_reply(request_id)
        pipe = self._client.pipeline()
        pipe.rpush(key, json.dumps(answer, default=str))
        pipe.expire(key, 60)
        _call(pipe.execute)

    # --- the lease -------------------------------------------------------------------------

    def lease(self, candidate: str, ttl_s: float, token: str = "") -> str | None:
        got = _call(self._lease, keys=[self._leader, keys.epoch(self.shard)],
                         args=[token, candidate, max(1, int(ttl_s * 1000))])
        return got.decode() if got else None

    def release(self, token: str) -> None:
        _call(self._release, keys=[self._leader], args=[token])

    def epoch(self) -> int:
        return int(_call(self._client.get, keys.epoch(self.shard)) or 0)

    def leaders(self) -> dict[int, str | None]:
        """Every shard's leading token (None: nobody leads it now)."""
        raw = _call(self._client.mget, [keys.leader(k) for k in range(self.shards)])
        return {k: v.decode() if v else None for k, v in enumerate(raw)}


class RedisGuardBudget:
    """The fleet-wide guard budget (``GuardBudget``) on Redis: each shard's figures in a hash
    its leader writes, its ejections in a sorted set, and one script that admits an ejection
    against all of them at once (``lua/admit.lua``), fenced by the shard's lease.

    Args:
        client: a Redis client.
        shard: this checker's shard.
        shards: how many shards the fleet has.
    """

    def __init__(self, client: redis.Redis, shard: int, shards: int) -> None:
        self._client, self.shard, self.shards = client, shard, shards
        self._admit = client.register_script(script("admit", fenced=True))
        self._publish = client.register_script(script("publish", fenced=True))
        self._figures = [keys.guard(k) for k in range(shards)]
        self._ejections = [keys.guard_ejections(k) for k in range(shards)]

    def admit(self, worker: str, queues: tuple[str, ...], now: float, relapse: bool,
              guard: Guard, fence: str = "") -> str | None:
        args = [fence, self.shards, self.shard, repr(now), f"{guard.window_s:g}",
                repr(guard.max_ejected_fraction), guard.min_ejections,
                repr(guard.max_ejection_rate_fraction), guard.max_ejections_per_window,
                "1" if relapse else "0", f"{worker}:{now!r}", *queues]
        got = _fenced(self._admit, [keys.leader(self.shard), *self._figures, *self._ejections],
                      args)
        return None if got == b"ok" else got.decode()

    def publish(self, figures: Peers, fence: str = "") -> None:
        fields: list[Any] = ["size", figures.size, "out", figures.out, "waiting", figures.waiting]
        for q, n in figures.queue_size.items():
            fields += [f"q:{q}", n]
        for q, n in figures.queue_out.items():
            fields += [f"o:{q}", n]
        _fenced(self._publish, [keys.leader(self.shard), self._figures[self.shard]],
                [fence, *fields])

    def peers(self, now: float, window_s: float) -> Peers:
        others = [k for k in range(self.shards) if k != self.shard]
        pipe = self._client.pipeline(transaction=False)
        for k in others:
            pipe.hgetall(self._figures[k])
            pipe.zcount(self._ejections[k], now - window_s, "+inf")
        raw = _call(pipe.execute)
        return Peers.total(_figures(raw[i], raw[i + 1]) for i in range(0, len(raw), 2))


def _figures(fields: Mapping[bytes, bytes], recent: int) -> Peers:
    size = out = waiting = 0
    queue_size: Counter[str] = Counter()
    queue_out: Counter[str] = Counter()
    for name, value in fields.items():
        key, n = name.decode(), int(value)
        if key.startswith("q:"):
            queue_size[key[2:]] = n
        elif key.startswith("o:"):
            queue_out[key[2:]] = n
        elif key == "size":
            size = n
        elif key == "out":
            out = n
        elif key == "waiting":
            waiting = n
    return Peers(size, out, waiting, int(recent), queue_size, queue_out)


def _fenced(script_: Any, keys_: list[str], args: list[Any]) -> Any:
    """Run a fenced script (``args[0]``: the caller's lease token)."""
    result = _call(script_, keys=keys_, args=args)
    if result == FENCED:
        raise LeaseLost(f"lease lost: {args[0]} no longer leads")
    return result


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"store unavailable: {exc}") from exc
