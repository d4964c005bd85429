"""From HTTP requests to batch tasks and back: the API's one thread that talks to the broker.

Requests hand their messages to the dispatcher and wait on futures. The dispatcher gathers
what arrives within ``HOST_API_BATCH_WINDOW`` (up to ``HOST_MAX_BATCH`` messages) into one
``host.analyse_batch`` task: one tweet per request costs a fraction of a task each. A message's
pending record is stored before its task is published (nothing is accepted without one); the
results are read as ``ingest`` reads them (``producer.feed``: one notification per task, stored
results polled after a silence, every unanswered task sent again when the Redis holding the
queues or the results is a new one), each outcome stored before the stored result is deleted,
and each caller woken with its own records.

Sending and collecting share one thread because they share one Redis subscription: a task's
result channel is subscribed to before the task is sent, on the connection the results are
read from.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import redis
import structlog
from celery import Celery

from api.keys import KeyStore
from api.messages import MessageStore, status_of
from broker_config import tracing
from broker_config.contract import ANALYSE_BATCH
from producer.inflight import BROKEN, FeedReport, InFlight, redis_lives

log = structlog.get_logger("host.api")

#: Longest wait for results in one turn of the loop while tasks are pending: how late at most
#: a new request is noticed while the thread listens for results.
TURN_S = 0.002


class Unavailable(Exception):
    """The broker or the store did not take the messages: nothing was accepted."""


class Submission:
    """One request's messages on their way: ``sent`` resolves once every one is published,
    ``done`` once every one is answered (``records``: message id -> its record)."""

    def __init__(self, key_id: str, entries: list[dict[str, Any]], envelopes: list[dict[str, Any]],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.key_id, self.entries, self.envelopes, self.loop = key_id, entries, envelopes, loop
        self.sent: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.records: dict[str, dict[str, Any]] = {}
        self.answered_at: dict[str, float] = {}
        self.unsent = self.left = len(entries)
        #: The request's trace context (its messages' sends are its children; None: off).
        self.trace = tracing.current()

    def resolve(self, future: asyncio.Future[None], error: Exception | None = None) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(settle)


Item = tuple[Submission, dict[str, Any], dict[str, Any]]  # (submission, entry, envelope)


class Dispatcher:
    """Publishes batches and collects their answers (see the module's docstring).

    Args:
        app: the host app (broker, backend).
        messages: where each message's record goes.
        counts: where each key's tallies go (``accepted``, ``analysed``, ``rejected:<reason>``).
        window: seconds to gather messages into one batch.
        max_batch: most messages in one task.
        ttl: seconds a message's record is kept.
        on_counts: told of every tally (the metrics).
    """

    def __init__(self, app: Celery, messages: MessageStore, counts: KeyStore, window: float,
                 max_batch: int, ttl: int,
                 on_counts: Callable[[str, str, int], None] = lambda key, what, n: None) -> None:
        self.app, self.messages, self.counts = app, messages, counts
        self.window, self.max_batch, self.ttl, self.on_counts = window, max_batch, ttl, on_counts
        self.inbox: queue.SimpleQueue[Submission] = queue.SimpleQueue()
        #: Messages handed over and not published yet, and published and not answered yet.
        self.unsent = 0
        self.unanswered = 0
        #: Messages published since the start (the backlog estimate counts those since its read).
        self.published = 0
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[Submission, dict[str, Any]]] = {}  # message id -> ...
        self._answered: list[tuple[Submission, dict[str, Any], dict[str, Any]]] = []
        self._tallies: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._stop = threading.Event()
        self.drain_s = 5.0
        self.thread = threading.Thread(target=self._run, name="host-api-dispatch", daemon=True)

    # --- the requests' side (any thread) ------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def submit(self, sub: Submission) -> None:
        with self._lock:
            self.unsent += len(sub.entries)
        self.inbox.put(sub)

    def stop(self, timeout: float) -> None:
        """Publish what was handed over, wait up to ``timeout`` for the answers, then stop."""
        self.drain_s = timeout
        self._stop.set()
        self.thread.join(timeout + 1.0)

    # --- the dispatcher's thread ------------------------------------------------------------

    def _run(self) -> None:
        flight = InFlight(self.app, FeedReport(), self._on_record, math.inf, None,
                          redis_lives(self.app), before_forget=self._settle)
        with self.app.producer_or_acquire() as producer:
            self._loop(flight, producer)
        flight.close()

    def _loop(self, flight: InFlight, producer: Any) -> None:
        batch: list[Item] = []
        opened = 0.0
        stop_by = math.inf
        while True:
            now = time.monotonic()
            if self._stop.is_set() and stop_by == math.inf:
                stop_by = now + self.drain_s
            wait = 0.0 if flight.pending else (max(0.0, opened + self.window - now) if batch
                                               else 0.25)
            for sub in self._take(wait):
                if not batch:
                    opened = time.monotonic()
                batch.extend(zip([sub] * len(sub.entries), sub.entries, sub.envelopes,
                                 strict=True))
            now = time.monotonic()
            while len(batch) >= self.max_batch or (batch and now - opened >= self.window):
                self._send(flight, producer, batch[:self.max_batch])
                batch = batch[self.max_batch:]
                opened = now
            if flight.pending:
                with contextlib.suppress(*BROKEN, redis.RedisError):
                    flight.collect(-1, time.monotonic() + TURN_S)
            self._flush_tallies()
            if self._stop.is_set() and not batch and self.inbox.empty() and (
                    not flight.pending or time.monotonic() > stop_by):
                break

    def _take(self, wait: float) -> list[Submission]:
        got: list[Submission] = []
        try:
            got.append(self.inbox.get(timeout=wait) if wait > 0 else self.inbox.get_nowait())
            while True:
                got.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        return got

    def _send(self, flight: InFlight, producer: Any, items: list[Item]) -> None:
        task_id = str(uuid.uuid4())
        entries = [{**entry, "task": task_id, "index": i}
                   for i, (_, entry, _) in enumerate(items)]
        subs = Counter(sub for sub, _, _ in items)
        with self._lock:
            self.unsent -= len(items)
        try:
            self.messages.put(entries, self.ttl)
        except (*BROKEN, redis.RedisError) as exc:
            self._fail(subs, f"the store did not take the messages: {exc}")
            return
        ids = [e["id"] for e in entries]
        traced = list(subs)  # the first request parents the send; the others are linked
        try:
            flight.results.watch(task_id)
            with tracing.span("host.api.batch", traced[0].trace,
                              [s.trace for s in traced[1:] if s.trace is not None],
                              attributes={"host.batch.size": len(items),
                                          "host.batch.requests": len(traced)}):
                flight.send(producer, ANALYSE_BATCH, [[env for _, _, env in items]], ids,
                            task_id=task_id)
        except (*BROKEN, redis.RedisError) as exc:
            flight.pending.pop(task_id, None)
            flight.messages.pop(task_id, None)
            with contextlib.suppress(*BROKEN, redis.RedisError):
                self.messages.drop(ids)
            self._fail(subs, f"the broker did not take the messages: {exc}")
            return
        with self._lock:
            self.unanswered += len(items)
            self.published += len(items)
            for (sub, _, _), entry in zip(items, entries, strict=True):
                self._waiting[entry["id"]] = (sub, entry)
        for sub, n in subs.items():
            self._tally(sub.key_id, "accepted", n)
            sub.unsent -= n
            if sub.unsent == 0:
                sub.resolve(sub.sent)

    def _fail(self, subs: Counter[Submission], why: str) -> None:
        log.warning("api_submission_failed", reason=why, messages=sum(subs.values()))
        for sub in subs:
            sub.resolve(sub.sent, Unavailable(why))

    def _on_record(self, record: dict[str, Any]) -> None:
        waiting = self._waiting.pop(str(record.get("ref")), None)
        if waiting is not None:
            self._answered.append((waiting[0], waiting[1], record))

    def _settle(self) -> None:
        """Store the outcomes just collected, tally them, wake their callers: before the stored
        results are deleted (if storing fails, they are kept, and reading by id finds them)."""
        answered, self._answered = self._answered, []
        if not answered:
            return
        with self._lock:
            self.unanswered -= len(answered)
        now = time.time()
        tallies: Counter[tuple[str, str]] = Counter()
        for sub, _, record in answered:
            status = status_of(record)
            tallies[(sub.key_id, status if status != "rejected"
                     else f"rejected:{record.get('reason')}")] += 1
        try:
            self.messages.put([{**entry, "status": status_of(record), "result": record,
                                "answered_at": now} for _, entry, record in answered], self.ttl)
        finally:
            for (key_id, what), n in tallies.items():
                self._tally(key_id, what, n)
            for sub, entry, record in answered:
                sub.records[entry["id"]] = record
                sub.answered_at[entry["id"]] = now
                sub.left -= 1
                if sub.left == 0:
                    sub.resolve(sub.done)

    def _tally(self, key_id: str, what: str, n: int) -> None:
        self.on_counts(key_id, what, n)
        self._tallies[key_id][what] += n

    def _flush_tallies(self) -> None:
        """Each key's tallies of this turn, in one round trip (kept for the next on failure)."""
        if not self._tallies:
            return
        try:
            self.counts.count(self._tallies)
        except (*BROKEN, redis.RedisError):
            return
        self._tallies = defaultdict(Counter)
