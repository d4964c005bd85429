"""celery-exporter's families on the checker (HOST_CELERY_EXPORTER_METRICS): the names, types and
labels celery-exporter exports, what each counts, and what a worker out of rotation on purpose
reads as (alive)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from healthcheck.actuator import InMemoryActuator
from healthcheck.metrics.celery_exporter import hostname_of
from healthcheck.policy import Cause, PolicyConfig, State, WorkerHealth
from healthcheck.service import Checker
from healthcheck.store import InMemoryHealthStore
from tests.unit.test_checker import Clock, sample, wear_event

#: celery-exporter's families (at 95e8e492): type and labels.
CELERY_EXPORTER = {
    **{f"celery_task_{e}": ("counter", {"name", "hostname", "queue_name"})
       for e in ("sent", "received", "started", "succeeded", "rejected", "revoked", "retried")},
    "celery_task_failed": ("counter", {"name", "hostname", "queue_name", "exception"}),
    "celery_task_runtime": ("histogram", {"name", "hostname", "queue_name"}),
    "celery_task_queue_wait_time": ("histogram", {"name", "hostname", "queue_name"}),
    "celery_worker_up": ("gauge", {"hostname"}),
    "celery_worker_tasks_active": ("gauge", {"hostname"}),
    "celery_queue_length": ("gauge", {"queue_name"}),
    "celery_active_worker_count": ("gauge", {"queue_name"}),
    "celery_active_consumer_count": ("gauge", {"queue_name"}),
}

A = "tweets|host.analyse"


def fleet_checker(clock: Clock, stored: list[WorkerHealth] | None = None,
                  export: bool = True) -> Checker:
    store = InMemoryHealthStore()
    if stored:
        store.save(stored)
    c = Checker.from_store(store, InMemoryActuator(), PolicyConfig(), clock=clock, seed=1,
                           depths=lambda: {"tweets": 7, "bulk": 0})
    if export:
        c.metrics.export_celery_families()
    return c


def report(c: Checker, clock: Clock, worker: str, **counts: dict[str, int]) -> None:
    """A wear report of two running tasks and these totals since the worker started."""
    event = wear_event(worker, running=2)
    event.update(counts)
    c.handle(event, clock())


def value(c: Checker, metric: str, **labels: str) -> float | None:
    """A sample by its labels, ``task`` standing for celery-exporter's ``name`` label."""
    if "task" in labels:
        labels["name"] = labels.pop("task")
    return c.metrics.registry.get_sample_value(metric, labels)


def families(c: Checker) -> dict[str, tuple[str, set[str]]]:
    text = generate_latest(c.metrics.registry).decode()
    found = {}
    for f in text_string_to_metric_families(text):
        if f.name.startswith("celery_"):
            labels = {k for s in f.samples for k in s.labels if k != "le"}
            found[f.name] = (f.type, labels)
    return found


class TestNamesTypesLabels:
    def test_every_family_of_celery_exporter_with_its_type_and_labels(self) -> None:
        clock = Clock()
        c = fleet_checker(clock)
        report(c, clock, "w1@a", task_outcomes={f"{A}|succeeded": 1, f"{A}|failed": 1},
               task_events={f"{A}|received": 2}, task_exceptions={f"{A}|ValueError": 1},
               task_runtimes={f"{A}|0.005": 1, f"{A}|sum_us": 4000},
               task_waits={f"{A}|0.01": 2, f"{A}|sum_us": 15000})
        assert families(c) == CELERY_EXPORTER

    def test_nothing_of_it_unless_asked_for(self) -> None:
        clock = Clock()
        c = fleet_checker(clock, export=False)
        report(c, clock, "w1@a", task_outcomes={f"{A}|succeeded": 1})
        assert families(c) == {}
        assert sample(c, "host_tasks_total", queue="tweets", task="host.analyse",
                      outcome="succeeded") == 1


class TestCounts:
    def test_totals_by_hostname_and_every_counter_for_every_label_set(self) -> None:
        clock = Clock()
        c = fleet_checker(clock)
        report(c, clock, "w1@a", task_outcomes={f"{A}|succeeded": 5, f"{A}|rejected": 1},
               task_events={f"{A}|received": 7, f"{A}|started": 6})
        report(c, clock, "w2@a", task_outcomes={f"{A}|succeeded": 3, f"{A}|retried": 1},
               task_events={f"{A}|received": 4, f"{A}|started": 4, f"{A}|revoked": 1})
        report(c, clock, "w3@b", task_events={f"{A}|received": 1})
        labels = {"task": "host.analyse", "queue_name": "tweets"}

        def count(event: str, host: str) -> float | None:
            return value(c, f"celery_task_{event}_total", hostname=host, **labels)

        assert [count(e, "a") for e in ("received", "started", "succeeded", "rejected",
                                        "revoked", "retried", "sent")] == [11, 10, 8, 1, 1, 1, 0]
        # celery-exporter's zeros: a label set seen once has every counter
        assert [count(e, "b") for e in ("received", "succeeded", "sent")] == [1, 0, 0]
        assert value(c, "celery_task_failed_total", hostname="b", exception="", **labels) == 0

    def test_failures_by_exception_and_the_unnamed_rest(self) -> None:
        clock = Clock()
        c = fleet_checker(clock)
        report(c, clock, "w1@a", task_outcomes={f"{A}|failed": 5},
               task_exceptions={f"{A}|ValueError": 2, f"{A}|KeyError": 1})
        labels = {"task": "host.analyse", "queue_name": "tweets", "hostname": "a"}
        by_exception = {e: value(c, "celery_task_failed_total", exception=e, **labels)
                        for e in ("", "ValueError", "KeyError", "UnknownException")}
        assert by_exception == {"": 0, "ValueError": 2, "KeyError": 1, "UnknownException": 2}

    def test_histograms_are_cumulative_with_their_sum(self) -> None:
        clock = Clock()
        c = fleet_checker(clock)
        report(c, clock, "w1@a", task_runtimes={f"{A}|0.005": 2, f"{A}|0.1": 1, f"{A}|inf": 1,
                                                f"{A}|sum_us": 40_210_000})
        labels = {"task": "host.analyse", "queue_name": "tweets", "hostname": "a"}
        assert value(c, "celery_task_runtime_bucket", le="0.005", **labels) == 2
        assert value(c, "celery_task_runtime_bucket", le="0.25", **labels) == 3
        assert value(c, "celery_task_runtime_bucket", le="+Inf", **labels) == 4
        assert value(c, "celery_task_runtime_count", **labels) == 4
        assert value(c, "celery_task_runtime_sum", **labels) == 40.21

    def test_a_restarted_worker_keeps_the_counters_growing(self) -> None:
        clock = Clock()
        c = fleet_checker(clock)
        report(c, clock, "w1@a", task_outcomes={f"{A}|succeeded": 9})
        report(c, clock, "w1@a", task_outcomes={f"{A}|succeeded": 2})  # restarted from zero
        assert value(c, "celery_task_succeeded_total", task="host.analyse", hostname="a",
                      queue_name="tweets") == 11


class TestWorkerUp:
    def test_out_of_rotation_on_purpose_is_up_and_offline_is_down(self) -> None:
        clock = Clock()
        stored = [WorkerHealth("q@quarantined", State.QUARANTINED, cause=Cause.WEAR, since=990,
                               last_seen=990, queues=("tweets",)),
                  WorkerHealth("m@maintenance", State.MAINTENANCE, cause=Cause.OPERATOR,
                               since=990, last_seen=990, queues=("tweets",)),
                  WorkerHealth("h@healthy", State.HEALTHY, since=990, last_seen=990,
                               queues=("tweets",)),
                  WorkerHealth("x@gone", State.OFFLINE, since=990, last_seen=990,
                               queues=("tweets",))]
        c = fleet_checker(clock, stored)
        for w in ("q@quarantined", "m@maintenance", "h@healthy"):
            report(c, clock, w)
        up = {h: value(c, "celery_worker_up", hostname=h)
              for h in ("quarantined", "maintenance", "healthy", "gone")}
        assert up == {"quarantined": 1, "maintenance": 1, "healthy": 1, "gone": 0}
        assert value(c, "celery_worker_tasks_active", hostname="healthy") == 2
        assert value(c, "celery_worker_tasks_active", hostname="gone") == 0
        # beside it, host's word on why, joined by hostname
        assert sample(c, "host_worker_state", worker="q@quarantined", state="QUARANTINED") == 1
        assert sample(c, "host_worker_info", worker="q@quarantined", hostname="quarantined") == 1

    def test_a_hostname_is_up_while_any_of_its_workers_is(self) -> None:
        clock = Clock()
        stored = [WorkerHealth("w1@a", State.OFFLINE, since=990, last_seen=990,
                               queues=("tweets",)),
                  WorkerHealth("w2@a", State.HEALTHY, since=990, last_seen=990,
                               queues=("tweets",))]
        c = fleet_checker(clock, stored)
        report(c, clock, "w2@a")
        assert value(c, "celery_worker_up", hostname="a") == 1
        assert value(c, "celery_worker_tasks_active", hostname="a") == 2

    def test_queue_length_and_active_workers(self) -> None:
        clock = Clock()
        c = fleet_checker(clock)
        for w in ("w1@a", "w2@b"):
            report(c, clock, w)
        assert value(c, "celery_queue_length", queue_name="tweets") == 7
        assert value(c, "celery_active_worker_count", queue_name="tweets") == 2
        assert value(c, "celery_active_consumer_count", queue_name="tweets") == 2

    def test_a_standby_exports_no_gauges(self) -> None:
        clock = Clock()
        c = fleet_checker(clock)
        report(c, clock, "w1@a", task_outcomes={f"{A}|succeeded": 1})
        c.metrics.leading(False)
        names = set(families(c))
        assert "celery_worker_up" not in names and "celery_queue_length" not in names
        assert "celery_task_succeeded" in names


def test_hostname_is_the_part_after_the_at() -> None:
    assert [hostname_of(n) for n in ("celery@pod-7f9", "w1@vm", "bare")] == ["pod-7f9", "vm",
                                                                           "bare"]
