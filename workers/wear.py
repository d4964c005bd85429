"""Wear measurement inside a worker: samples, smoothing with peaks, and task statistics.

Times are passed in (``now``) so that everything here is testable without sleeping; only
``WearSampler`` touches the machine.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from broker_config.queues import queue_label
from broker_config.wear_event import RUNTIME_BUCKETS, WAIT_BUCKETS

#: Distinct exception class names a worker counts failures by; later ones count as ``other``.
MAX_EXCEPTION_NAMES = 20

#: EWMA weight of the newest sample: 0.3 forgets a one-second spike within a few seconds.
SMOOTHING = 0.3
#: How many samples the peak looks back over (10 s at the default 1 s interval).
PEAK_SAMPLES = 10


@dataclass
class Smoothed:
    """An exponentially smoothed value and the peak of the last ``window`` raw samples.

    With alpha 0.3, a steady 40 that spikes to 100 for one sample reads 58 (the peak reads 100),
    and is back under 47 three samples later.
    """

    alpha: float = SMOOTHING
    window: int = PEAK_SAMPLES
    value: float | None = None
    _peaks: deque[float] = field(default_factory=deque)

    def add(self, sample: float, peak: float | None = None) -> None:
        """Fold in one raw sample (or a window's mean, with its largest raw sample as ``peak``)."""
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)
        self._peaks.append(sample if peak is None else peak)
        while len(self._peaks) > self.window:
            self._peaks.popleft()

    @property
    def last(self) -> float:
        """The newest raw sample."""
        return self._peaks[-1] if self._peaks else 0.0

    @property
    def peak(self) -> float:
        """The largest raw sample in the window."""
        return max(self._peaks) if self._peaks else 0.0


@dataclass
class TaskWindow:
    """Task outcomes over a sliding window of ``window_s`` seconds (60 by default).

    Runtimes are kept per task (at most ``max_samples``) for percentiles.
    """

    window_s: float = 60.0
    max_samples: int = 2_000
    consecutive_failures: int = 0
    _events: deque[tuple[float, bool, float, float | None]] = field(default_factory=deque)

    def record(self, now: float, ok: bool, runtime: float, queue_wait: float | None = None) -> None:
        """One finished task."""
        self.consecutive_failures = 0 if ok else self.consecutive_failures + 1
        self._events.append((now, ok, runtime, queue_wait))
        while len(self._events) > self.max_samples:
            self._events.popleft()

    def snapshot(self, now: float) -> dict[str, Any]:
        """Counts, failure rate and percentiles over the window ending at ``now``."""
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()
        runtimes = sorted(e[2] for e in self._events)
        waits = sorted(e[3] for e in self._events if e[3] is not None)
        failed = sum(1 for e in self._events if not e[1])
        total = len(self._events)
        return {
            "completed": total - failed,
            "failed": failed,
            "failure_rate": failed / total if total else 0.0,
            "consecutive_failures": self.consecutive_failures,
            "runtime_p50": percentile(runtimes, 50),
            "runtime_p95": percentile(runtimes, 95),
            "queue_wait_p95": percentile(waits, 95),
        }


class ItemCost:
    """The worker's CPU milliseconds per item done (an input analysed, or a task settled),
    over the last ``window_s`` seconds: its cost per unit of work, which a busy worker keeps
    and a degraded one raises (docs/policy.md, "Cost per item").

    ``sample`` is called with each wear sample: ``cpu_percent`` the tree's share of the
    machine since the last one, ``done`` the items done since the worker started.

    Args:
        cores: the machine's CPUs (``cpu_percent`` is a share of all of them).
        window_s: how far back the cost is measured.
        min_items: fewer items than this in the window: no cost is said (None).
    """

    def __init__(self, cores: int, window_s: float = 10.0, min_items: int = 20) -> None:
        self.cores, self.window_s, self.min_items = cores, window_s, min_items
        self._cpu_s = 0.0
        self._at: float | None = None
        self._marks: deque[tuple[float, float, int]] = deque()

    def sample(self, now: float, cpu_percent: float, done: int) -> None:
        if self._at is not None:
            self._cpu_s += cpu_percent / 100 * self.cores * max(0.0, now - self._at)
        self._at = now
        if self._marks and done < self._marks[-1][2]:
            self._marks.clear()  # the count started again (it never goes back otherwise)
        self._marks.append((now, self._cpu_s, done))
        while len(self._marks) > 1 and self._marks[1][0] <= now - self.window_s:
            self._marks.popleft()

    def ms(self) -> float | None:
        """CPU milliseconds per item over the window (None: fewer than ``min_items``)."""
        if len(self._marks) < 2:
            return None
        (_, cpu0, done0), (_, cpu1, done1) = self._marks[0], self._marks[-1]
        items = done1 - done0
        return round(1000 * (cpu1 - cpu0) / items, 3) if items >= self.min_items else None


@dataclass
class Progress:
    """How long a worker has gone without getting anything done (no input analysed, no task
    finished): since the later of its last progress and the start of its current busy spell.
    Idle, it grows from the last thing done; a new task starts the clock again.

    ``sample`` is called with each wear sample: ``running`` tasks executing now, ``done`` a
    count that moves with every input or task done, ``now`` monotonic seconds.
    """

    _done: int | None = None
    _moved_at: float = 0.0
    _busy_since: float = 0.0
    _running: int = 0

    def sample(self, now: float, running: int, done: int) -> float:
        """Seconds of running without progress, as of ``now``."""
        if done != self._done:
            self._done, self._moved_at = done, now
        if running and not self._running:
            self._busy_since = now
        self._running = running
        return max(0.0, now - max(self._moved_at, self._busy_since))


class TaskTotals:
    """Task outcomes and runtimes since the worker started, as the wear report sends them
    (``task_outcomes`` and ``task_runtimes``: ``broker_config.wear_event``). The checker's
    ``host_tasks_total`` and ``host_task_runtime_seconds`` come from these, so that they need
    no Celery task events (which cost a plain Celery worker about a third of its throughput).

    Beside them, what the checker's celery-exporter families need (``docs/observability.md``):
    tasks received, started and revoked (``events``), failures by exception class
    (``exceptions``) and queue waits (``waits``).

    Labels are bounded here: a queue is a work queue's name, ``verify`` or ``other``; a task is
    its name when it is host's (``host.``), else ``other``; an exception is its class name, for
    the first ``MAX_EXCEPTION_NAMES`` of them, else ``other``.
    """

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.runtimes: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.exceptions: Counter[str] = Counter()
        self.waits: Counter[str] = Counter()
        self._exception_names: set[str] = set()

    def record(self, queue: str | None, task: str | None, outcome: str,
               runtime: float | None = None, wait: float | None = None,
               exception: str | None = None) -> None:
        """Count one settled task (its runtime when it succeeded; its queue wait and its
        exception's class name where known)."""
        prefix = _prefix(queue, task)
        self.outcomes[f"{prefix}|{outcome}"] += 1
        if outcome == "succeeded" and runtime is not None and runtime >= 0:
            _observe(self.runtimes, prefix, RUNTIME_BUCKETS, runtime)
        if wait is not None and wait >= 0:
            _observe(self.waits, prefix, WAIT_BUCKETS, wait)
        if exception is not None:
            if exception not in self._exception_names:
                if len(self._exception_names) >= MAX_EXCEPTION_NAMES:
                    exception = "other"
                else:
                    self._exception_names.add(exception)
            self.exceptions[f"{prefix}|{exception}"] += 1

    def event(self, queue: str | None, task: str | None, kind: str) -> None:
        """Count a task received, started or revoked."""
        self.events[f"{_prefix(queue, task)}|{kind}"] += 1


def _prefix(queue: str | None, task: str | None) -> str:
    return f"{queue_label(queue)}|{task if task and task.startswith('host.') else 'other'}"


def _observe(buckets: Counter[str], prefix: str, bounds: tuple[float, ...], value: float) -> None:
    """One observation into per-bucket counts (not cumulative) and their sum in microseconds."""
    bound = next((str(b) for b in bounds if value <= b), "inf")
    buckets[f"{prefix}|{bound}"] += 1
    buckets[f"{prefix}|sum_us"] += round(value * 1e6)


def _running(proc: psutil.Process) -> bool:
    """Not a zombie (an exited child its parent has not reaped is no runaway)."""
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class PowerMeter:
    """The machine's power draw from its RAPL energy counters (``/sys/class/powercap``, Intel's
    and recent AMD's): watts over the time since the last reading, summed over the packages
    (the top-level ``intel-rapl:N`` zones; their ``:M`` subzones are parts of them), and as a
    percent of the highest power limit the packages allow (their short-term limit, PL2, where
    they have one): drawing more than that is outside the hardware's own bounds, however busy.

    None where the machine has no such counters, or they cannot be read (they are root-only
    on some kernels); then power is not reported.

    Args:
        root: the powercap folder (a fake tree in tests).
    """

    def __init__(self, root: Path = Path("/sys/class/powercap")) -> None:
        self.zones = sorted(z for z in root.glob("intel-rapl:*") if z.name.count(":") == 1)
        self._last: dict[Path, tuple[float, int]] = {}

    def sample(self, now: float) -> tuple[float, float | None] | None:
        """(watts, percent of the power limit or None) since the last call (None at the first
        call, and when nothing can be read); ``now`` in monotonic seconds."""
        if not self.zones:
            return None
        watts, limit, measured = 0.0, 0.0, False
        for zone in self.zones:
            try:
                energy = int((zone / "energy_uj").read_text())
                wrap = int((zone / "max_energy_range_uj").read_text())
                limit += max((int(p.read_text()) for p in zone.glob("constraint_*_power_limit_uw")),
                             default=0) / 1e6
            except (OSError, ValueError):
                self.zones = []  # unreadable here: stop asking
                return None
            before = self._last.get(zone)
            self._last[zone] = (now, energy)
            if before is None or now <= before[0]:
                continue
            used = energy - before[1] if energy >= before[1] else energy + wrap - before[1]
            watts += used / 1e6 / (now - before[0])
            measured = True
        if not measured:
            return None
        return round(watts, 2), (round(100.0 * watts / limit, 2) if limit > 0 else None)


def memory_limit(configured: int, cgroup_root: Path = Path("/sys/fs/cgroup"),
                 self_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """The resident memory a worker may use: ``configured`` (HOST_WORKER_MEMORY_LIMIT) when
    set, else its cgroup v2 ``memory.max`` when that is a number (a container's limit), else
    None (no limit known: ``rss_percent`` is not reported)."""
    if configured > 0:
        return configured
    try:
        line = next(x for x in self_cgroup.read_text().splitlines() if x.startswith("0::"))
        raw = (cgroup_root / line[3:].lstrip("/") / "memory.max").read_text().strip()
    except (OSError, StopIteration):
        return None
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


class WearSampler:
    """Samples the machine and this worker's process tree: its main process, the pool
    processes, and whatever they started.

    ``cpu_percent`` is this worker's own share of the machine's CPUs (its process tree's CPU
    time over all cores), so that workers sharing a machine are told apart;
    ``machine_cpu_percent`` is the whole machine's. ``stray_processes`` counts the processes a
    pool process started that outlive the task that started them (under a pool process that
    runs no task now): a runaway child, which a restart of the pool ends.

    Args:
        busy: the pool processes running a task now (their pids); None: none known.
    """

    def __init__(self, pid: int | None = None, power: PowerMeter | None = None,
                 memory_limit: int | None = None,
                 busy: Callable[[], set[int]] | None = None) -> None:
        self._busy = busy or set
        self._proc = psutil.Process(pid or os.getpid())
        self._power = power or PowerMeter()
        self._memory_limit = memory_limit
        self._cores = psutil.cpu_count() or 1
        self._sensors = True
        self._nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._known: dict[int, psutil.Process] = {self._proc.pid: self._proc}
        psutil.cpu_percent(interval=None)  # the first calls only set the baselines
        self._proc.cpu_percent(interval=None)

    def sample(self) -> dict[str, float]:
        """One sample of every wear metric this machine has."""
        tree, strays = self._tree()
        rss = fds = 0
        cpu = 0.0
        for p in tree:
            try:
                rss += p.memory_info().rss
                fds += p.num_fds()
                cpu += p.cpu_percent(interval=None)
            except psutil.Error:  # a pool process may exit between listing and reading
                continue
        values = {
            "cpu_percent": min(100.0, cpu / self._cores),
            "machine_cpu_percent": psutil.cpu_percent(interval=None),
            "memory_percent": psutil.virtual_memory().percent,
            "rss_bytes": float(rss),
            **({"rss_percent": 100.0 * rss / self._memory_limit} if self._memory_limit else {}),
            "load_per_core": os.getloadavg()[0] / self._cores,
            "open_files": float(fds),
            "open_files_percent": 100.0 * fds / self._nofile if self._nofile > 0 else 0.0,
            "stray_processes": float(strays),
        }
        temperature = self._temperature()
        if temperature is not None:
            values["temperature_c"] = temperature
        power = self._power.sample(time.monotonic())
        if power is not None:
            values["power_w"] = power[0]
            if power[1] is not None:
                values["power_percent"] = power[1]
        return values

    def _tree(self) -> tuple[list[psutil.Process], int]:
        """Every process of the worker's tree, and how many of them are strays."""
        # Keep Process objects between samples: cpu_percent() measures since the last call.
        alive = {self._proc.pid: self._proc}
        busy = self._busy()
        strays = 0
        for pool_pid in self._child_pids(self._proc):
            pool = self._known_process(pool_pid, alive)
            if pool is None:
                continue
            for pid in self._descendants(pool):
                child = self._known_process(pid, alive)
                if child is not None and pool_pid not in busy and _running(child):
                    strays += 1
        self._known = alive
        return list(alive.values()), strays

    def _known_process(self, pid: int, alive: dict[int, psutil.Process]) -> psutil.Process | None:
        known = self._known.get(pid)
        if known is None:
            try:
                known = psutil.Process(pid)
            except psutil.Error:
                return None
        alive[pid] = known
        return known

    def _descendants(self, proc: psutil.Process) -> list[int]:
        """What a pool process started, and what those started, and so on."""
        found, todo = [], [proc]
        while todo:
            for pid in self._child_pids(todo.pop()):
                found.append(pid)
                with contextlib.suppress(psutil.Error):
                    todo.append(psutil.Process(pid))
        return found

    def _child_pids(self, proc: psutil.Process) -> list[int]:
        """The direct children's pids. Linux lists them per thread (``task/*/children``), a
        few small reads; psutil's ``children()`` reads every process of the machine (4 ms of
        CPU a sample here, 90% of the sample's cost)."""
        pid = proc.pid
        try:
            threads = os.listdir(f"/proc/{pid}/task")
            pids: list[int] = []
            for tid in threads:
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                    pids.extend(int(p) for p in f.read().split())
            return pids
        except (OSError, ValueError):
            try:
                return [c.pid for c in proc.children(recursive=False)]
            except psutil.Error:
                return []

    def _temperature(self) -> float | None:
        if not self._sensors:
            return None
        read = getattr(psutil, "sensors_temperatures", None)
        readings = read() if read else {}
        currents = [t.current for entries in readings.values() for t in entries if t.current]
        if not currents:
            self._sensors = False  # no sensors here: stop asking
            return None
        return float(max(currents))
