"""A job's chunks (runs of consecutive input items, each sent as one task), what a run of a job
reports, and the items of a chunk as they are written out."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from workers.inbound import Line


@dataclass
class Chunk:
    """A run of consecutive input items, sent as one task."""

    id: int
    first: int
    lines: list[Line]
    task_id: str = ""
    sent_at: float = 0.0
    records: list[dict[str, Any]] | None = None

    @property
    def n(self) -> int:
        return len(self.lines)

    def plan_entry(self) -> str:
        return json.dumps({"first": self.first, "n": self.n, "task": self.task_id})


@dataclass
class JobReport:
    """How a job run (or resume) ended."""

    job_id: str
    state: str = "running"
    items: int = 0
    written: int = 0
    chunks: int = 0
    resent: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    #: Why the run stopped early (state "interrupted"): the broker or the store went away.
    error: str = ""
    costs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("costs")
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d


def merge(chunk: Chunk) -> list[dict[str, Any]]:
    """One record per line of the chunk: its framing rejection, or the worker's record."""
    analysed = iter(chunk.records or [])
    out = []
    for line in chunk.lines:
        if line.rejection is not None:
            out.append(line.rejection.record(at=time.time(), stage="job"))
        else:
            out.append(next(analysed, {"status": "failed", "ref": line.ref,
                                       "reason": "no record for this item"}))
    return out


def take(lines: Iterator[Line], n: int) -> list[Line]:
    """The next ``n`` lines (fewer at the end of the input)."""
    out = []
    for _ in range(n):
        line = next(lines, None)
        if line is None:
            break
        out.append(line)
    return out


def new_job_id() -> str:
    """A new job's id: 12 hex digits."""
    return uuid.uuid4().hex[:12]
