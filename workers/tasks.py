"""The data-plane tasks: thin wrappers that hand their arguments to the analysis pipeline."""

from __future__ import annotations

import random
import time
from typing import Any

from celery import Task, shared_task

from broker_config.app import settings_of
from broker_config.contract import SENT_AT_HEADER
from workers import inject, tally
from workers.analysis import RunContext, analyse_envelope, analyse_many, keep_dead_letters
from workers.deadletter import store_of
from workers.inbound import Limits
from workers.requests import HostTask
from workers.shared import Injection


@shared_task(name="host.analyse", bind=True, base=HostTask)
def analyse(self: Task[Any, Any], envelope: object) -> dict[str, Any]:
    """Analyse one inbound message; rejected input comes back as a dead-letter record."""
    injection = _injected()
    context = _context(self)
    results = [analyse_envelope(envelope, context)]
    keep_dead_letters(results, store_of(self.app))
    tally.count(results, context.queue)
    _leaked(injection, context)
    return inject.distort(results[0], injection, random.random())


@shared_task(name="host.analyse_batch", bind=True, base=HostTask)
def analyse_batch(self: Task[Any, Any], envelopes: object) -> list[dict[str, Any]]:
    """Analyse a batch of inbound messages in one task: one result per envelope, in order."""
    injection = _injected()
    settings = settings_of(self.app)
    context = _context(self)
    results = analyse_many(envelopes, context, settings.max_batch)
    keep_dead_letters(results, store_of(self.app))
    tally.count(results, context.queue)
    _leaked(injection, context)
    if not injection.wrong_answers:
        return results
    return [inject.distort(r, injection, random.random()) for r in results]


def _injected() -> Injection:
    # Fault injection for demos and tests: slow down, fail, or answer wrongly on purpose.
    injection = inject.current()
    if injection.active:
        inject.before_task(injection, random.random(), time.sleep)
    return injection


def _leaked(injection: Injection, context: RunContext) -> None:
    # An injected leak (memory, or processes left running) grows with the traffic
    # (work-queue tasks), not with the probes.
    if not tally.counts_as_work(context.queue):
        return
    if injection.leak:
        inject.leak(injection.leak)
    if injection.stray:
        inject.stray(injection.stray)


def _context(task: Task[Any, Any]) -> RunContext:
    settings = settings_of(task.app)
    delivery = task.request.delivery_info or {}
    return RunContext(
        worker=task.request.hostname or "unknown",
        queue=delivery.get("routing_key"),
        task_id=task.request.id,
        limits=limits_of(settings),
        started_at=getattr(task.request, "host_started_at", None),
        sent_at=getattr(task.request, SENT_AT_HEADER, None),
    )


def limits_of(settings: Any) -> Limits:
    """The input limits a worker applies, from its settings."""
    return Limits(settings.max_line_bytes, settings.max_text_chars, settings.max_emoji,
                  settings.input_cpu_budget)
