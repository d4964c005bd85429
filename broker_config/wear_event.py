"""The ``worker-wear`` event: what a worker reports every interval, as one type on both sides.

The worker's reporter builds a ``WearEvent`` and sends ``to_fields()`` as a Celery event; the
checker reads every event back with ``WearEvent.parse``, the one parser, which returns None
for anything malformed (events come off the network: a bad one is dropped, never raised).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The Celery event type.
WEAR_EVENT = "worker-wear"
#: Inbound outcomes: analysed, or rejected (dead-lettered).
OUTCOMES = ("analysed", "rejected")
#: Sentiment labels of analysed tweets (VADER's compound: >= 0.05, <= -0.05, between).
LABELS = ("positive", "neutral", "negative")
#: Counts since the worker started, each ``{label: count}``, by the event's key.
COUNTS = ("requeued", "inbound", "tweets", "control_refused", "dead_letters",
          "subscriptions_undone", "task_outcomes", "task_runtimes", "task_events",
          "task_exceptions", "task_waits")
#: ``task_outcomes`` counts settled tasks by ``"<queue>|<task>|<outcome>"`` (succeeded, failed,
#: retried, rejected: ``workers.task_stats.TaskTotals``); ``task_events`` counts the tasks received,
#: started and revoked the same way (what Celery's task events of those names would count);
#: ``task_exceptions`` the failures by ``"<queue>|<task>|<exception class>"``.
#: Upper bounds of the runtime buckets a worker counts its succeeded tasks in
#: (``task_runtimes``: ``"<queue>|<task>|<bound>"`` per bucket, not cumulative, ``inf`` last,
#: and ``"<queue>|<task>|sum_us"``, the runtimes' sum in microseconds).
RUNTIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
#: The same for the time a task waited between its producer's send and its start
#: (``task_waits``; only tasks whose producer stamped the send time).
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0)


@dataclass(slots=True)
class TaskFigures:
    """The worker's task outcomes over its last window (60 s)."""

    completed: int = 0
    failed: int = 0
    failure_rate: float = 0.0
    consecutive_failures: int = 0
    runtime_p50: float | None = None
    runtime_p95: float | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> TaskFigures:
        """Raises TypeError or ValueError for a field of the wrong shape."""
        return cls(completed=int(data.get("completed", 0)), failed=int(data.get("failed", 0)),
                   failure_rate=_lenient(data.get("failure_rate")) or 0.0,
                   consecutive_failures=int(data.get("consecutive_failures", 0)),
                   runtime_p50=_lenient(data.get("runtime_p50")),
                   runtime_p95=_seconds(data.get("runtime_p95")))


@dataclass(slots=True)
class WearEvent:
    """One ``worker-wear`` report (treat it as read-only: it is not frozen only because a frozen
    dataclass costs twice as much to build, and the checker builds one per report).

    Args:
        hostname: the worker's node name.
        wear: ``(smoothed value, peak)`` by metric (``cpu_percent``, ``memory_percent``, ...).
        last: the last raw sample by metric (sent beside ``wear``, so that checkers that do
            not read it still read the report).
        tasks: task outcomes over the last window.
        inflight: tasks the worker holds (running or reserved).
        queues: the work queues it was started to consume.
        subscribed: the work queues its consumer is subscribed to (None: it did not say).
        gate: ``"open"``, ``"closed"`` or None (a worker that does not say).
        self_protected: why it closed its own gate on a hard local limit, if it did.
        counts: totals since the worker started (``COUNTS``), each ``{label: count}`` as sent
            (only its non-negative integer counts mean anything).
        inject: the fault injection in force ("": none).
        running: tasks executing when it sampled (None: it did not say).
        stalled_s: seconds with no input or task done, since the later of the last one and
            the start of the current busy spell (None: it did not say): busy is told from
            stuck, and from idle, by this.
        cost_ms: the worker's CPU milliseconds per item done (an input analysed, or a task
            settled) over its last ``COST_WINDOW_S`` seconds (None: too few items to say).
        gate_hold: what the checker held it out as when it closed the gate (``STATE/cause``,
            opaque to the worker): a checker that has no record of the worker (its store
            lost it) takes it back out of rotation as that, not as a new healthy worker.
        seq, boot, interval, gate_reason, gate_changed_at, at, cost_s: the report's own
            bookkeeping (sequence, boot id, interval, the gate's last change, when it was
            sampled by the worker's clock, what sampling cost).
    """

    hostname: str
    wear: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    last: Mapping[str, float] = field(default_factory=dict)
    tasks: TaskFigures = field(default_factory=TaskFigures)
    inflight: int = 0
    queues: tuple[str, ...] = ()
    subscribed: tuple[str, ...] | None = None
    gate: str | None = None
    self_protected: str | None = None
    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    inject: str = ""
    seq: int = 0
    boot: str = ""
    interval: float | None = None
    gate_reason: str = ""
    gate_hold: str = ""
    gate_changed_at: float | None = None
    at: float | None = None
    cost_s: float = 0.0
    running: int | None = None
    stalled_s: float | None = None
    cost_ms: float | None = None
    #: The task figures as the worker sent them (keys the checker does not read included).
    raw_tasks: Mapping[str, Any] = field(default_factory=dict)

    @property
    def consuming(self) -> tuple[str, ...] | None:
        """The work queues it really consumes: those subscribed while its gate is open (a
        closed gate starts nothing); None for a worker that does not report them."""
        if self.subscribed is None:
            return None
        return self.subscribed if self.gate == "open" else ()

    @property
    def not_consuming(self) -> list[str]:
        """Configured work queues an open-gated worker reports it does not consume."""
        actual = self.consuming
        if self.gate != "open" or actual is None:
            return []
        return [q for q in self.queues if q not in actual]

    def to_fields(self) -> dict[str, Any]:
        """The event's fields, as the worker sends them (Celery adds type, hostname, clock)."""
        return {
            "seq": self.seq, "boot": self.boot, "interval": self.interval,
            "wear": {m: [v, p] for m, (v, p) in self.wear.items()},
            "last": dict(self.last),
            "tasks": dict(self.raw_tasks),
            "inflight": self.inflight, "queues": list(self.queues),
            **{k: dict(v) for k, v in self.counts.items()},
            "gate": self.gate, "gate_reason": self.gate_reason,
            "gate_hold": self.gate_hold or None,
            "gate_changed_at": self.gate_changed_at, "self_protected": self.self_protected,
            "consuming": None if self.subscribed is None else list(self.subscribed),
            "at": self.at, "inject": self.inject or None, "cost_s": self.cost_s,
            "running": self.running, "stalled_s": self.stalled_s, "cost_ms": self.cost_ms,
        }

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> WearEvent | None:
        """The report an event carries; None when it is not a ``worker-wear`` event from a
        named worker, or any field the checker reads has the wrong shape. Non-finite wear
        readings are left out, as are bookkeeping fields that are not numbers; unknown keys
        are ignored."""
        hostname = event.get("hostname")
        if event.get("type") != WEAR_EVENT or not isinstance(hostname, str) or not hostname:
            return None
        try:
            return cls._parse(event, hostname)
        except (TypeError, ValueError, AttributeError, OverflowError):
            return None

    @classmethod
    def _parse(cls, event: Mapping[str, Any], hostname: str) -> WearEvent:
        # The checker parses every report of the fleet (10,000 a second at fleet scale): no
        # copies here, and the counts stay as sent (their reader, the metrics, takes only
        # non-negative integers).
        wear = {}
        for metric, pair in _mapping(event.get("wear")).items():
            value, peak = pair
            value, peak = float(value), float(peak)
            if math.isfinite(value) and math.isfinite(peak):
                wear[str(metric)] = (value, peak)
        last = {}
        for metric, raw in _mapping(event.get("last")).items():
            if math.isfinite(raw := float(raw)):
                last[str(metric)] = raw
        tasks = _mapping(event.get("tasks"))
        subscribed = event.get("consuming")
        protected = event.get("self_protected")
        gate = event.get("gate")
        get = event.get
        return cls(
            hostname=hostname, wear=wear, last=last, tasks=TaskFigures.parse(tasks),
            raw_tasks=tasks,
            inflight=int(get("inflight", 0) or 0),
            queues=tuple(map(str, get("queues") or ())),
            subscribed=(tuple(map(str, subscribed))
                        if isinstance(subscribed, (list, tuple)) else None),
            gate=gate if gate in ("open", "closed") else None,
            self_protected=str(protected) if protected else None,
            counts={k: v for k in COUNTS if isinstance(v := get(k), Mapping)},
            inject=str(get("inject") or ""), seq=_int(get("seq")), boot=str(get("boot") or ""),
            interval=_lenient(get("interval")), gate_reason=str(get("gate_reason") or ""),
            gate_hold=str(get("gate_hold") or "")[:100],
            gate_changed_at=_lenient(get("gate_changed_at")), at=_lenient(get("at")),
            cost_s=_lenient(get("cost_s")) or 0.0,
            running=_count(get("running")), stalled_s=_lenient(get("stalled_s")),
            cost_ms=_lenient(get("cost_ms")),
        )


def _mapping(value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected an object, not {type(value).__name__}")
    return value


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) else None


def _lenient(value: Any) -> float | None:
    """A bookkeeping number: None when absent or not a finite number (never raises)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    """A non-negative integer, or None when absent or anything else (never raises)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
