"""What goes into a ``worker-wear`` report: sampling, smoothing, the worker's own figures.

``WearReporting`` is the service; ``workers.reporter.WearReporter`` is the thin bootstep that
runs it on the consumer's timer and sends what it returns. Everything it reads is the worker
process's own state (``workers.runtime.RUNTIME``) and its consumer.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import psutil
from celery.worker import state as worker_state

from broker_config.logs import get_logger
from broker_config.policy_file import load_policy
from broker_config.settings import ConfigError
from broker_config.wear_event import TaskFigures, WearEvent
from workers import control, gate, inject, tally
from workers.runtime import RUNTIME
from workers.shared import Injection
from workers.task_stats import ItemCost, Progress
from workers.wear import Smoothed

log = get_logger(__name__)

#: Which injected key replaces which reported metric.
INJECTED = {"cpu": "cpu_percent", "memory": "memory_percent", "load": "load_per_core",
            "temperature": "temperature_c", "open_files": "open_files_percent",
            "power": "power_percent"}
#: Metrics whose hard limits a worker enforces on itself: running out of memory or overheating
#: does damage before a round trip to the checker completes. CPU does not.
SELF_PROTECTED = ("memory_percent", "temperature_c")


class WearReporting:
    """Samples, smooths and assembles one report at a time.

    A report folds ``per_report`` raw samples taken one ``interval / per_report`` apart (their
    mean into the smoothed value, their largest into the peak). A raw sample at or over a hard
    limit is reported at once, as is the first one back under it, so that the checker sees a
    hot run begin and end to within one sample: a sustained step is then told from a spike in
    about 1.75 s instead of three whole intervals.

    Args:
        sample: returns the raw wear readings (``WearSampler().sample``).
        interval: the report interval, seconds (said in every report).
        limits: (hard, peak_hard) per self-protected metric (``self_protection_limits``).
        hard: the policy's hard limit per metric (``hard_limits``): what counts as hot.
        per_report: raw samples per report interval.
    """

    def __init__(self, sample: Callable[[], dict[str, float]], interval: float,
                 limits: Mapping[str, tuple[float | None, float | None]],
                 hard: Mapping[str, float] | None = None, per_report: int = 1) -> None:
        self.sample = sample
        self.interval = interval
        self.limits = dict(limits)
        self.hard = dict(hard or {})
        self.per_report = max(1, per_report)
        self.seq = 0
        self.boot = uuid.uuid4().hex
        self.smoothed: dict[str, Smoothed] = {}
        self.cost_s = 0.0
        self._window: list[dict[str, float]] = []
        self._last: dict[str, float] = {}
        self._was_hot = False
        self._injection = Injection()
        self._progress = Progress()
        self._cost = ItemCost(psutil.cpu_count() or 1)
        self._running = 0
        self._stalled_s = 0.0

    def tick(self, consumer: Any) -> WearEvent | None:
        """Take one raw sample; the report, when one is due (every ``per_report`` samples, and
        at once while a raw sample is hot or has just cooled), else None."""
        started = time.thread_time()
        self._take()
        hot = any(self._last.get(m, -math.inf) >= limit for m, limit in self.hard.items())
        # The first report goes at the first sample: a worker is counted as a healthy consumer
        # only once the checker has its report, and a platform may stop the next worker as
        # soon as this one says it is ready.
        due = len(self._window) >= self.per_report or self.seq == 0
        if not (due or hot or self._was_hot):
            self.cost_s += time.thread_time() - started
            return None
        self._was_hot = hot
        return self._assemble(consumer, due, started)

    def report(self, consumer: Any) -> WearEvent:
        """Sample once more and report everything sampled since the last report."""
        started = time.thread_time()
        self._take()
        self._was_hot = False
        return self._assemble(consumer, True, started)

    def _take(self) -> None:
        self._injection = inject.current()
        samples = self.sample()
        now, done = time.monotonic(), tally.progress()
        # the CPU really spent (an injected reading changes what is reported, not what it cost)
        self._cost.sample(now, samples.get("cpu_percent", 0.0), done)
        for key, value in self._injection.as_dict().items():
            if key in INJECTED:
                samples[INJECTED[key]] = value
        self._window.append(samples)
        self._last = samples
        self._running = len(worker_state.active_requests)
        self._stalled_s = self._progress.sample(now, self._running, done)

    def _fold(self) -> None:
        """The window's samples into the smoothed values: their mean, and their peak."""
        for metric in self._last:
            values = [s[metric] for s in self._window if metric in s]
            self.smoothed.setdefault(metric, Smoothed()).add(sum(values) / len(values),
                                                             max(values))
        self._window.clear()

    def _wear(self) -> dict[str, tuple[float, float]]:
        """(smoothed value, peak) per metric; samples not folded yet raise the peak at once."""
        wear = {m: (s.value or 0.0, s.peak) for m, s in self.smoothed.items()}
        for sample in self._window:
            for metric, value in sample.items():
                smoothed, peak = wear.get(metric, (value, value))
                wear[metric] = (smoothed, max(peak, value))
        return {m: (round(v, 3), round(p, 3)) for m, (v, p) in wear.items()}

    def _assemble(self, consumer: Any, fold: bool, started: float) -> WearEvent:
        """Protect the worker if a hard local limit is crossed, and assemble the report."""
        if fold:
            self._fold()
        self.protect(consumer)
        gate.undo_subscriptions(consumer, "subscribed while out of rotation")
        self.seq += 1
        status = gate.status(consumer)
        tasks = RUNTIME.tasks.snapshot(time.monotonic())
        event = WearEvent(
            hostname=consumer.hostname, seq=self.seq, boot=self.boot, interval=self.interval,
            wear=self._wear(), last={m: round(v, 3) for m, v in self._last.items()},
            tasks=TaskFigures.parse(tasks), raw_tasks=tasks, inflight=status["inflight"],
            queues=tuple(gate.configured_work_queues()),
            counts={"requeued": dict(RUNTIME.requeued), **_with_dead_letters(tally.snapshot()),
                    "control_refused": control.refused_counts(),
                    "dead_letters": dict(RUNTIME.rejected),
                    "subscriptions_undone": dict(RUNTIME.undone),
                    "task_outcomes": dict(RUNTIME.totals.outcomes),
                    "task_runtimes": dict(RUNTIME.totals.runtimes),
                    "task_events": dict(RUNTIME.totals.events),
                    "task_exceptions": dict(RUNTIME.totals.exceptions),
                    "task_waits": dict(RUNTIME.totals.waits)},
            gate=status["gate"], gate_reason=status["gate_reason"], gate_hold=status["gate_hold"],
            gate_changed_at=status["gate_changed_at"], self_protected=status["self_protected"],
            subscribed=tuple(status["consuming"]), at=status["at"],
            inject=self._injection.spec(), cost_s=round(self.cost_s, 6),
            running=self._running, stalled_s=round(self._stalled_s, 3), cost_ms=self._cost.ms())
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
    return {m: (t.hard, t.peak_hard) for m, t in _policy(policy_file).thresholds.items()
            if m in SELF_PROTECTED}


def hard_limits(policy_file: str) -> dict[str, float]:
    """The hard limit of every metric that has one, from the policy file or the defaults."""
    return {m: t.hard for m, t in _policy(policy_file).thresholds.items() if t.hard is not None}


def samples_per_report(interval: float) -> int:
    """Raw samples per report: four, none closer than 0.1 s (1 s reports: every 0.25 s)."""
    return max(1, min(4, int(interval / 0.1 + 1e-9)))


def _policy(policy_file: str) -> Any:
    try:
        return load_policy(policy_file or None)
    except ConfigError as exc:
        log.error("policy_file_unreadable", error=str(exc), note="the worker uses the defaults")
        return load_policy(None)
