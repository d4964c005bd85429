"""Shards: what a shard's guard needs of the others.

A fleet too large for one checker is split into ``n`` shards, each led by its own checker;
which shard watches which worker is a wire name every side agrees on
(``broker_config.shards.shard_of``).

The guard's bounds stay fleet-wide: a shard decides with the others' figures in view
(``Peers``), and every ejection it decides must also be admitted by one fleet-wide budget
(``Budget``: atomic in the store, so two shards can never both take the last place).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from healthcheck.policy.config import Guard


@dataclass(frozen=True, slots=True)
class Peers:
    """The rest of the fleet, as the guard of one shard counts it (zero: no other shards).

    ``size`` workers, ``out`` of them counted against the bound, ``waiting`` that want out
    (proposed or held), ``recent`` ejections in the current window; per queue, its consumers
    and how many of them are out.
    """

    size: int = 0
    out: int = 0
    waiting: int = 0
    recent: int = 0
    queue_size: Counter[str] = field(default_factory=Counter)
    queue_out: Counter[str] = field(default_factory=Counter)

    @classmethod
    def total(cls, shards: Iterable[ShardFigures]) -> Peers:
        """What several shards add up to."""
        size = out = waiting = recent = 0
        queue_size: Counter[str] = Counter()
        queue_out: Counter[str] = Counter()
        for s in shards:
            size, out, waiting, recent = (size + s.size, out + s.out, waiting + s.waiting,
                                          recent + s.recent)
            queue_size.update(s.queue_size)
            queue_out.update(s.queue_out)
        return cls(size, out, waiting, recent, queue_size, queue_out)


#: One shard's own figures have the same shape as what it sees of the others.
ShardFigures = Peers


def bound(guard: Guard, n: int) -> int:
    """How many of ``n`` workers automatic action may take out at once."""
    return max(guard.min_ejections, math.floor(guard.max_ejected_fraction * n))


def rate_limit(guard: Guard, n: int) -> int:
    """New ejections allowed per window in a fleet of ``n``."""
    return max(guard.max_ejections_per_window, math.floor(guard.max_ejection_rate_fraction * n))


def refusal(guard: Guard, whole: Peers, queues: Iterable[str], relapse: bool) -> str | None:
    """Why one more worker (consuming ``queues``) may not be taken out of a fleet whose figures
    are ``whole``; None when it may. The same rules run in the store's admission script
    (``healthcheck/store/lua/admit.lua``), word for word in what they answer."""
    limit = bound(guard, whole.size)
    if whole.out + 1 > limit:
        return f"{whole.out} out / bound {limit} of {whole.size}"
    for q in queues:
        q_bound = bound(guard, whole.queue_size[q])
        if whole.queue_out[q] + 1 > q_bound:
            return f"queue {q}: {whole.queue_out[q]} out / bound {q_bound}"
    # A relapse in probation is the same worker again, not a new ejection in a storm.
    if not relapse and whole.recent >= rate_limit(guard, whole.size):
        return f"{whole.recent} ejections in the last {guard.window_s:g}s"
    return None


class Budget(Protocol):
    """The fleet-wide guard budget every shard's ejections are admitted by, atomically."""

    def admit(self, worker: str, queues: tuple[str, ...], now: float,
              relapse: bool) -> str | None:
        """Count ``worker`` out of rotation if the fleet-wide bounds allow it (``relapse``: a
        worker in probation, exempt from the rate limit); None when admitted, else why not."""
