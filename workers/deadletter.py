"""Dead-letter records: every rejected input is kept with its reason and counted."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, Protocol

import redis

from broker_config import keys
from broker_config.app import settings_of
from broker_config.redis_url import RedisAddress, address


class DeadLetterStore(Protocol):
    """Where rejected inputs go. ``record`` never raises for a bad record."""

    def record(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Keep these dead-letter records and count them by reason."""

    def counts(self) -> dict[str, int]:
        """Records kept so far by reason code, with ``total``."""

    def latest(self, n: int = 10) -> list[dict[str, Any]]:
        """The newest ``n`` records, newest first."""


class RedisDeadLetterStore:
    """Dead letters in Redis: a capped list of JSON records and a hash of counts.

    Args:
        client: a Redis client.
        keep: how many records the list keeps; counts are never trimmed.
    """

    def __init__(self, client: redis.Redis, keep: int = 100_000) -> None:
        self._client = client
        self._keep = keep

    @classmethod
    def from_url(cls, url: RedisAddress | str, keep: int = 100_000) -> RedisDeadLetterStore:
        """A store on the Redis at ``url`` (a plain URL, or an address with Sentinel options)."""
        return cls(address(url).client(socket_timeout=10), keep)

    def record(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Push the records and bump their counts in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        n = 0
        for rec in records:
            pipe.lpush(keys.DEADLETTER, _json(rec))
            pipe.hincrby(keys.DEADLETTER_COUNTS, str(rec.get("reason", "unknown")), 1)
            n += 1
        if n:
            pipe.hincrby(keys.DEADLETTER_COUNTS, "total", n)
            pipe.ltrim(keys.DEADLETTER, 0, self._keep - 1)
            pipe.execute()

    def counts(self) -> dict[str, int]:
        """Counts by reason code, with ``total``."""
        raw: dict[bytes, bytes] = self._client.hgetall(keys.DEADLETTER_COUNTS)  # type: ignore[assignment]
        return {"total": 0, **{k.decode(): int(v) for k, v in raw.items()}}

    def latest(self, n: int = 10) -> list[dict[str, Any]]:
        """The newest records, newest first."""
        return [json.loads(r) for r in self._client.lrange(keys.DEADLETTER, 0, n - 1)]


def _json(record: Mapping[str, Any]) -> str:
    """A record as stored: JSON, anything that is not JSON (bytes, say) as its text."""
    return json.dumps(record, ensure_ascii=False, default=str)


def store_of(app: Any) -> RedisDeadLetterStore:
    """The dead-letter store of a host app's settings (one client per process)."""
    settings = settings_of(app)
    return _cached(settings.store, settings.deadletter_keep)


@cache
def _cached(url: RedisAddress, keep: int) -> RedisDeadLetterStore:
    # redis-py reconnects after a fork or a broker restart: one client serves a process.
    return RedisDeadLetterStore.from_url(url, keep)


class InMemoryDeadLetterStore:
    """A dead-letter store in a list, for unit tests and the simulator.

    Args:
        keep: how many records the list keeps; counts are never trimmed.
    """

    def __init__(self, keep: int = 100_000) -> None:
        self.records: list[dict[str, Any]] = []
        self._keep = keep
        self._counts: Counter[str] = Counter()

    def record(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Keep the records (as they would come back from JSON) and count them."""
        for rec in records:
            self.records.append(json.loads(_json(rec)))
            self._counts[str(rec.get("reason", "unknown"))] += 1
            self._counts["total"] += 1
        del self.records[:-self._keep]

    def counts(self) -> dict[str, int]:
        """Counts by reason code, with ``total``."""
        return {"total": 0, **self._counts}

    def latest(self, n: int = 10) -> list[dict[str, Any]]:
        """The newest records, newest first."""
        return list(reversed(self.records[-n:]))
