"""The fleet simulator's workers and scenarios: each virtual worker's wear model, reported the
way the wear reporter does, and the scenarios (which workers really degrade, and when) that
``healthcheck.sim`` drives the real policy through."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from healthcheck.policy import Reading
from healthcheck.policy.observations import WearReport

SMOOTHING = 0.3  # EWMA weight of the newest sample, as the wear reporter uses
PEAK_WINDOW = 10

#: (t, rng) -> (cpu %, memory %, failure probability, wrong answers?, anything done?)
Sample = tuple[float, float, float, bool, bool]
Model = Callable[[float, random.Random], Sample]


@dataclass
class Virtual:
    """One simulated worker: its model, its smoothed figures, and the truth about it."""

    name: str
    model: Model
    onset: float | None = None  # when it really starts degrading (None: it never does)
    cpu: float = 30.0
    mem: float = 40.0
    cpu_peaks: deque[float] = field(default_factory=lambda: deque(maxlen=PEAK_WINDOW))
    mem_peaks: deque[float] = field(default_factory=lambda: deque(maxlen=PEAK_WINDOW))
    consecutive_failures: int = 0
    progressed_at: float = 0.0  # when it last got anything done

    def report(self, t: float, rng: random.Random, inflight: int) -> tuple[WearReport, bool]:
        cpu, mem, fail_p, wrong, progress = self.model(t, rng)
        if progress:
            self.progressed_at = t
        self.cpu += SMOOTHING * (cpu - self.cpu)
        self.mem += SMOOTHING * (mem - self.mem)
        self.cpu_peaks.append(cpu)
        self.mem_peaks.append(mem)
        failed = sum(rng.random() < fail_p for _ in range(4))
        self.consecutive_failures = self.consecutive_failures + failed if failed == 4 else failed
        report = WearReport(self.name, t, {
            "cpu_percent": Reading(round(self.cpu, 1), max(self.cpu_peaks), round(cpu, 1)),
            "memory_percent": Reading(round(self.mem, 1), max(self.mem_peaks), round(mem, 1)),
        }, completed=(4 - failed) if progress else 0, failed=failed if progress else 0,
            consecutive_failures=self.consecutive_failures, runtime_p95=0.02,
            inflight=inflight, queues=("tweets",), running=inflight,
            stalled_s=t - self.progressed_at)
        return report, wrong


def normal(t: float, rng: random.Random) -> Sample:
    """A healthy worker: moderate, noisy load, its tasks done as they come."""
    return rng.gauss(45, 8), rng.gauss(50, 3), 0.01, False, True


def gradual(onset: float, rate: float) -> Model:
    """CPU and memory that climb steadily from ``onset`` (rate: points per second), the CPU
    burnt with nothing done (a worker thrashing, not working)."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        if t >= onset:
            cpu = min(100.0, 80 + rate * (t - onset) + rng.gauss(0, 2))
            mem = min(100.0, 80 + rate * (t - onset) / 2)
        return cpu, mem, fail, False, t < onset
    return model


def spiky() -> Model:
    """Healthy, with transient spikes of one or two samples (CPU to 100, memory to 90), at
    least one normal sample between two spikes: a spike begins in 5% of samples."""
    left = 0  # samples of the current CPU spike still to come; -1: the one normal sample after

    def model(t: float, rng: random.Random) -> Sample:
        nonlocal left
        cpu, mem, fail, _, _ = normal(t, rng)
        if left == 0 and rng.random() < 0.05:
            left = rng.choice((1, 2))
        if left > 0:
            cpu, left = 100.0, left - 1
            left = -1 if left == 0 else left
        elif left == -1:
            left = 0
        if rng.random() < 0.02:
            mem = 90.0
        return cpu, mem, fail, False, True
    return model


def step(onset: float) -> Model:
    """A sustained step: CPU at 100 from ``onset`` with nothing done (a stuck loop, a pool
    spinning)."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        return (100.0 if t >= onset else cpu), mem, fail, False, t < onset
    return model


def flapping(period: float) -> Model:
    """Alternately fine and overheated (nothing done while hot), ``period`` seconds each."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        hot = int(t // period) % 2 == 1
        if hot:
            cpu, mem = 100.0, 99.0
        return cpu, mem, fail, False, not hot
    return model


def hot_reading(onset: float) -> Model:
    """A broken metrics pipeline: figures say 99% from ``onset``, the worker is fine."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        return (99.0 if t >= onset else cpu), mem, fail, False, True
    return model


def hot_memory_reading(onset: float) -> Model:
    """A broken metrics pipeline: memory reads 99% from ``onset``, the worker is fine."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        return cpu, (99.0 if t >= onset else mem), fail, False, True
    return model


def busy(onset: float, low: float = 90.0, high: float = 100.0) -> Model:
    """Busy with its work from ``onset``: CPU between ``low`` and ``high``, tasks done at
    their normal cost (a traffic peak, a backlog, a worker alone on its node)."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        return (rng.uniform(low, high) if t >= onset else cpu), mem, fail, False, True
    return model


def busy_then_stuck(busy_from: float, onset: float) -> Model:
    """Busy from ``busy_from``, then from ``onset`` CPU at 100 with nothing done."""
    working, stuck = busy(busy_from), step(onset)
    def model(t: float, rng: random.Random) -> Sample:
        return stuck(t, rng) if t >= onset else working(t, rng)
    return model


def wrong_answers(onset: float) -> Model:
    """Normal wear, but from ``onset`` its probe answers are subtly wrong."""
    def model(t: float, rng: random.Random) -> Sample:
        cpu, mem, fail, _, _ = normal(t, rng)
        return cpu, mem, fail, t >= onset, True
    return model


@dataclass(frozen=True)
class Scenario:
    """How the fleet's workers behave, and which of them really degrade."""

    name: str
    description: str
    build: Callable[[int, random.Random], list[Virtual]]


def _fleet_with(n: int, rng: random.Random, share: float,
                bad: Callable[[int], tuple[Model, float | None]],
                others: Model = normal) -> list[Virtual]:
    picked = set(rng.sample(range(n), max(1, int(n * share))))
    out = []
    for i in range(n):
        model, onset = bad(i) if i in picked else (others, None)
        out.append(Virtual(f"w{i}", model, onset))
    return out


def _step_from(i: int) -> tuple[Model, float]:
    onset = 20.0 + (i * 7) % 40
    return step(onset), onset


def _gradual_from(i: int) -> tuple[Model, float]:
    onset = 20.0 + (i * 7) % 40
    return gradual(onset, 1.0), onset


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("gradual_wear", "2% of workers wear out gradually from t=20..60s",
             lambda n, rng: _fleet_with(n, rng, 0.02, _gradual_from)),
    Scenario("transient_spikes", "everyone healthy, with CPU spikes of one or two samples "
             "and memory spikes", lambda n, rng: [Virtual(f"w{i}", spiky()) for i in range(n)]),
    Scenario("sustained_step", "2% of workers step to 100% CPU at once, from t=20..60s",
             lambda n, rng: _fleet_with(n, rng, 0.02, _step_from)),
    Scenario("flapping", "1% of workers alternate 5 s fine / 5 s overheated from t=0",
             lambda n, rng: _fleet_with(n, rng, 0.01, lambda i: (flapping(5.0), 5.0))),
    Scenario("correlated_half", "half the fleet degrades at once at t=30s",
             lambda n, rng: _fleet_with(n, rng, 0.5, lambda i: (gradual(30, 2.0), 30.0))),
    Scenario("broken_metrics", "the metrics pipeline reports everyone at 99% CPU from t=30s",
             lambda n, rng: [Virtual(f"w{i}", hot_reading(30)) for i in range(n)]),
    Scenario("broken_memory_metrics", "the metrics pipeline reports everyone at 99% memory "
             "from t=30s", lambda n, rng: [Virtual(f"w{i}", hot_memory_reading(30))
                                          for i in range(n)]),
    Scenario("silent_wrong_answers", "0.5% of workers answer probes wrongly from t=20s, wear normal",
             lambda n, rng: _fleet_with(n, rng, 0.005, lambda i: (wrong_answers(20), 20.0))),
    # Load, not wear: none of these workers is degraded, and none may be ejected.
    Scenario("traffic_peak", "every worker busy at 90-100% CPU from t=30s, tasks done as usual",
             lambda n, rng: [Virtual(f"w{i}", busy(30)) for i in range(n)]),
    Scenario("hot_tenth", "10% of workers busy at 93-97% CPU from t=10s, tasks done as usual",
             lambda n, rng: _fleet_with(n, rng, 0.10, lambda i: (busy(10, 93, 97), None))),
    Scenario("busy_with_stuck", "everyone busy at 90-100% from t=10s; 2% of them stuck (CPU "
             "at 100, nothing done) from t=20..60s",
             lambda n, rng: _fleet_with(n, rng, 0.02,
                                        lambda i: (busy_then_stuck(10, _step_from(i)[1]),
                                                   _step_from(i)[1]), others=busy(10))),
]}
