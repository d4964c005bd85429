"""The analysis pipeline one task runs: envelope in, result or dead-letter record out."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from broker_config import tracing
from workers import tally
from workers.deadletter import DeadLetterStore
from workers.inbound import Limits, Message, Rejection, parse_line, truncate
from workers.sentiment import (
    TooExpensive,
    analyzer,
    budget_run,
    cpu_budget,
    emoji_count,
    labelled,
)

#: A parsed message with VADER's own scores for its text, or why the input was refused.
_Outcome = tuple[Message, dict[str, float]] | Rejection


@dataclass(frozen=True, slots=True)
class RunContext:
    """Where and how a task runs: stamped on every result."""

    worker: str
    queue: str | None
    task_id: str | None
    limits: Limits
    clock: Callable[[], float] = time.time
    #: When the task started (passed the health gate); None: when the analysis begins.
    started_at: float | None = None
    #: When its producer sent it (the message's ``host_sent_at`` header; None: not said).
    sent_at: float | None = None


def analyse_envelope(env: object, ctx: RunContext) -> dict[str, Any]:
    """Parse and analyse one envelope; a bad one yields a dead-letter record, never an exception."""
    return _analyse([env], ctx)[0]


def analyse_many(envs: object, ctx: RunContext, max_batch: int) -> list[dict[str, Any]]:
    """Analyse a batch of envelopes; a malformed batch is one dead-letter record."""
    if not isinstance(envs, list):
        rej = Rejection("batch", "wrong_type", f"a batch must be a list, not {type(envs).__name__}",
                        truncate(envs))
        return [rej.record(at=ctx.clock(), stage="worker", worker=ctx.worker)]
    if len(envs) > max_batch:
        rej = Rejection("batch", "batch_too_large", f"{len(envs)} envelopes > {max_batch}",
                        truncate(envs[:3]))
        return [rej.record(at=ctx.clock(), stage="worker", worker=ctx.worker)]
    with budget_run(ctx.limits.cpu_budget_s):
        return _analyse(envs, ctx)


def _analyse(envs: list[Any], ctx: RunContext) -> list[dict[str, Any]]:
    """Parse every envelope, then score every text, then build every record.

    Three loops of one step each rather than one loop of three steps: VADER's code run back to
    back costs less CPU per tweet than the same code interleaved with parsing and building
    records (the ground truth in one process: VADER alone ~39 µs per tweet, one loop of three
    steps ~48, three loops ~44; a worker's pool processes under ``ingest --batch 500``: 56 -> 51,
    bench/ingest_cpu.py). ``finished_at`` stays each input's own."""
    started = ctx.started_at if ctx.started_at is not None else ctx.clock()
    parsed = [_parse_envelope(env, ctx.limits) for env in envs]
    scored = _score(parsed, ctx.limits, ctx.clock, tally.counts_as_work(ctx.queue))
    return [_record(env, outcome, finished, started, ctx)
            for env, (outcome, finished) in zip(envs, scored, strict=True)]


def _score(parsed: list[Message | Rejection], limits: Limits, clock: Callable[[], float],
           work: bool = True) -> list[tuple[_Outcome, float]]:
    """VADER's scores for every parsed message, each with the time it was done; a rejection
    passes through, and an input that would cost more than its budget becomes one: too many
    emoji (counted first, in linear time) or more CPU than ``cpu_budget_s``. Each text scored
    is progress (``tally.progressed``) when it is ``work``."""
    polarity = analyzer().polarity_scores
    budget = cpu_budget(limits.cpu_budget_s)
    scored: list[tuple[_Outcome, float]] = []
    for message in parsed:
        if isinstance(message, Rejection):
            scored.append((message, 0.0))
            continue
        text = message.text
        emoji = emoji_count(text)
        if emoji > limits.max_emoji:
            scored.append((Rejection(message.ref, "too_expensive",
                                     f"{emoji} emoji > HOST_MAX_EMOJI ({limits.max_emoji})",
                                     truncate(text)), 0.0))
            continue
        try:
            with budget:
                scores = polarity(text)
        except TooExpensive as exc:
            scored.append((Rejection(message.ref, "too_expensive", str(exc), truncate(text)), 0.0))
            continue
        scored.append(((message, scores), clock()))
        if work:
            tally.progressed()
    return scored


def _record(env: object, outcome: _Outcome, finished: float, started: float,
            ctx: RunContext) -> dict[str, Any]:
    """One input's result: its scores stamped with where and when it ran, or its dead letter."""
    if isinstance(outcome, Rejection):
        return outcome.record(at=started, stage="worker", worker=ctx.worker)
    message, scores = outcome
    sent_at = ctx.sent_at
    wait = started - sent_at if isinstance(sent_at, (int, float)) else None
    return {
        "status": "analysed",
        "ref": message.ref,
        "id": message.id,
        "text": message.text,
        "rating": message.rating,
        "author": message.author,
        **labelled(scores),
        "worker": ctx.worker,
        "queue": ctx.queue,
        "task_id": ctx.task_id,
        "started_at": started,
        "finished_at": finished,
        "runtime_s": finished - started,
        "queue_wait_s": wait,
    }


def dead_letters(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rejected records among results."""
    return [r for r in results if r.get("status") == "rejected"]


def keep_dead_letters(results: Sequence[dict[str, Any]], store: DeadLetterStore) -> None:
    """Record the rejections among results in the dead-letter store."""
    rejected = dead_letters(results)
    if rejected:
        store.record(rejected)
        tracing.dead_letters(rejected)


def _parse_envelope(env: object, limits: Limits) -> Message | Rejection:
    if not isinstance(env, dict):
        return Rejection("?", "wrong_type", f"envelope must be an object, not {type(env).__name__}",
                         truncate(env))
    ref = env.get("ref")
    ref = ref[:200] if isinstance(ref, str) else "?"
    return parse_line(env.get("line"), str(env.get("format", "auto")), ref, limits)
