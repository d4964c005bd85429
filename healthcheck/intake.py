"""Turning Celery events into the policy's observations. Never raises on a malformed event."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from healthcheck.policy import Heartbeat, Reading, WearReport

WEAR_EVENT = "worker-wear"
LIVENESS_EVENTS = ("worker-heartbeat", "worker-online")


def observation(event: Mapping[str, Any], at: float) -> WearReport | Heartbeat | None:
    """The observation an event carries (``at``: when the checker received it), or None.

    Events come from the network: anything malformed yields None rather than an exception.
    """
    kind = event.get("type")
    worker = event.get("hostname")
    if not isinstance(worker, str) or not worker:
        return None
    if kind in LIVENESS_EVENTS:
        return Heartbeat(worker, at)
    if kind == WEAR_EVENT:
        try:
            return wear_report(event, worker, at)
        except (TypeError, ValueError):
            return None
    return None


def wear_report(event: Mapping[str, Any], worker: str, at: float) -> WearReport:
    """A WearReport from a ``worker-wear`` event.

    Raises:
        TypeError, ValueError: a field has the wrong shape.
    """
    wear = {}
    for metric, pair in (event.get("wear") or {}).items():
        value, peak = (float(x) for x in pair)
        if math.isfinite(value) and math.isfinite(peak):
            wear[str(metric)] = Reading(value, peak)
    tasks = event.get("tasks") or {}
    p95 = tasks.get("runtime_p95")
    protected = event.get("self_protected")
    return WearReport(
        worker=worker, at=at, wear=wear,
        completed=int(tasks.get("completed", 0)), failed=int(tasks.get("failed", 0)),
        consecutive_failures=int(tasks.get("consecutive_failures", 0)),
        runtime_p95=float(p95) if p95 is not None else None,
        inflight=int(event.get("inflight", 0)),
        queues=tuple(str(q) for q in event.get("queues") or ()),
        self_protected=str(protected) if protected else None,
        consuming=consuming(event),
        gate_closed=event.get("gate") == "closed",
    )


def consuming(event: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The work queues a worker really consumes, by its report: those it is subscribed to while
    its gate is open (a closed gate starts nothing, whatever it is subscribed to); None for a
    worker that does not report them."""
    queues = event.get("consuming")
    if not isinstance(queues, (list, tuple)):
        return None
    if event.get("gate") != "open":
        return ()
    return tuple(str(q) for q in queues)
