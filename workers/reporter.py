"""Wear Reporter Bootstep: a ``worker-wear`` event every ``HOST_WEAR_INTERVAL`` seconds."""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state

from broker_config.app import settings_of
from workers import control, gate, inject, tally
from workers.consumer import REJECTED
from workers.logs import get_logger
from workers.requests import REQUEUED, TASKS
from workers.wear import Smoothed, WearSampler

log = get_logger(__name__)
EVENT = "worker-wear"

#: Which injected key replaces which reported metric.
_INJECTED = {"cpu": "cpu_percent", "memory": "memory_percent", "load": "load_per_core",
             "temperature": "temperature_c", "open_files": "open_files_percent"}


class WearReporter(bootsteps.StartStopStep):
    """Samples the worker's wear and sends it as a Celery event with a sequence number."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None
        self.seq = 0
        self.boot = uuid.uuid4().hex
        self.smoothed: dict[str, Smoothed] = {}
        self.sampler: WearSampler | None = None
        self.cost_s = 0.0
        self.limits: dict[str, Any] = {}

    def start(self, c: Any) -> None:
        """Start reporting on the consumer's timer."""
        settings = settings_of(c.app)
        interval = settings.wear_interval
        self.sampler = self.sampler or WearSampler()
        self.limits = self_protection_limits(settings.policy_file)
        self.tref = c.timer.call_repeatedly(interval, self.report, (c,), priority=10)

    def stop(self, c: Any) -> None:
        """Stop reporting (the consumer restarts us after a reconnection)."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop

    def report(self, c: Any) -> None:
        """Sample, and send one ``worker-wear`` event."""
        try:
            fields = self.collect(c)
            c.event_dispatcher.send(EVENT, **fields)
        except Exception:  # a failed report must never take the worker down
            log.exception("wear_report_failed")

    def collect(self, c: Any) -> dict[str, Any]:
        """The event's fields: wear readings, task statistics, in-flight work, queues."""
        started = time.thread_time()
        assert self.sampler is not None
        injection = inject.current()
        samples = self.sampler.sample()
        for key, value in injection.as_dict().items():
            if key in _INJECTED:
                samples[_INJECTED[key]] = value
        for metric, value in samples.items():
            self.smoothed.setdefault(metric, Smoothed()).add(value)
        self._protect_self(c)
        gate.undo_subscriptions(c, "subscribed while out of rotation")
        self.seq += 1
        fields = {
            "seq": self.seq,
            "boot": self.boot,
            "interval": settings_of(c.app).wear_interval,
            "wear": {m: [round(s.value or 0.0, 3), round(s.peak, 3)]
                     for m, s in self.smoothed.items()},
            "tasks": TASKS.snapshot(time.monotonic()),
            "inflight": len(worker_state.active_requests) + len(worker_state.reserved_requests),
            "queues": gate.configured_work_queues(c),
            "requeued": dict(REQUEUED),
            **_with_dead_letters(tally.snapshot()),
            "control_refused": control.refused_counts(),
            "dead_letters": dict(REJECTED),
            "subscriptions_undone": dict(gate.UNDONE),
            **{k: v for k, v in gate.status(c).items() if k != "inflight"},
            "inject": injection.spec() or None,
            "cost_s": round(self.cost_s, 6),
        }
        self.cost_s = time.thread_time() - started
        return fields

    def _protect_self(self, c: Any) -> None:
        """Close the gate at once on a hard local limit, without waiting for the checker."""
        g = gate.gate()
        if g is None or g.self_protected:
            return
        for metric, (hard, peak_hard) in self.limits.items():
            s = self.smoothed.get(metric)
            if s is None or s.value is None:
                continue
            if (hard is not None and s.value >= hard) or (peak_hard is not None
                                                          and s.peak >= peak_hard):
                reason = f"{metric} {s.value:.1f} (peak {s.peak:.1f}) over its hard limit"
                gate.take_out(c, f"self-protection: {reason}")
                g.self_protected = reason
                log.warning("self_protection", reason=reason)
                return


def _with_dead_letters(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The pool's inbound counts, plus the messages the consumer dead-lettered (rejected
    inputs too, though no task ever ran for them)."""
    inbound = dict(counts.get("inbound", {}))
    inbound["rejected"] = inbound.get("rejected", 0) + sum(REJECTED.values())
    return {**counts, "inbound": inbound}


#: Metrics whose hard limits a worker enforces on itself: running out of memory or overheating
#: does damage before a round trip to the checker completes. CPU does not.
SELF_PROTECTED = ("memory_percent", "temperature_c")


def self_protection_limits(policy_file: str) -> dict[str, tuple[float | None, float | None]]:
    """(hard, peak_hard) per self-protected metric, from the policy file or the defaults."""
    from broker_config.settings import ConfigError
    from healthcheck.policy_file import load_policy

    try:
        policy = load_policy(policy_file or None)
    except ConfigError as exc:
        log.error("policy_file_unreadable", error=str(exc), note="self-protection uses defaults")
        policy = load_policy(None)
    return {m: (t.hard, t.peak_hard) for m, t in policy.thresholds.items() if m in SELF_PROTECTED}
