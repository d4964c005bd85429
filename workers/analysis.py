"""The analysis pipeline one task runs: envelope in, result or dead-letter record out."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from broker_config.contract import envelope as envelope  # re-exported: the producers' envelope
from workers.deadletter import DeadLetterStore
from workers.inbound import Limits, Message, Rejection, parse_line, truncate
from workers.sentiment import (
    Scores,
    TooExpensive,
    analyse_text,
    budget_run,
    cpu_budget,
    emoji_count,
)


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


def analyse_envelope(env: object, ctx: RunContext) -> dict[str, Any]:
    """Parse and analyse one envelope; a bad one yields a dead-letter record, never an exception."""
    started = ctx.started_at if ctx.started_at is not None else ctx.clock()
    parsed = _parse_envelope(env, ctx.limits)
    if isinstance(parsed, Rejection):
        return parsed.record(at=started, stage="worker", worker=ctx.worker)
    scores = _bounded_scores(parsed, ctx.limits)
    if isinstance(scores, Rejection):
        return scores.record(at=started, stage="worker", worker=ctx.worker)
    finished = ctx.clock()
    queued_at = env.get("queued_at") if isinstance(env, dict) else None
    wait = started - queued_at if isinstance(queued_at, (int, float)) else None
    return {
        "status": "analysed",
        "ref": parsed.ref,
        "id": parsed.id,
        "text": parsed.text,
        "rating": parsed.rating,
        "author": parsed.author,
        **scores,
        "worker": ctx.worker,
        "queue": ctx.queue,
        "task_id": ctx.task_id,
        "started_at": started,
        "finished_at": finished,
        "runtime_s": finished - started,
        "queue_wait_s": wait,
    }


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
        return [analyse_envelope(env, ctx) for env in envs]


def dead_letters(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rejected records among results."""
    return [r for r in results if r.get("status") == "rejected"]


def keep_dead_letters(results: Sequence[dict[str, Any]], store: DeadLetterStore) -> None:
    """Record the rejections among results in the dead-letter store."""
    rejected = dead_letters(results)
    if rejected:
        store.record(rejected)


def _bounded_scores(message: Message, limits: Limits) -> Scores | Rejection:
    """VADER's scores, or ``too_expensive`` when the input would cost more than its budget:
    too many emoji (checked first, in linear time) or more CPU than ``cpu_budget_s``."""
    emoji = emoji_count(message.text)
    if emoji > limits.max_emoji:
        return Rejection(message.ref, "too_expensive",
                         f"{emoji} emoji > HOST_MAX_EMOJI ({limits.max_emoji})",
                         truncate(message.text))
    try:
        with cpu_budget(limits.cpu_budget_s):
            return analyse_text(message.text)
    except TooExpensive as exc:
        return Rejection(message.ref, "too_expensive", str(exc), truncate(message.text))


def _parse_envelope(env: object, limits: Limits) -> Message | Rejection:
    if not isinstance(env, dict):
        return Rejection("?", "wrong_type", f"envelope must be an object, not {type(env).__name__}",
                         truncate(env))
    ref = env.get("ref")
    ref = ref[:200] if isinstance(ref, str) else "?"
    return parse_line(env.get("line"), str(env.get("format", "auto")), ref, limits)
