"""Every threshold, window and bound of the health policy, with defaults and their sources.

docs/policy.md explains where each default comes from. ``PolicyConfig.from_mapping`` reads the
TOML policy file (``HOST_POLICY_FILE``) already parsed into a dict, and refuses unknown keys and
bad values with the key and the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Threshold:
    """Soft and hard limits on one wear metric, on its smoothed value and on its window peak.

    A limit of None is not checked. Peaks catch transient spikes that averages hide: memory
    that touches 99% for one second can be killed by the OOM killer in that second.
    """

    soft: float | None = None
    hard: float | None = None
    peak_soft: float | None = None
    peak_hard: float | None = None

    def __post_init__(self) -> None:
        for low, high in ((self.soft, self.hard), (self.peak_soft, self.peak_hard)):
            if low is not None and high is not None and low > high:
                raise ValueError(f"soft limit {low} is above hard limit {high}")


def _default_thresholds() -> dict[str, Threshold]:
    return {
        "cpu_percent": Threshold(soft=85, hard=97),
        "memory_percent": Threshold(soft=85, hard=95, peak_soft=92, peak_hard=98),
        "load_per_core": Threshold(soft=4.0, hard=8.0),
        "open_files_percent": Threshold(soft=80, hard=95),
        "temperature_c": Threshold(soft=80, hard=90, peak_soft=85, peak_hard=95),
        # Power draw as a percent of the packages' highest power limit (RAPL, where present):
        # at or past the limit the hardware is outside its own bounds, whatever the load.
        "power_percent": Threshold(soft=100, hard=110, peak_hard=125),
        # The worker's own resident memory over its limit (HOST_WORKER_MEMORY_LIMIT, or its
        # cgroup's): a leak a pool restart cures.
        "rss_percent": Threshold(soft=85, hard=95, peak_soft=92, peak_hard=98),
        # Processes a pool process started that outlive their task (a runaway child): one,
        # there in three raw samples in a row (the sustained rule; its smoothed value never
        # reaches 1 by itself), is wear a pool restart cures.
        "stray_processes": Threshold(hard=1),
    }


@dataclass(frozen=True, slots=True)
class Failures:
    """Task failures: a rate over the window gated by volume, and a consecutive count."""

    min_volume: int = 10
    soft_rate: float = 0.2
    hard_rate: float = 0.5
    consecutive: int = 5


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency outliers: a worker's p95 against the fleet's median p95."""

    min_fleet: int = 5
    min_volume: int = 10
    factor: float = 3.0
    floor_s: float = 0.05


@dataclass(frozen=True, slots=True)
class Cost:
    """Cost per item: a worker's CPU milliseconds per item done (``WearReport.cost_ms``) over
    ``factor`` times the median of the workers in rotation that consume the same queues, and
    over ``factor`` times its own usual cost where that is known; ``floor_ms`` above the median
    at least. A busy worker keeps its cost per item; a degraded one (throttled, thrashing,
    spinning between items) pays more for each."""

    enabled: bool = True
    min_fleet: int = 5
    factor: float = 3.0
    floor_ms: float = 1.0
    #: How fast a worker's usual cost follows its reports while it is HEALTHY and within the
    #: limit (an exponential average's weight on the newest): quickly down (its first costs
    #: include its start-up), slowly up (a drift must not become its usual before it is
    #: caught: at 0.01, a minute of reports moves it less than half way).
    usual_fall: float = 0.3
    usual_rise: float = 0.01


@dataclass(frozen=True, slots=True)
class Recovery:
    """How slowly a worker is forgiven."""

    #: Consecutive soft breaches that confirm degradation (SUSPECT -> DRAINING).
    confirm_breaches: int = 3
    #: Consecutive clean observations needed to leave SUSPECT or PROBATION.
    passes: int = 3
    #: Minimum seconds in SUSPECT before it may return to HEALTHY.
    min_suspect_s: float = 10.0
    #: Consecutive passed probes that move QUARANTINED to PROBATION once the back-off ran out.
    probe_passes: int = 3
    #: Minimum clean seconds in PROBATION before HEALTHY.
    probation_s: float = 60.0
    #: In PROBATION soft limits are multiplied by this (tighter thresholds).
    probation_tighten: float = 0.9
    #: Seconds HEALTHY after which past ejections are forgiven (the back-off starts over).
    forgive_after_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Sustained:
    """A step over a hard limit, told from a spike by the raw samples: when the last raw
    sample of some metric is at or over its hard limit in ``samples`` consecutive reports, the
    worker is ejected as for a hard breach, whatever its smoothed value says. A spike of fewer
    samples never ejects (the smoothed value and the peaks still judge it as before).

    The run must also span ``min_s`` seconds from its first report to its last, so that
    faster samples do not make a shorter burst a step. Workers sample four times per report
    interval and report at once while a raw sample is over a hard limit: at the default 1 s
    interval a step is then out 1.75-2 s after its onset (the 8th hot sample), and a burst
    shorter than 1.75 s never is. From a worker that sends one sample a second, 3 reports
    span 2 s and the count decides, as before."""

    samples: int = 3
    min_s: float = 1.75


#: Metrics that measure how much work a worker does, not how worn it is: their breaches count as
#: wear only while the worker makes no progress (``Load``). A worker busy with its backlog sits
#: at 90-100% CPU; that is capacity in use, not a fault.
LOAD_METRICS = ("cpu_percent", "load_per_core")
#: Of those, the ones read off the whole machine: a worker running no task adds nothing to
#: them, so while it runs none they are its neighbours' work and never its wear (its own
#: ``cpu_percent`` still tells a runaway thread or child).
MACHINE_METRICS = ("load_per_core",)


@dataclass(frozen=True, slots=True)
class Load:
    """Busy is not worn: a ``LOAD_METRICS`` breach counts as wear only without progress.

    Progress is lost when the worker runs no task at all (CPU burnt with nothing to show: a
    runaway thread or child, judged by the raw sample as well as the smoothed one, so that a
    worker that has just gone idle is not judged by a smoothed value still falling), or when
    tasks are running but none has finished for ``stall_floor_s`` or ``stall_factor`` times
    the worker's own p95 runtime, whichever is longer (a stuck or spinning pool). A worker
    that says neither (an older worker) is judged as before: its CPU is wear.
    ``enabled = false`` makes every CPU and load breach wear again.
    """

    enabled: bool = True
    #: Above the longest one input may run (the CPU budget: 0.5 s, stopped at 0.625 s).
    stall_floor_s: float = 1.0
    stall_factor: float = 3.0


#: Evidence that a worker's wear is of a kind a restart of its pool cures: memory grown past
#: its own limit (a leak), progress lost (a stuck or spinning pool process), or processes a
#: pool process left running (a runaway child).
HEALABLE = ("rss_percent", "stalled_s", "stray_processes")


@dataclass(frozen=True, slots=True)
class Healing:
    """Recycling: a worker quarantined for a cause a restart cures (``HEALABLE``) has its pool
    restarted by the checker (a signed ``host_recycle``), then earns its way back as any
    quarantined worker does. At most ``max_per_hour`` recycles per worker in any hour; past
    that it stays QUARANTINED for a person, with the count in its reason."""

    enabled: bool = True
    max_per_hour: int = 3


@dataclass(frozen=True, slots=True)
class Backoff:
    """Quarantine length: min(base x 2^(ejections-1), max) + jitter."""

    base_s: float = 30.0
    max_s: float = 300.0
    jitter_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Guard:
    """The fleet guard: how much automatic action may take out of rotation."""

    max_ejected_fraction: float = 0.25
    #: Even a small fleet may eject this many (a fleet of 3 at 25% would otherwise eject none).
    min_ejections: int = 1
    #: New ejections per window: the larger of this and ``max_ejection_rate_fraction`` x n.
    max_ejections_per_window: int = 3
    max_ejection_rate_fraction: float = 0.05
    window_s: float = 60.0
    #: Whether workers a person took out (MAINTENANCE, a manual quarantine) use the automatic
    #: budget. Off: a degraded worker is ejected even while others are in maintenance — the
    #: incident's chain began with degraded servers kept online during maintenance.
    count_operator_out: bool = False


@dataclass(frozen=True, slots=True)
class Probes:
    """Known-answer probes on each worker's verify queue."""

    #: Seconds between probes of a worker in rotation (quarantined and probation workers are
    #: probed at this cadence too, always).
    every_s: float = 10.0
    #: An answer later than this is a soft signal.
    late_s: float = 5.0
    #: No answer after this counts against liveness.
    missing_s: float = 15.0
    #: The most probes the checker sends a second, fleet-wide: past ``every_s x max_per_s``
    #: workers (200 at the defaults), each worker in rotation is probed less often, never the
    #: broker and the checker more. Quarantined and probation workers go first.
    max_per_s: float = 20.0


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The whole policy. ``enforce=False`` is a dry run: transitions say ``enforced=False``."""

    thresholds: Mapping[str, Threshold] = field(default_factory=_default_thresholds)
    failures: Failures = field(default_factory=Failures)
    latency: Latency = field(default_factory=Latency)
    cost: Cost = field(default_factory=Cost)
    recovery: Recovery = field(default_factory=Recovery)
    sustained: Sustained = field(default_factory=Sustained)
    load: Load = field(default_factory=Load)
    healing: Healing = field(default_factory=Healing)
    backoff: Backoff = field(default_factory=Backoff)
    guard: Guard = field(default_factory=Guard)
    probes: Probes = field(default_factory=Probes)
    #: Seconds without any sign of life before a worker is OFFLINE (3 missed 2 s heartbeats).
    offline_after_s: float = 6.0
    #: Seconds a drain may take before the worker is quarantined anyway.
    drain_timeout_s: float = 60.0
    enforce: bool = True

    def __post_init__(self) -> None:
        _check_positive(self)
        for section in (self.failures, self.latency, self.cost, self.recovery, self.sustained,
                        self.load, self.healing, self.backoff, self.guard, self.probes):
            _check_positive(section)
        if not 0 < self.guard.max_ejected_fraction <= 1:
            raise ValueError("guard.max_ejected_fraction: must be in (0, 1]")
        if self.backoff.base_s > self.backoff.max_s:
            raise ValueError("backoff.base_s: must not exceed backoff.max_s")
        if not self.failures.soft_rate <= self.failures.hard_rate <= 1:
            raise ValueError("failures: need soft_rate <= hard_rate <= 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PolicyConfig:
        """Build from a parsed policy file; sections and keys as in docs/policy.md.

        Raises:
            ValueError: an unknown section or key, a wrong type, or a bad value; the message
                names the key.
        """
        kwargs: dict[str, Any] = {}
        defaults = cls()
        for key, value in data.items():
            if key not in _FIELDS:
                raise ValueError(f"{key}: unknown policy setting")
            if key == "thresholds":
                kwargs[key] = _thresholds(value)
            elif key in _SECTIONS:
                kwargs[key] = _section(key, _SECTIONS[key], value)
            else:
                kwargs[key] = _scalar(key, getattr(defaults, key), value)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None


_SECTIONS: dict[str, type] = {"failures": Failures, "latency": Latency, "cost": Cost,
                              "recovery": Recovery,
                              "sustained": Sustained, "load": Load, "healing": Healing,
                              "backoff": Backoff,
                              "guard": Guard,
                              "probes": Probes}
_FIELDS = {f.name for f in fields(PolicyConfig)}


def _check_positive(obj: Any) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            allowed_zero = f.name in ("jitter_s",)
            if value < 0 or (value == 0 and not allowed_zero):
                raise ValueError(f"{f.name}: must be > 0, got {value}")


def _scalar(key: str, default: Any, value: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{key}: must be true or false")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key}: must be an integer")
        return value
    if isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{key}: must be a number")
        return float(value)
    raise ValueError(f"{key}: unsupported setting")


def _section(name: str, kind: type, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: must be a table")
    defaults = kind()
    known = {f.name for f in fields(kind)}
    changes = {}
    for key, v in value.items():
        if key not in known:
            raise ValueError(f"{name}.{key}: unknown policy setting")
        changes[key] = _scalar(f"{name}.{key}", getattr(defaults, key), v)
    try:
        return dataclasses.replace(defaults, **changes)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _thresholds(value: Any) -> dict[str, Threshold]:
    if not isinstance(value, Mapping):
        raise ValueError("thresholds: must be a table of metrics")
    merged = _default_thresholds()
    for metric, limits in value.items():
        if not isinstance(limits, Mapping):
            raise ValueError(f"thresholds.{metric}: must be a table")
        current = merged.get(metric, Threshold())
        changes = {}
        for key, v in limits.items():
            if key not in ("soft", "hard", "peak_soft", "peak_hard"):
                raise ValueError(f"thresholds.{metric}.{key}: unknown limit")
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise ValueError(f"thresholds.{metric}.{key}: must be a number")
            changes[key] = None if v is None else float(v)
        try:
            merged[metric] = dataclasses.replace(current, **changes)
        except ValueError as exc:
            raise ValueError(f"thresholds.{metric}: {exc}") from None
    return merged
