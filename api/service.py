"""The API process's parts, built once and started together: the dispatcher, the keys, the
backlog watch, the job desk, and the stores they read. The routes (``api.app``) only call it.

It holds no control secret and no way to sign: it reads the checker's records (for the fleet
summary) and writes only its own (messages, keys' counts, jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import structlog

from api.backlog import BacklogWatch
from api.dispatch import Dispatcher
from api.jobs import JobDesk, directory_of
from api.keys import KeyRing, KeyStore, RateLimiter, RedisKeyStore
from api.messages import MessageStore, RedisMessageStore, status_of
from api.metrics import ApiMetrics
from broker_config.app import HostCelery
from broker_config.contract import TWEETS_QUEUE
from broker_config.queues import WORK_QUEUES
from broker_config.settings import Settings
from healthcheck.store import RedisHealthStore
from producer.inflight import BROKEN
from producer.job_store import JobStore, RedisJobStore
from workers.inbound import Limits

log = structlog.get_logger("host.api")

#: How recent the last read of the broker and of the keys must be for /readyz.
FRESH_S = 3.0


@dataclass
class Stores:
    """Where the API's records live (Redis in production; doubles in tests)."""

    messages: MessageStore
    keys: KeyStore
    jobs: JobStore
    client: Any  # the store's client, for idempotency records

    @classmethod
    def redis(cls, settings: Settings) -> Stores:
        client = settings.store.client(decode_responses=True, socket_timeout=5,
                                       socket_connect_timeout=3)
        return cls(RedisMessageStore(client), RedisKeyStore(client), RedisJobStore(client), client)


@dataclass
class ApiService:
    app: HostCelery
    settings: Settings
    stores: Stores
    metrics: ApiMetrics = field(default_factory=ApiMetrics)

    def __post_init__(self) -> None:
        s = self.settings
        self.limits = Limits(s.max_line_bytes, s.max_text_chars, s.max_emoji, s.input_cpu_budget)
        self.keyring = KeyRing(self.stores.keys)
        self.limiter = RateLimiter()
        self.dispatcher = Dispatcher(self.app, self.stores.messages, self.stores.keys,
                                     s.api_batch_window, s.max_batch, s.api_record_ttl,
                                     self.metrics.tally)
        self.backlog = BacklogWatch(self.app, published=lambda: self.dispatcher.published)
        self.desk = JobDesk(self.app, self.stores.jobs, directory_of(s.api_jobs_dir))
        self.health = RedisHealthStore.from_url(s.store, shards=s.checker_shards)
        self._stop = threading.Event()
        self._fleet: tuple[float, dict[str, Any]] = (0.0, {})
        self._keys_asked = 0.0

    # --- life ----------------------------------------------------------------------------

    def start(self) -> None:
        with contextlib.suppress(*BROKEN, redis.RedisError):
            self.keyring.refresh()
        self.dispatcher.start()
        self.backlog.start()
        threading.Thread(target=self._refresh_keys, name="host-api-keys", daemon=True).start()
        with contextlib.suppress(*BROKEN, redis.RedisError):
            resumed = self.desk.resume_all()
            if resumed:
                log.info("api_jobs_resumed", jobs=resumed)

    def stop(self) -> None:
        """After the server stopped taking requests: publish what was handed over and wait for
        the answers the requests still waiting need."""
        self._stop.set()
        self.backlog.stop()
        self.dispatcher.stop(self.settings.api_shutdown_timeout)

    def _refresh_keys(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.keyring.refresh()
            except (*BROKEN, redis.RedisError) as exc:
                log.warning("api_keys_unreadable", error=str(exc))

    # --- what the routes ask ---------------------------------------------------------------

    async def refresh_keys_soon(self) -> None:
        """Read the keys again for a token naming an unknown key: at most four times a second,
        whatever the number of unknown tokens (they cannot make the store busy)."""
        asked = self._keys_asked
        await asyncio.sleep(max(0.0, asked + 0.25 - time.monotonic()))
        if self._keys_asked != asked:
            return  # another request read them meanwhile
        self._keys_asked = time.monotonic()
        with contextlib.suppress(*BROKEN, redis.RedisError):
            await asyncio.to_thread(self.keyring.refresh)

    def problems(self) -> list[str]:
        """Why the API is not ready (empty: ready)."""
        out = []
        if not self.dispatcher.thread.is_alive():
            out.append("the dispatcher stopped")
        if not self.backlog.fresh(FRESH_S):
            out.append(f"the broker does not answer: {self.backlog.error}")
        if time.monotonic() - self.keyring.loaded_at > FRESH_S:
            out.append("the keys could not be read from the store")
        return out

    def backlog_full(self) -> bool:
        """More waits in the tweets queue (and in this process) than HOST_API_BACKLOG_MAX."""
        waiting = self.backlog.waiting(TWEETS_QUEUE) + self.dispatcher.unsent
        return waiting >= self.settings.api_backlog_max or not self.backlog.fresh(FRESH_S)

    def fleet(self) -> dict[str, Any]:
        """States, healthy consumers per queue and backlog, from the checker's records (read at
        most once a second)."""
        at, summary = self._fleet
        if time.monotonic() - at < 1.0:
            return summary
        workers = self.health.load()
        states: dict[str, int] = {}
        for w in workers.values():
            states[w.state.value] = states.get(w.state.value, 0) + 1
        summary = {"workers": states,
                   "healthy_consumers": {q: sum(1 for w in workers.values() if w.consumes(q))
                                         for q in WORK_QUEUES},
                   "backlog": dict(self.backlog.depth),
                   "accepting": not self.backlog_full()}
        self._fleet = (time.monotonic(), summary)
        return summary

    def message(self, message_id: str) -> dict[str, Any] | None:
        """A message's record; a pending one is looked up in the results too (its answer may
        have come while no API process listened)."""
        entry = self.stores.messages.get(message_id)
        if entry is None or entry.get("status") != "pending":
            return entry
        meta = self.app.backend.get_task_meta(entry["task"])
        result = meta.get("result") if meta.get("status") == "SUCCESS" else None
        index = int(entry.get("index", -1))
        if isinstance(result, list) and 0 <= index < len(result):
            record = result[index]
            entry = {**entry, "status": status_of(record), "result": record,
                     "answered_at": time.time()}
            with contextlib.suppress(*BROKEN, redis.RedisError):
                self.stores.messages.put([entry], self.settings.api_record_ttl)
        return entry
