"""Wear measurement and fault injection, without a worker: explicit times, no sleeps."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from workers import inject
from workers.inject import InjectedFailure
from workers.shared import Injection, InjectionBoard
from workers.task_stats import Progress, TaskWindow, percentile
from workers.wear import PowerMeter, Smoothed, WearSampler, memory_limit


class TestSmoothed:
    def test_spike_is_damped_but_the_peak_remembers_it(self) -> None:
        """40 steady, one 100 spike: smoothed 58, peak 100; peak forgets after the window."""
        s = Smoothed(alpha=0.3, window=3)
        s.add(40)
        s.add(100)
        assert s.value == pytest.approx(58.0)
        assert s.peak == 100
        for _ in range(3):
            s.add(40)
        assert s.peak == 40
        assert s.value is not None and s.value < 47


class TestTaskWindow:
    def test_counts_rate_percentiles_and_consecutive_failures(self) -> None:
        """Outcomes in the window give counts, rate, p50/p95 and the failure streak."""
        w = TaskWindow(window_s=60)
        for i in range(18):
            w.record(now=i, ok=True, runtime=0.01 * (i + 1), queue_wait=0.5)
        w.record(now=18, ok=False, runtime=1.0)
        w.record(now=19, ok=False, runtime=1.0)
        snap = w.snapshot(now=20)
        assert (snap["completed"], snap["failed"]) == (18, 2)
        assert snap["failure_rate"] == pytest.approx(0.1)
        assert snap["consecutive_failures"] == 2
        assert snap["runtime_p50"] == pytest.approx(0.10)
        assert snap["runtime_p95"] == pytest.approx(1.0)
        assert snap["queue_wait_p95"] == 0.5

    def test_old_outcomes_leave_the_window(self) -> None:
        """Outcomes older than window_s no longer count."""
        w = TaskWindow(window_s=10)
        w.record(now=0, ok=False, runtime=1)
        w.record(now=15, ok=True, runtime=1)
        snap = w.snapshot(now=16)
        assert (snap["completed"], snap["failed"]) == (1, 0)

    def test_percentile_nearest_rank(self) -> None:
        """Nearest-rank: p50 of 1..4 is 2, p95 is 4, empty is None."""
        assert percentile([1, 2, 3, 4], 50) == 2
        assert percentile([1, 2, 3, 4], 95) == 4
        assert percentile([], 50) is None


class TestProgress:
    def test_running_with_nothing_done_is_a_stall_and_anything_done_ends_it(self) -> None:
        p = Progress()
        assert p.sample(0.0, 0, 0) == 0.0  # idle, just started
        assert p.sample(0.25, 2, 0) == 0.0  # a busy spell starts the clock
        assert p.sample(1.25, 2, 0) == 1.0  # nothing done for a second
        assert p.sample(1.5, 2, 1) == 0.0  # an input done
        assert p.sample(2.0, 2, 5) == 0.0
        assert p.sample(3.5, 2, 5) == 1.5

    def test_idle_counts_from_the_last_thing_done(self) -> None:
        p = Progress()
        p.sample(0.0, 1, 0)
        p.sample(1.0, 1, 10)
        assert p.sample(1.5, 0, 10) == 0.5  # the backlog ran out half a second ago
        assert p.sample(4.0, 0, 10) == 3.0
        assert p.sample(4.25, 1, 10) == 0.0  # new work: its own clock


def rapl(root: Path, zone: str, energy_uj: int, limits_uw: tuple[int, ...] = (),
         wrap: int = 262_143_328_850) -> None:
    """One zone of a fake /sys/class/powercap tree, as the kernel lays it out."""
    d = root / zone
    d.mkdir(parents=True, exist_ok=True)
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{wrap}\n")
    (d / "name").write_text("package-0\n")
    for i, limit in enumerate(limits_uw):
        (d / f"constraint_{i}_power_limit_uw").write_text(f"{limit}\n")


class TestPowerMeter:
    def test_watts_over_the_packages_and_percent_of_their_highest_limit(self, tmp_path: Path
                                                                         ) -> None:
        rapl(tmp_path, "intel-rapl:0", 1_000_000, (65_000_000, 95_000_000))
        rapl(tmp_path, "intel-rapl:0:0", 500_000)  # a subzone: part of package 0, not added
        rapl(tmp_path, "intel-rapl:1", 7_000_000, (65_000_000, 95_000_000))
        meter = PowerMeter(tmp_path)
        assert [z.name for z in meter.zones] == ["intel-rapl:0", "intel-rapl:1"]
        assert meter.sample(100.0) is None  # the first reading only sets the baseline
        rapl(tmp_path, "intel-rapl:0", 1_000_000 + 120_000_000, (65_000_000, 95_000_000))
        rapl(tmp_path, "intel-rapl:0:0", 99_000_000)
        rapl(tmp_path, "intel-rapl:1", 7_000_000 + 80_000_000, (65_000_000, 95_000_000))
        # 200 J over 2 s, against 95 + 95 W
        assert meter.sample(102.0) == (100.0, round(100 * 100 / 190, 2))

    def test_a_counter_that_wraps_is_read_across_the_wrap(self, tmp_path: Path) -> None:
        rapl(tmp_path, "intel-rapl:0", 999_000_000, (50_000_000,), wrap=1_000_000_000)
        meter = PowerMeter(tmp_path)
        meter.sample(0.0)
        rapl(tmp_path, "intel-rapl:0", 9_000_000, (50_000_000,), wrap=1_000_000_000)
        assert meter.sample(1.0) == (10.0, 20.0)  # 1 J to the wrap, 9 J after it

    def test_no_counters_or_unreadable_ones_report_nothing(self, tmp_path: Path) -> None:
        assert PowerMeter(tmp_path / "absent").sample(1.0) is None
        rapl(tmp_path, "intel-rapl:0", 5)
        (tmp_path / "intel-rapl:0" / "energy_uj").write_text("denied\n")
        meter = PowerMeter(tmp_path)
        assert meter.sample(1.0) is None and meter.zones == []  # stops asking

    def test_the_sampler_reports_power_and_the_policy_judges_it_as_wear(self, tmp_path: Path
                                                                       ) -> None:
        from healthcheck.policy import PolicyConfig, Reading, WearReport
        from healthcheck.policy.detectors import assess

        rapl(tmp_path, "intel-rapl:0", 0, (100_000_000,))
        meter = PowerMeter(tmp_path)
        sampler = WearSampler(power=meter)
        assert "power_w" not in sampler.sample()
        rapl(tmp_path, "intel-rapl:0", 10**9, (100_000_000,))
        values = sampler.sample()
        assert values["power_w"] > 0 and values["power_percent"] > 0
        # A busy worker (progress made) over its power limit is still worn
        busy_over = WearReport("w", 0.0, {"power_percent": Reading(112.0, 112.0, 112.0),
                                          "cpu_percent": Reading(99.0, 99.0, 99.0)},
                               running=2, stalled_s=0.01)
        verdict = assess(busy_over, PolicyConfig())
        assert verdict.level == "hard" and "power_percent 112 >= hard 110" in verdict.reason
        assert verdict.busy == ("cpu_percent",)


class TestMemoryLimit:
    def test_configured_then_the_cgroup_then_none(self, tmp_path: Path) -> None:
        cgroup = tmp_path / "proc-self-cgroup"
        cgroup.write_text("0::/system.slice/host-worker@1.service\n")
        unit = tmp_path / "system.slice" / "host-worker@1.service"
        unit.mkdir(parents=True)
        (unit / "memory.max").write_text("536870912\n")
        assert memory_limit(1024, tmp_path, cgroup) == 1024
        assert memory_limit(0, tmp_path, cgroup) == 536870912
        (unit / "memory.max").write_text("max\n")  # no limit set on the cgroup
        assert memory_limit(0, tmp_path, cgroup) is None
        assert memory_limit(0, tmp_path, tmp_path / "absent") is None

    def test_rss_percent_is_reported_against_the_limit(self) -> None:
        values = WearSampler(memory_limit=2**40).sample()
        assert 0 < values["rss_percent"] < 1 and values["rss_bytes"] > 0
        assert "rss_percent" not in WearSampler().sample()

    def test_leak_holds_what_it_allocates(self) -> None:
        before = len(inject._LEAKED)
        inject.leak(1.0)
        assert len(inject._LEAKED) == before + 1 and len(inject._LEAKED[-1]) == 2**20
        inject._LEAKED.pop()


class TestSampler:
    def test_sample_has_every_metric(self) -> None:
        """One sample of this process has CPU, memory, RSS, load, open files."""
        sample = WearSampler().sample()
        for key in ("cpu_percent", "machine_cpu_percent", "memory_percent", "rss_bytes",
                    "load_per_core", "open_files", "open_files_percent"):
            assert key in sample
        assert sample["rss_bytes"] > 0
        assert 0 <= sample["memory_percent"] <= 100

    def test_strays_are_what_an_idle_pool_process_left_running(self) -> None:
        """This test's process stands for a worker's main process, a child of it for a pool
        process, and what that child starts for a task's children: counted as strays while the
        pool process runs no task, not while it does; a zombie is not counted."""
        pool = subprocess.Popen([sys.executable, "-c", (
            "import subprocess, time\n"
            "subprocess.Popen(['sleep', '30'])\n"
            "subprocess.Popen(['true']).wait(); z = subprocess.Popen(['true'])\n"  # z: a zombie
            "time.sleep(30)\n")])
        try:
            busy: set[int] = set()
            sampler = WearSampler(busy=lambda: busy)
            deadline = time.monotonic() + 10
            while sampler.sample()["stray_processes"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # the zombie is there too by now
            assert sampler.sample()["stray_processes"] == 1
            busy.add(pool.pid)
            assert sampler.sample()["stray_processes"] == 0
        finally:
            for child in psutil.Process(pool.pid).children(recursive=True):
                child.kill()
            pool.kill()
            pool.wait()


class TestInjection:
    def test_parse_round_trip(self) -> None:
        """A spec parses into fields and renders back canonically."""
        inj = Injection.parse(" cpu=97, fail_rate=0.5,slow=2 ")
        assert (inj.cpu, inj.fail_rate, inj.slow) == (97, 0.5, 2)
        assert inj.spec() == "cpu=97,fail_rate=0.5,slow=2"
        assert Injection.parse("").active is False

    @pytest.mark.parametrize("bad", ["cpu", "gpu=3", "cpu=hot", "fail_rate=1.5", "slow=-1"])
    def test_bad_specs_are_refused(self, bad: str) -> None:
        """Unknown keys, non-numbers and out-of-range values are refused."""
        with pytest.raises(ValueError):
            Injection.parse(bad)

    def test_board_publishes_changes(self) -> None:
        """A board set in one place is read everywhere it is shared."""
        board = InjectionBoard("cpu=90")
        assert board.get().cpu == 90
        board.set("")
        assert not board.get().active
        with pytest.raises(ValueError):
            board.set("nonsense=1")
        assert not board.get().active

    def test_before_task_fails_and_slows_on_demand(self) -> None:
        """fail_rate fails when the draw is below it; slow sleeps that long."""
        slept: list[float] = []
        inj = Injection(fail_rate=0.5, slow=1.5)
        with pytest.raises(InjectedFailure):
            inject.before_task(inj, draw=0.2, sleep=slept.append)
        inject.before_task(inj, draw=0.7, sleep=slept.append)
        assert slept == [1.5, 1.5]

    def test_spin_burns_the_cpu_before_the_task(self) -> None:
        """spin burns (it does not sleep): the process's CPU time grows by about as much."""
        burnt: list[float] = []
        inject.before_task(Injection(spin=2.0), draw=0.9, sleep=None, burn=burnt.append)
        assert burnt == [2.0]
        cpu = time.thread_time()
        inject.spin_for(0.2)
        assert time.thread_time() - cpu >= 0.2

    def test_distort_moves_compound_and_keeps_it_plausible(self) -> None:
        """Wrong answers shift compound by 0.1 and relabel; rejections are untouched."""
        result = {"status": "analysed", "compound": 0.02, "label": "neutral"}
        wrong = inject.distort(result, Injection(wrong_answers=1), draw=0.3)
        assert wrong["compound"] == pytest.approx(0.12)
        assert wrong["label"] == "positive"
        assert inject.distort(result, Injection(wrong_answers=0.2), draw=0.3) == result
        rejected = {"status": "rejected", "reason": "x"}
        assert inject.distort(rejected, Injection(wrong_answers=1), draw=0) == rejected


class TestTaskTotals:
    def test_outcomes_and_runtime_buckets_with_bounded_labels(self) -> None:
        """What the report sends for the checker's task metrics: totals by queue, task and
        outcome, runtimes in fixed buckets (not cumulative) with their sum; queues and tasks
        that are not host's are ``other``, a verify queue is ``verify``."""
        from workers.task_stats import TaskTotals

        t = TaskTotals()
        t.record("tweets", "host.analyse", "succeeded", 0.004)
        t.record("tweets", "host.analyse", "succeeded", 0.2)
        t.record("tweets", "host.analyse", "failed", 0.1)
        t.record("host.verify.w1@x", "host.probe", "succeeded", 99.0)
        t.record("their-queue", "their.task", "rejected")
        assert t.outcomes == {"tweets|host.analyse|succeeded": 2, "tweets|host.analyse|failed": 1,
                              "verify|host.probe|succeeded": 1, "other|other|rejected": 1}
        assert t.runtimes == {"tweets|host.analyse|0.005": 1, "tweets|host.analyse|0.25": 1,
                              "tweets|host.analyse|sum_us": 204000,
                              "verify|host.probe|inf": 1, "verify|host.probe|sum_us": 99000000}

    def test_events_exceptions_and_waits_for_the_celery_exporter_families(self) -> None:
        from workers.task_stats import MAX_EXCEPTION_NAMES, TaskTotals

        t = TaskTotals()
        t.event("tweets", "host.analyse", "received")
        t.event("tweets", "host.analyse", "received")
        t.event("tweets", "host.analyse", "started")
        t.record("tweets", "host.analyse", "succeeded", 0.01, wait=0.3)
        t.record("tweets", "host.analyse", "failed", 0.01, exception="ValueError")
        assert t.events == {"tweets|host.analyse|received": 2, "tweets|host.analyse|started": 1}
        assert t.waits == {"tweets|host.analyse|0.5": 1, "tweets|host.analyse|sum_us": 300000}
        assert t.exceptions == {"tweets|host.analyse|ValueError": 1}
        for i in range(MAX_EXCEPTION_NAMES + 5):  # names beyond the bound count as other
            t.record("tweets", "host.analyse", "failed", exception=f"Error{i}")
        names = {k.rsplit("|", 1)[1] for k in t.exceptions}
        assert len(names) == MAX_EXCEPTION_NAMES + 1 and "other" in names
        assert t.exceptions["tweets|host.analyse|other"] == 6
        assert sum(t.exceptions.values()) == t.outcomes["tweets|host.analyse|failed"]


class TestSmoothedLast:
    def test_smoothed_keeps_the_last_raw_sample(self) -> None:
        s = Smoothed()
        for x in (10.0, 100.0, 20.0):
            s.add(x)
        assert (s.last, s.peak) == (20.0, 100.0)


class TestItemCost:
    def test_cpu_per_item_over_the_window(self) -> None:
        """Two cores, the tree at 25 % of the machine (half a core): 0.5 CPU-s a second; 50
        items a second: 10 ms an item."""
        from workers.task_stats import ItemCost

        cost = ItemCost(cores=2, window_s=10.0, min_items=20)
        for i in range(21):
            cost.sample(float(i), 25.0, 50 * i)
        assert cost.ms() == 10.0

    def test_too_few_items_say_nothing_and_a_restart_starts_again(self) -> None:
        from workers.task_stats import ItemCost

        cost = ItemCost(cores=1, window_s=10.0, min_items=20)
        for i in range(5):
            cost.sample(float(i), 50.0, i)  # 4 items in the window
        assert cost.ms() is None
        for i in range(5, 30):
            cost.sample(float(i), 50.0, 10 * i)
        assert cost.ms() == 50.0  # 0.5 CPU-s a second, 10 items a second
        cost.sample(30.0, 50.0, 3)  # the count started again
        assert cost.ms() is None



def test_a_drain_waits_for_work_not_for_the_checkers_probes() -> None:
    """What a worker says it holds (its drain is done at 0): work-queue tasks, running or
    reserved; a probe on its verify queue is not work."""
    from celery.worker import state as worker_state

    from workers.gate import holding_work
    from workers.runtime import RUNTIME

    class Held:  # a request as far as holding_work reads it (hashable, as Celery's are)
        def __init__(self, queue: str) -> None:
            self.delivery_info = {"routing_key": queue}

    def held(queue: str) -> Held:
        return Held(queue)

    probe, work, more = held("host.verify.w1@x"), held("tweets"), held("bulk")
    saved = RUNTIME.verify_queue
    RUNTIME.verify_queue = "host.verify.w1@x"
    worker_state.active_requests.add(probe)
    worker_state.active_requests.add(work)
    worker_state.reserved_requests.add(more)
    try:
        assert holding_work() == 2
        worker_state.active_requests.discard(work)
        worker_state.reserved_requests.discard(more)
        assert holding_work() == 0  # only the probe left
    finally:
        worker_state.active_requests.discard(probe)
        worker_state.active_requests.discard(work)
        worker_state.reserved_requests.discard(more)
        RUNTIME.verify_queue = saved
