"""What goes into a ``worker-wear`` report: sampling, smoothing, the worker's own figures.

``WearReporting`` is the service; ``workers.reporter.WearReporter`` is the thin bootstep that
runs it on the consumer's timer and sends what it returns. Everything it reads is the worker
process's own state (``workers.runtime.RUNTIME``) and its consumer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from broker_config.logs import get_logger
from broker_config.policy_file import load_policy
from broker_config.settings import ConfigError
from broker_config.wear_event import TaskFigures, WearEvent
from workers import control, gate, inject, tally
from workers.runtime import RUNTIME
from workers.wear import Smoothed

log = get_logger(__name__)

#: Which injected key replaces which reported metric.
INJECTED = {"cpu": "cpu_percent", "memory": "memory_percent", "load": "load_per_core",
            "temperature": "temperature_c", "open_files": "open_files_percent"}
#: Metrics whose hard limits a worker enforces on itself: running out of memory or overheating
#: does damage before a round trip to the checker completes. CPU does not.
SELF_PROTECTED = ("memory_percent", "temperature_c")


class WearReporting:
    """Samples, smooths and assembles one report at a time.

    Args:
        sample: returns the raw wear readings (``WearSampler().sample``).
        interval: the report interval, seconds (said in every report).
        limits: (hard, peak_hard) per self-protected metric (``self_protection_limits``).
    """

    def __init__(self, sample: Callable[[], dict[str, float]], interval: float,
                 limits: Mapping[str, tuple[float | None, float | None]]) -> None:
        self.sample = sample
        self.interval = interval
        self.limits = dict(limits)
        self.seq = 0
        self.boot = uuid.uuid4().hex
        self.smoothed: dict[str, Smoothed] = {}
        self.cost_s = 0.0

    def report(self, consumer: Any) -> WearEvent:
        """Sample, smooth, protect the worker if a hard local limit is crossed, and assemble."""
        started = time.thread_time()
        injection = inject.current()
        samples = self.sample()
        for key, value in injection.as_dict().items():
            if key in INJECTED:
                samples[INJECTED[key]] = value
        for metric, value in samples.items():
            self.smoothed.setdefault(metric, Smoothed()).add(value)
        self.protect(consumer)
        gate.undo_subscriptions(consumer, "subscribed while out of rotation")
        self.seq += 1
        status = gate.status(consumer)
        tasks = RUNTIME.tasks.snapshot(time.monotonic())
        event = WearEvent(
            hostname=consumer.hostname, seq=self.seq, boot=self.boot, interval=self.interval,
            wear={m: (round(s.value or 0.0, 3), round(s.peak, 3))
                  for m, s in self.smoothed.items()},
            last={m: round(s.last, 3) for m, s in self.smoothed.items()},
            tasks=TaskFigures.parse(tasks), raw_tasks=tasks, inflight=status["inflight"],
            queues=tuple(gate.configured_work_queues()),
            counts={"requeued": dict(RUNTIME.requeued), **_with_dead_letters(tally.snapshot()),
                    "control_refused": control.refused_counts(),
                    "dead_letters": dict(RUNTIME.rejected),
                    "subscriptions_undone": dict(RUNTIME.undone),
                    "task_outcomes": dict(RUNTIME.totals.outcomes),
                    "task_runtimes": dict(RUNTIME.totals.runtimes)},
            gate=status["gate"], gate_reason=status["gate_reason"],
            gate_changed_at=status["gate_changed_at"], self_protected=status["self_protected"],
            subscribed=tuple(status["consuming"]), at=status["at"],
            inject=injection.spec(), cost_s=round(self.cost_s, 6))
        self.cost_s = time.thread_time() - started
        return event

    def protect(self, consumer: Any) -> None:
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
                gate.take_out(consumer, f"self-protection: {reason}")
                g.self_protected = reason
                log.warning("self_protection", reason=reason)
                return


def _with_dead_letters(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The pool's inbound counts, plus the messages the consumer dead-lettered (rejected
    inputs too, though no task ever ran for them)."""
    inbound = dict(counts.get("inbound", {}))
    inbound["rejected"] = inbound.get("rejected", 0) + sum(RUNTIME.rejected.values())
    return {**counts, "inbound": inbound}


def self_protection_limits(policy_file: str) -> dict[str, tuple[float | None, float | None]]:
    """(hard, peak_hard) per self-protected metric, from the policy file or the defaults."""
    try:
        policy = load_policy(policy_file or None)
    except ConfigError as exc:
        log.error("policy_file_unreadable", error=str(exc), note="self-protection uses defaults")
        policy = load_policy(None)
    return {m: (t.hard, t.peak_hard) for m, t in policy.thresholds.items() if m in SELF_PROTECTED}
