"""What the policy observes of a worker: its wear reports (with each reading's smoothed value,
peak and last sample), the checker's probe results, and heartbeats. Times are the checker's
wall clock (``model``'s docstring says why)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class Reading(NamedTuple):
    """One wear metric over the last window: its smoothed value, its peak, and its last raw
    sample (None from a worker that does not send it). A tuple: the checker makes six of these
    per report, ten thousand reports a second."""

    value: float
    peak: float
    last: float | None = None


@dataclass(frozen=True, slots=True)
class WearReport:
    """What a worker's ``worker-wear`` event says, as the policy needs it.

    Args:
        worker: the node name.
        at: when the checker received it (the checker's clock).
        wear: readings by metric name (``cpu_percent``, ``memory_percent``, ...).
        completed: tasks that succeeded in the window.
        failed: tasks that failed in the window.
        consecutive_failures: failures since the last success.
        runtime_p95: the window's 95th percentile task runtime, seconds (None: no tasks).
        inflight: tasks the worker holds (running or reserved).
        queues: the work queues it is configured to consume.
        self_protected: the reason, when the worker closed its own gate.
        consuming: the work queues it actually consumes, as it measured them (None: the
            worker did not say; an empty tuple: none, its gate closed or its consumers gone).
        gate_closed: the worker's gate was closed when it sampled this report. A worker in
            rotation with a closed gate is a contradiction the checker corrects (an admit),
            or a report sampled before the admit that arrived after it: never a sign that
            consumption failed.
        running: tasks executing when it sampled this report (None: the worker did not say).
        gate_reason, gate_hold: why its gate is closed, and what the checker that closed it
            held it out as (``healthcheck.policy.holds``).
        stalled_s: seconds with nothing done (no input, no task), since the later of the
            last thing done and the start of the current busy spell (None: the worker did
            not say).
        cost_ms: its CPU milliseconds per item done over its last seconds (None: it did not
            say, or did too little to tell).
    """

    worker: str
    at: float
    wear: Mapping[str, Reading] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    consecutive_failures: int = 0
    runtime_p95: float | None = None
    inflight: int = 0
    queues: tuple[str, ...] = ()
    self_protected: str | None = None
    consuming: tuple[str, ...] | None = None
    gate_closed: bool = False
    running: int | None = None
    stalled_s: float | None = None
    gate_reason: str = ""
    gate_hold: str = ""
    cost_ms: float | None = None

    def not_consuming(self) -> tuple[str, ...]:
        """Configured work queues the worker says it does not consume with its gate open (none
        when it did not say, or when its gate was closed)."""
        if self.consuming is None or self.gate_closed:
            return ()
        return tuple(q for q in self.queues if q not in self.consuming)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one known-answer probe: ``ok``, ``wrong``, ``late`` or ``missing``."""

    worker: str
    at: float
    outcome: str
    detail: str = ""
    task_id: str = ""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A sign of life without figures (Celery's worker-heartbeat; ``started`` for its
    worker-online, sent once as a worker starts)."""

    worker: str
    at: float
    started: bool = False


Observation = WearReport | ProbeResult | Heartbeat
