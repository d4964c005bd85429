"""What one chunk of a job may cost, the size of the next chunk, and how many chunks a job
may have in flight given the fleet's wear. Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: A chunk is sized to land at this share of its CPU budget.
TARGET_SHARE = 0.8
@dataclass(frozen=True, slots=True)
class ChunkBudget:
    """What one chunk may cost. Defaults: docs/jobs.md says where each comes from."""

    #: CPU seconds per chunk (Dask's guidance: units of work of about a second or more keep
    #: the per-task overhead below 1%; host aims lower than Dask's 5 s adaptive target so that a
    #: drain waits seconds, not tens of seconds).
    cpu_s: float = 2.0
    #: Resident memory of the pool process holding a chunk's records, in MB.
    mem_mb: float = 512.0
    #: A chunk that has used this many budgets of CPU stops between two items and is split.
    hard_multiple: float = 4.0
    #: Items in the first chunk: small, so the first measurement comes fast.
    first_items: int = 50
    #: The most items in one chunk (one message), whatever the budget allows.
    max_items: int = 20_000
    #: A chunk is at most this many times larger than the one before it.
    growth: float = 4.0


class Sizer:
    """The next chunk's size, from the cost per item measured so far."""

    def __init__(self, budget: ChunkBudget) -> None:
        self.budget = budget
        self.per_item: float | None = None
        self.size = budget.first_items

    def measured(self, items: int, cpu_s: float, rss_mb: float = 0.0) -> None:
        """Take one chunk's measurement into account."""
        if items <= 0:
            return
        per = max(cpu_s, 1e-6) / items
        if self.per_item is None or per > self.per_item:
            self.per_item = per  # a costlier chunk is believed at once
        else:
            self.per_item = 0.7 * self.per_item + 0.3 * per
        target = self.budget.cpu_s * TARGET_SHARE / self.per_item
        if rss_mb > self.budget.mem_mb:
            target = min(target, items / 2)
        ceiling = min(self.budget.max_items, self.size * self.budget.growth)
        self.size = max(1, int(min(target, ceiling)))


def pace(pressure: float, parallel: int) -> int:
    """Chunks the job may have in flight when the most worn worker in rotation is at
    ``pressure`` (its highest wear reading over that metric's soft limit): all of them below
    0.8, one from 0.8, none from 0.95 (the next step would be SUSPECT)."""
    if pressure >= 0.95:
        return 0
    if pressure >= 0.8:
        return 1
    return parallel


def fleet_pressure(reports: Mapping[str, Mapping[str, Any]], in_rotation: set[str],
                   soft: Mapping[str, float]) -> float:
    """The highest reading/soft-limit ratio among the workers in rotation (0 when none)."""
    worst = 0.0
    for worker, report in reports.items():
        if worker not in in_rotation:
            continue
        for metric, value in (report.get("wear") or {}).items():
            limit = soft.get(metric)
            if limit and isinstance(value, (int, float)):
                worst = max(worst, float(value) / limit)
    return worst
