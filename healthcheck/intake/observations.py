"""Events into the policy's observations, each kind parsed once (``read``), and what the
checker keeps of each worker's last report (its readings, its sparkline history, the summary
``fleet status`` shows). Never raises on a malformed event: it is dropped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from broker_config.wear_event import WEAR_EVENT, WearEvent
from healthcheck.page import WearHistory
from healthcheck.policy import Heartbeat, Reading, WearReport

LIVENESS_EVENTS = ("worker-heartbeat", "worker-online")
#: The events the checker's loop takes (task events only feed the task metrics).
EVENT_TYPES = (WEAR_EVENT, *LIVENESS_EVENTS, "worker-offline")


class Observed(NamedTuple):
    """What one event says: the policy's observation, and for a wear report the report as the
    worker sent it (its counts feed the task metrics, its summary ``fleet status``)."""

    observation: WearReport | Heartbeat
    report: WearEvent | None = None


def read(event: Mapping[str, Any], at: float) -> Observed | None:
    """What an event says (``at``: when the checker received it), or None: an event of no
    kind the policy observes, or a malformed one."""
    if event.get("type") == WEAR_EVENT:
        report = WearEvent.parse(event)
        return None if report is None else Observed(wear_report(report, at), report)
    worker = event.get("hostname")
    if event.get("type") in LIVENESS_EVENTS and isinstance(worker, str) and worker:
        return Observed(Heartbeat(worker, at, event.get("type") == "worker-online"))
    return None


def wear_report(report: WearEvent, at: float) -> WearReport:
    """What the policy needs of a wear report."""
    last = report.last
    return WearReport(
        worker=report.hostname, at=at,
        wear={m: Reading(value, peak, last.get(m)) for m, (value, peak) in report.wear.items()},
        completed=report.tasks.completed, failed=report.tasks.failed,
        consecutive_failures=report.tasks.consecutive_failures,
        runtime_p95=report.tasks.runtime_p95, inflight=report.inflight, queues=report.queues,
        self_protected=report.self_protected, consuming=report.consuming,
        gate_closed=report.gate == "closed", running=report.running,
        stalled_s=report.stalled_s, gate_reason=report.gate_reason, gate_hold=report.gate_hold,
        cost_ms=report.cost_ms,
    )


def report_summary(report: WearEvent, at: float, busy: str = "") -> dict[str, Any]:
    """What ``fleet status`` shows of a worker's last report (``busy``: the policy's word on
    its load, "" when it is not busy)."""
    return {"at": at, "wear": {m: value for m, (value, _) in report.wear.items()},
            "consuming": None if report.subscribed is None else list(report.subscribed),
            "queues": list(report.queues), "inflight": report.inflight, "gate": report.gate,
            "self_protected": report.self_protected, "inject": report.inject or None,
            "busy": busy or None}


#: How often a worker's report summary (what ``fleet status`` shows) is stored: every report
#: would be one JSON document per worker per second in the store.
SUMMARY_EVERY_S = 5.0


class Intake:
    """Each worker's last readings and recent wear, from the reports as they arrive."""

    def __init__(self) -> None:
        self.wear: dict[str, Mapping[str, Reading]] = {}
        #: Tasks each worker last said it holds (running or reserved).
        self.inflight: dict[str, int] = {}
        #: Tasks each worker last said were executing.
        self.running: dict[str, int] = {}
        self.history = WearHistory()
        #: When each worker's summary was last stored, and what its gate and queues were.
        self._summarised: dict[str, tuple[float, Any]] = {}

    def summary(self, report: WearEvent, at: float, busy: str = "") -> dict[str, Any] | None:
        """The summary to store for this report: every ``SUMMARY_EVERY_S``, and at once when
        the worker's gate, queues or being busy changed (None: not now)."""
        seen = (report.gate, report.subscribed, report.self_protected, bool(busy))
        stored_at, stored = self._summarised.get(report.hostname, (0.0, None))
        if seen == stored and at - stored_at < SUMMARY_EVERY_S:
            return None
        self._summarised[report.hostname] = (at, seen)
        return report_summary(report, at, busy)

    def take(self, report: WearReport) -> None:
        """Remember a report's readings."""
        self.wear[report.worker] = report.wear
        self.inflight[report.worker] = report.inflight
        self.running[report.worker] = report.running or 0
        self.history.add(report.worker, report.wear)

    def forget(self, worker: str) -> None:
        """A worker no longer exported."""
        self.wear.pop(worker, None)
        self.inflight.pop(worker, None)
        self.running.pop(worker, None)
        self.history.forget(worker)
        self._summarised.pop(worker, None)
