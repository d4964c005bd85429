"""Wear measurement inside a worker: samples of the process tree, and smoothing with peaks
(the task statistics are in ``workers.task_stats``).

Times are passed in (``now``) so that everything here is testable without sleeping; only
``WearSampler`` touches the machine.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

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


def _running(proc: psutil.Process) -> bool:
    """Not a zombie (an exited child its parent has not reaped is no runaway)."""
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


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
