"""The checker's metrics of PRODUCT.md §11: names, labels, and what each value means."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import generate_latest

from healthcheck.actuator import InMemoryActuator
from healthcheck.metrics import Cumulative, QueueDepths, health_score, queue_label
from healthcheck.policy import PolicyConfig, Reading, State, WorkerHealth
from healthcheck.resume import resumed_fleet
from healthcheck.service import Checker
from healthcheck.store import InMemoryHealthStore
from tests.unit.test_checker import Clock, sample, wear_event
from workers import tally

#: PRODUCT.md §11, with the labels listed there.
CONTRACT = {
    "host_worker_state": {"worker", "state"},
    "host_worker_health_score": {"worker"},
    "host_worker_wear": {"worker", "metric"},
    "host_worker_transitions_total": {"worker", "from_state", "to_state", "reason"},
    "host_detection_seconds_bucket": {"le"},
    "host_drain_seconds_bucket": {"le"},
    "host_queue_healthy_consumers": {"queue"},
    "host_queue_messages": {"queue"},
    "host_fleet_workers": {"state"},
    "host_blast_radius_guard_engaged": set(),
    "host_probe_results_total": {"worker", "outcome"},
    "host_control_commands_total": {"command", "outcome"},
    "host_gate_requeued_total": {"worker", "queue"},
    "host_tasks_total": {"queue", "task", "outcome"},
    "host_task_runtime_seconds_bucket": {"queue", "task", "le"},
    "host_inbound_total": {"outcome"},
    "host_tweets_total": {"sentiment"},
}


def checker(clock: Clock, **kwargs: Any) -> Checker:
    return Checker.from_store(InMemoryHealthStore(), InMemoryActuator(), PolicyConfig(),
                              clock=clock, seed=1, **kwargs)


def busy_checker() -> Checker:
    """A checker that has seen reports, a drain, a probe and task events."""
    clock = Clock()
    c = checker(clock, depths=lambda: {"tweets": 7, "default": 0, "bulk": 2})
    for w in ("w1", "w2", "w3", "w4"):
        c.handle(wear_event(w, requeued={"tweets": 3}, inbound={"analysed": 5, "rejected": 1},
                            tweets={"positive": 2, "neutral": 2, "negative": 1}), clock())
    c.handle(wear_event("w1", cpu=99), clock())
    c.tick(clock())
    c.metrics.on_probe("w2", "ok")
    c.handle(wear_event("w2", task_outcomes={"tweets|host.analyse|succeeded": 1,
                                             "tweets|host.analyse|failed": 1,
                                             "tweets|host.analyse|rejected": 1},
                        task_runtimes={"tweets|host.analyse|0.005": 1,
                                       "tweets|host.analyse|sum_us": 4000}), clock())
    return c


class TestContract:
    def test_every_metric_of_the_contract_is_served_with_its_labels(self) -> None:
        c = busy_checker()
        seen: dict[str, set[str]] = {}
        for family in c.metrics.registry.collect():
            for s in family.samples:
                seen.setdefault(s.name, set()).update(s.labels)
        missing = {name for name in CONTRACT if name not in seen}
        assert not missing
        assert {name: seen[name] for name in CONTRACT} == CONTRACT

    def test_the_exposition_parses(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        text = generate_latest(busy_checker().metrics.registry).decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"host_worker_state", "host_tasks", "host_inbound"} <= names


class TestValues:
    def test_inflight_is_what_each_worker_last_said_it_holds(self) -> None:
        """host_worker_inflight: the work a queue's depth does not show (an autoscaler's
        trigger must count it), from each worker's last report."""
        clock = Clock()
        c = checker(clock)
        c.handle(wear_event("w1", inflight=3), clock())
        c.handle(wear_event("w2", inflight=0), clock())
        c.handle(wear_event("w1", inflight=2), clock())
        got = {s.labels["worker"]: s.value for f in c.metrics.registry.collect()
               for s in f.samples if s.name == "host_worker_inflight"}
        assert got == {"w1": 2, "w2": 0}

    def test_reported_counts_and_task_totals(self) -> None:
        c = busy_checker()
        assert sample(c, "host_inbound_total", outcome="analysed") == 20
        assert sample(c, "host_tweets_total", sentiment="negative") == 4
        assert sample(c, "host_gate_requeued_total", worker="w3", queue="tweets") == 3
        assert sample(c, "host_queue_messages", queue="tweets") == 7
        for outcome in ("succeeded", "failed", "rejected"):
            assert sample(c, "host_tasks_total", queue="tweets", task="host.analyse",
                          outcome=outcome) == 1
        assert sample(c, "host_task_runtime_seconds_count", queue="tweets",
                      task="host.analyse") == 1
        assert sample(c, "host_task_runtime_seconds_sum", queue="tweets",
                      task="host.analyse") == 0.004
        assert sample(c, "host_task_runtime_seconds_bucket", queue="tweets",
                      task="host.analyse", le="0.0025") == 0
        assert sample(c, "host_task_runtime_seconds_bucket", queue="tweets",
                      task="host.analyse", le="0.005") == 1

    def test_task_totals_survive_restarts_and_bound_their_labels(self) -> None:
        """Totals since each worker started: a restart (lower counts) starts from zero again
        without the fleet's total going back; a task that is not host's is ``other``."""
        clock = Clock()
        c = checker(clock)
        for n in (5, 8, 2):  # 5, then 3 more, then a restart with 2
            c.handle(wear_event("w1", task_outcomes={"tweets|host.analyse|succeeded": n,
                                                     "tweets|mine.task|failed": 1}), clock())
        assert sample(c, "host_tasks_total", queue="tweets", task="host.analyse",
                      outcome="succeeded") == 10
        assert sample(c, "host_tasks_total", queue="tweets", task="other",
                      outcome="failed") == 1

    def test_health_score(self) -> None:
        thresholds = PolicyConfig().thresholds
        w = WorkerHealth(name="w", since=0, last_seen=0)
        cpu = thresholds["cpu_percent"].hard
        assert cpu is not None
        assert health_score(w, {}, thresholds) == 1.0
        assert health_score(w, {"cpu_percent": Reading(cpu * 0.9, cpu)}, thresholds) == 0.1
        assert health_score(w, {"cpu_percent": Reading(cpu * 2, cpu * 2)}, thresholds) == 0.0
        out = WorkerHealth(name="w", since=0, last_seen=0, state=State.QUARANTINED)
        assert health_score(out, {}, thresholds) == 0.0
        # load a busy worker's progress excuses is capacity in use: it costs no health
        busy = WorkerHealth(name="w", since=0, last_seen=0, busy=f"cpu_percent {cpu * 0.9:g}",
                            busy_metrics=("cpu_percent",))
        assert health_score(busy, {"cpu_percent": Reading(cpu * 0.9, cpu)}, thresholds) == 1.0

    def test_queue_labels_are_bounded(self) -> None:
        assert [queue_label(q) for q in ("tweets", "host.verify.w1@x", "made-up", None)] == [
            "tweets", "verify", "other", "other"]

    def test_totals_never_go_back_when_a_worker_restarts(self) -> None:
        counts = Cumulative()
        counts.update("w1", "inbound", {"analysed": 10})
        counts.update("w1", "inbound", {"analysed": 15})
        counts.update("w1", "inbound", {"analysed": 4})  # restarted: counts from zero again
        counts.update("w2", "inbound", {"analysed": 1, "bogus": -3, "odd": "x"})
        assert counts.totals[("inbound", "analysed")] == 20

    def test_a_worker_long_offline_is_no_longer_exported(self) -> None:
        clock = Clock()
        c = checker(clock, forget_after_s=600)
        for w in ("w1", "w2"):
            c.handle(wear_event(w, requeued={"tweets": 1}), clock())
        c.metrics.on_probe("w1", "ok")
        clock.now += 30
        c.tick(clock())  # w1 and w2 silent: OFFLINE
        assert c.fleet.workers["w1"].state is State.OFFLINE
        assert sample(c, "host_worker_state", worker="w1", state="OFFLINE") == 1
        c.handle(wear_event("w2"), clock())
        clock.now += 601
        c.handle(wear_event("w2"), clock())
        c.tick(clock())
        assert sample(c, "host_worker_state", worker="w1", state="OFFLINE") is None
        assert sample(c, "host_probe_results_total", worker="w1", outcome="ok") is None
        assert sample(c, "host_gate_requeued_total", worker="w1", queue="tweets") is None
        assert sample(c, "host_worker_state", worker="w2", state="HEALTHY") == 1


    def test_a_worker_with_only_reported_series_is_forgotten_too(self) -> None:
        """Counted while this checker led, gone OFFLINE under another leader: its requeue series
        goes too, though this checker never counted a transition of it."""
        clock = Clock()
        store = InMemoryHealthStore()
        c = Checker.from_store(store, InMemoryActuator(), PolicyConfig(), clock=clock, seed=1,
                               forget_after_s=600)
        for w in ("w1", "w2"):
            c.handle(wear_event(w, requeued={"tweets": 2}), clock())
        assert sample(c, "host_gate_requeued_total", worker="w1", queue="tweets") == 2
        store.save([WorkerHealth(name="w1", state=State.OFFLINE, since=clock(),
                                 last_seen=clock())])
        c.fleet = resumed_fleet(store, PolicyConfig(), clock(), 1)  # as after a takeover
        clock.now += 601
        c.handle(wear_event("w2"), clock())
        c.tick(clock())
        assert sample(c, "host_gate_requeued_total", worker="w1", queue="tweets") is None
        assert sample(c, "host_gate_requeued_total", worker="w2", queue="tweets") == 2


class TestQueueDepths:
    def test_a_slow_broker_does_not_stall_a_scrape(self) -> None:
        release = threading.Event()
        second_read_started = threading.Event()
        calls: list[int] = []

        def slow() -> dict[str, int]:
            calls.append(1)
            if len(calls) > 1:
                second_read_started.set()
                release.wait(30)
            return {"tweets": len(calls)}

        now = Clock(0.0)
        depths = QueueDepths(slow, every_s=5.0, wait_s=10.0, clock=now)
        assert depths() == {"tweets": 1}  # the first read, waited for
        assert depths() == {"tweets": 1} and len(calls) == 1  # fresh: the broker is not asked
        depths.wait_s = 0.05
        now.now = 10.0
        assert depths() == {"tweets": 1}  # stale: a refresh started, the scrape did not wait
        assert second_read_started.wait(10)
        assert depths() == {"tweets": 1} and len(calls) == 2  # one refresh at a time
        release.set()

    def test_a_failing_broker_keeps_the_last_depths(self) -> None:
        answers: list[Any] = [{"tweets": 3}, RuntimeError("broker away")]

        def read() -> dict[str, int]:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer  # type: ignore[no-any-return]

        now = Clock(0.0)
        depths = QueueDepths(read, every_s=1.0, wait_s=1.0, clock=now)
        assert depths() == {"tweets": 3}
        now.now = 5.0
        assert depths() == {"tweets": 3}


class TestTally:
    def test_counts_work_queues_not_probes(self) -> None:
        tally.install()
        results = [{"status": "analysed", "label": "positive"},
                   {"status": "analysed", "label": "negative"},
                   {"status": "rejected", "reason": "not_json"}]
        tally.count(results, "tweets")
        tally.count(results, "host.verify.w1@x")
        assert tally.snapshot() == {"inbound": {"analysed": 2, "rejected": 1},
                                    "tweets": {"positive": 1, "neutral": 0, "negative": 1}}
