"""The tasks a feed has sent and not yet had answered: sending them with the queue-wait stamp,
collecting their results as they arrive (or reading them from the store when notifications
are late), sending again what a Redis that changed under them may have lost, and the report
of what happened to every input."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from celery.result import denied_join_result
from celery.utils import uuid
from kombu.exceptions import OperationalError

from broker_config import contract, tracing
from broker_config.app import settings_of
from producer.results import ResultReader

#: Called with (accounted, total_known, sending_done) whenever progress is made.
ProgressFn = Callable[[int, int, bool], None]


class Stalled(Exception):
    """No result arrived for longer than the idle timeout."""


@dataclass
class FeedReport:
    """What happened to every input of one feed."""

    inputs: int = 0
    analysed: int = 0
    rejected: int = 0
    failed: int = 0
    missing: list[str] = field(default_factory=list)
    by_label: Counter[str] = field(default_factory=Counter)
    by_worker: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    #: Why the feed stopped early: the broker or the result store went away for good.
    unreachable: str | None = None
    #: The input was not read to its end (the feed stopped early).
    stopped: bool = False
    #: Tasks sent again because the Redis holding the queues or the results changed (a
    #: failover, a restart) while they were unanswered: it may have lost them.
    resent: int = 0

    @property
    def accounted(self) -> int:
        """Inputs with a result or a dead-letter record."""
        return self.analysed + self.rejected

    @property
    def complete(self) -> bool:
        """True when every input was analysed or dead-lettered."""
        return self.accounted == self.inputs

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "inputs": self.inputs, "analysed": self.analysed, "rejected": self.rejected,
            "failed": self.failed, "missing": len(self.missing), "complete": self.complete,
            "by_label": dict(self.by_label), "by_worker": dict(self.by_worker),
            "by_reason": dict(self.by_reason), "elapsed_s": round(self.elapsed_s, 3),
            "unreachable": self.unreachable, "stopped_early": self.stopped,
            "resent": self.resent,
        }

    def add(self, record: dict[str, Any]) -> None:
        """Count one output record."""
        status = record.get("status")
        if status == "analysed":
            self.analysed += 1
            self.by_label[str(record.get("label"))] += 1
            self.by_worker[str(record.get("worker"))] += 1
        elif status == "rejected":
            self.rejected += 1
            self.by_reason[str(record.get("reason"))] += 1
        else:
            self.failed += 1


def redis_lives(app: Celery) -> Callable[[], tuple[str, ...] | None]:
    """What reads the run ids of the Redis servers that hold the app's queues and its results
    now (None while one does not answer). A restart or a Sentinel failover changes one: the
    new server may not have the last writes the old one acknowledged (Redis replicates
    asynchronously), a task or a result among them."""
    settings = settings_of(app)
    places = [settings.backend] + ([settings.broker] if settings.broker_is_redis else [])
    clients = [place.client(socket_timeout=2.0, socket_connect_timeout=2.0) for place in places]

    def read() -> tuple[str, ...] | None:
        try:
            return tuple(str(c.info("server")["run_id"]) for c in clients)
        except (*BROKEN, redis.RedisError, KeyError):
            return None
    return read


class InFlight:
    """The tasks sent and not yet answered, and collecting their results as they arrive.

    When the Redis that holds the queues or the results is not the one it was (``lives``),
    every task still unanswered is sent again under its own id: the new server may have lost
    it, or its result. One sent twice runs twice at worst; its first result is the one kept."""

    def __init__(self, app: Celery, report: FeedReport, emit: Callable[[dict[str, Any]], None],
                 idle_timeout: float, progress: ProgressFn | None,
                 lives: Callable[[], tuple[str, ...] | None],
                 before_forget: Callable[[], None] = lambda: None) -> None:
        self.app, self.report, self.emit = app, report, emit
        #: Called after results are delivered and before their stored copies are deleted.
        self.before_forget = before_forget
        self.idle_timeout, self.progress = idle_timeout, progress
        self.results = ResultReader(app.backend)
        #: task id -> the refs of its inputs.
        self.pending: dict[str, list[str]] = {}
        #: task id -> the task's name and arguments, to send it again.
        self.messages: dict[str, tuple[str, list[Any]]] = {}
        self.last = self.polled = time.monotonic()
        #: Every input has been sent (the progress total is final).
        self.all_sent = False
        self.lives = lives
        self.life = lives()

    def send(self, producer: Any, name: str, args: list[Any], refs: list[str],
             task_id: str | None = None) -> None:
        """Send one task (again, with ``task_id``), listening for its result first."""
        if task_id is None:
            task_id = uuid()
            self.results.watch(task_id)
        self.pending[task_id] = refs
        self.messages[task_id] = (name, args)
        # results are read here, not by Celery's result consumer; the headers carry the
        # stamp workers measure queue wait from
        with denied_join_result(), tracing.sending(refs):
            self.app.send_task(name, args=args, task_id=task_id, producer=producer,
                               headers=contract.headers())
        # the idle timeout counts from the last thing that happened, a task sent or a result
        # read: reading and sending a large input on a busy machine is not waiting
        self.last = time.monotonic()

    def resend_if_moved(self) -> None:
        """Send every unanswered task again if the queues' or the results' Redis changed."""
        life = self.lives()
        if life is None or life == self.life:
            return
        if self.life is not None and self.pending:
            try:
                with self.app.producer_or_acquire() as producer:
                    for task_id, refs in list(self.pending.items()):
                        name, args = self.messages[task_id]
                        self.send(producer, name, args, refs, task_id)
            except BROKEN:
                return  # away again: all of them are sent at the next quiet moment
            self.report.resent += len(self.pending)
        self.life = life

    def deliver(self, task_id: str, meta: dict[str, Any]) -> bool:
        refs = self.pending.pop(task_id, None)
        self.messages.pop(task_id, None)
        if refs is None:
            return False
        for record in _records(meta, refs):
            self.emit(record)
        self.last = time.monotonic()
        if self.progress:
            self.progress(self.report.accounted, self.report.inputs, self.all_sent)
        return True

    def collect(self, refill_at: int, until: float | None) -> bool:
        """Deliver results as they arrive: until ``until`` (a monotonic time) when it is given,
        else until no more than ``refill_at`` tasks are pending (-1: none). False when the
        feed must stop: no result for the idle timeout, or the result store is gone."""
        while True:
            now = time.monotonic()
            if until is not None and now >= until:
                return True
            if until is None and len(self.pending) <= max(refill_at, 0):
                return True
            if not self.pending:  # nothing to collect before the next input is due
                time.sleep(max(0.0, until - now) if until is not None else 0.0)
                return True
            if now - self.last > self.idle_timeout:
                return False
            wait = WAIT_S if until is None else max(0.0, min(WAIT_S, until - now))
            try:
                got = self.results.arrived(wait)
                if not got and now - max(self.last, self.polled) >= POLL_S:
                    # A broker restart drops the notifications sent while it was away:
                    # after a few quiet seconds the stored results are read.
                    self.polled = now
                    got = self.results.stored(list(self.pending))
                    if not got:
                        self.resend_if_moved()
                done = [task_id for task_id, meta in got if self.deliver(task_id, meta)]
                if done:
                    self.before_forget()
                    self.results.forget(done)
            except BROKEN as exc:  # the store went away mid-wait: wait on what is pending
                time.sleep(POLL_S / 4)
                if time.monotonic() - self.last > self.idle_timeout:
                    self.report.unreachable = (self.report.unreachable
                                               or f"the result store is gone: {exc}")
                    return False
        return True

    def close(self) -> None:
        with contextlib.suppress(*BROKEN):
            self.results.close()


#: What a Redis result backend raises while it restarts.
BROKEN = (redis.ConnectionError, redis.TimeoutError, OperationalError, OSError)


#: Seconds without a result after which the stored results are read directly.
POLL_S = 2.0
#: The longest wait for a notification before the loop looks at its clocks again.
WAIT_S = 0.25


def _records(meta: dict[str, Any], refs: list[str]) -> list[dict[str, Any]]:
    value = meta.get("result")
    if meta.get("status") == "SUCCESS":
        if isinstance(value, list) and len(value) == len(refs):
            return value
        if isinstance(value, dict) and len(refs) == 1:
            return [value]
    reason = f"task {meta.get('status')}: {value!r}"[:300]
    return [{"status": "failed", "ref": ref, "reason": reason} for ref in refs]
