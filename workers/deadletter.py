"""Dead-letter records: every rejected input is kept with its reason and counted.

Writing one never keeps a task, the worker's event loop or ``ingest`` waiting on a store that
does not answer (paused, gone, failing over): ``Aside`` writes at once on a connection with the
per-task timeout (the gate's, 50 ms), and when that fails keeps the records in memory for a
background thread, which writes them, oldest first and with patience, once the store answers
again. A wait of a second there was a second in which the fleet finished nothing: ingest stops
feeding while it waits, and a worker's event loop stops dispatching.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any, Protocol

import redis

from broker_config import keys
from broker_config.app import settings_of
from broker_config.logs import get_logger
from broker_config.redis_url import RedisAddress, address

log = get_logger(__name__)

#: Records a process keeps while the store is away; beyond it the oldest go (and are counted).
PENDING_MAX = 10_000
#: Seconds between the background writer's tries while the store does not answer (doubling).
RETRY_S = (0.25, 5.0)
#: The longest a caller (a task, a worker's event loop, ingest's feed) waits for one write
#: before its records are set aside: a healthy store answers in well under a millisecond.
WRITE_TIMEOUT_S = 0.05
#: The longest the background writer waits for one write of the records set aside (up to a
#: thousand at a time, to a store that has just come back).
LATE_WRITE_TIMEOUT_S = 5.0
#: What a store that is away raises.
STORE_ERRORS = (redis.RedisError, OSError)
#: Seconds a record's id is remembered (a write repeated later than this counts twice).
SEEN_S = 3600
#: KEYS: the list, the counts. ARGV: keep, seconds an id is remembered, the ids' key prefix,
#: then (id, reason, JSON) per record. Returns how many were new.
RECORD_SCRIPT = """
local n = 0
for i = 4, #ARGV, 3 do
  if redis.call('SET', ARGV[3] .. ARGV[i], '1', 'NX', 'EX', ARGV[2]) then
    redis.call('LPUSH', KEYS[1], ARGV[i + 2])
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
    n = n + 1
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[2], 'total', n)
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
end
return n
"""


class DeadLetterStore(Protocol):
    """Where rejected inputs go. ``record`` never raises for a bad record."""

    def record(self, records: Iterable[Mapping[str, Any]],
               ids: Sequence[str] | None = None) -> None:
        """Keep these dead-letter records and count them by reason; a record whose id (one
        per record in ``ids``) was kept before is not kept again."""

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
        self._record = client.register_script(RECORD_SCRIPT)

    @classmethod
    def from_url(cls, url: RedisAddress | str, keep: int = 100_000,
                 timeout: float = 10.0) -> RedisDeadLetterStore:
        """A store on the Redis at ``url`` (a plain URL, or an address with Sentinel options);
        ``timeout``: the longest one command waits."""
        return cls(address(url).client(socket_timeout=timeout,
                                       socket_connect_timeout=min(timeout, 5.0)), keep)

    def record(self, records: Iterable[Mapping[str, Any]],
               ids: Sequence[str] | None = None) -> None:
        """Push the records and bump their counts in one script, each record once by its id
        (a fresh one per record when ``ids`` is None)."""
        batch = list(records)
        if not batch:
            return
        ids = list(ids) if ids is not None else [uuid.uuid4().hex for _ in batch]
        argv: list[str | int] = [self._keep, SEEN_S, keys.DEADLETTER_SEEN]
        for rec, record_id in zip(batch, ids, strict=True):
            argv += [record_id, str(rec.get("reason", "unknown")), _json(rec)]
        self._record(keys=[keys.DEADLETTER, keys.DEADLETTER_COUNTS], args=argv)

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


class Aside:
    """A dead-letter store that is never waited on.

    Each write goes to ``store`` at once; when the store does not answer (or records are
    already waiting), the records wait in this process's memory instead, and a background
    thread writes them to ``late`` (the same store, with a longer timeout; ``store`` when not
    given) when it answers again, oldest first. At most ``pending_max`` wait: beyond that the
    oldest are dropped, counted in ``dropped`` and logged (each one was also answered to its
    producer as a rejected result). Safe across fork: a child starts with nothing waiting.
    """

    def __init__(self, store: DeadLetterStore, pending_max: int = PENDING_MAX,
                 late: DeadLetterStore | None = None) -> None:
        self.store = store
        self.late = late or store
        self.pending_max = pending_max
        self.dropped = 0
        self._pid = -1
        self._own()

    def _own(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._pending: deque[tuple[str, Mapping[str, Any]]] = deque()
            self._writer: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """Records set aside, not yet written."""
        self._own()
        return len(self._pending)

    @classmethod
    def from_url(cls, url: RedisAddress | str, keep: int = 100_000) -> Aside:
        """Dead letters on the Redis at ``url``: written at once within ``WRITE_TIMEOUT_S``,
        set aside and written late within ``LATE_WRITE_TIMEOUT_S``."""
        return cls(RedisDeadLetterStore.from_url(url, keep, timeout=WRITE_TIMEOUT_S),
                   late=RedisDeadLetterStore.from_url(url, keep, timeout=LATE_WRITE_TIMEOUT_S))

    def record(self, records: Iterable[Mapping[str, Any]],
               ids: Sequence[str] | None = None) -> None:
        """Write the records, or set them aside when the store does not answer. Each has an
        id (a fresh one unless ``ids`` gives it): a write that timed out may still have
        happened, and writing it again then keeps it once."""
        listed = list(records)
        batch = list(zip(ids or [uuid.uuid4().hex for _ in listed], listed, strict=True))
        if not batch:
            return
        self._own()
        with self._lock:
            if self._pending:  # the store is away: after the ones waiting, in order
                self._set_aside(batch)
                return
        try:
            self.store.record([r for _, r in batch], [i for i, _ in batch])
        except STORE_ERRORS as exc:
            log.warning("dead_letters_set_aside", error=str(exc), records=len(batch))
            with self._lock:
                self._set_aside(batch)

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the records set aside to be written; how many
        are still waiting."""
        deadline = time.monotonic() + timeout
        while self.waiting and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.waiting

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def latest(self, n: int = 10) -> list[dict[str, Any]]:
        return self.store.latest(n)

    def _set_aside(self, batch: list[tuple[str, Mapping[str, Any]]]) -> None:
        self._pending.extend(batch)
        over = len(self._pending) - self.pending_max
        if over > 0:
            for _ in range(over):
                self._pending.popleft()
            self.dropped += over
            log.error("dead_letters_dropped", records=over, kept=self.pending_max)
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_aside, daemon=True,
                                            name="dead-letters-aside")
            self._writer.start()

    def _write_aside(self) -> None:
        delay = RETRY_S[0]
        while True:
            time.sleep(delay)
            with self._lock:
                batch = list(self._pending)[:1000]
                if not batch:
                    self._writer = None
                    return
            try:
                self.late.record([r for _, r in batch], [i for i, _ in batch])
            except STORE_ERRORS:
                delay = min(delay * 2, RETRY_S[1])
                continue
            with self._lock:  # those written (some may have been dropped meanwhile)
                written = {i for i, _ in batch}
                while self._pending and self._pending[0][0] in written:
                    self._pending.popleft()
            log.info("dead_letters_written_late", records=len(batch))
            delay = 0.0


def store_of(app: Any) -> Aside:
    """The dead-letter store of a host app's settings (one client per process), never
    waited on for longer than ``WRITE_TIMEOUT_S`` (``Aside``)."""
    settings = settings_of(app)
    return _cached(settings.store, settings.deadletter_keep)


@cache
def _cached(url: RedisAddress, keep: int) -> Aside:
    # redis-py reconnects after a fork or a broker restart: one client serves a process.
    return Aside.from_url(url, keep)


class InMemoryDeadLetterStore:
    """A dead-letter store in a list, for unit tests and the simulator.

    Args:
        keep: how many records the list keeps; counts are never trimmed.
    """

    def __init__(self, keep: int = 100_000) -> None:
        self.records: list[dict[str, Any]] = []
        self._keep = keep
        self._counts: Counter[str] = Counter()
        self._seen: set[str] = set()

    def record(self, records: Iterable[Mapping[str, Any]],
               ids: Sequence[str] | None = None) -> None:
        """Keep the records (as they would come back from JSON) and count them, each id once."""
        batch = list(records)
        for n, rec in enumerate(batch):
            if ids is not None:
                if ids[n] in self._seen:
                    continue
                self._seen.add(ids[n])
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
