"""celery-exporter's metric families, from what the checker already hears
(``HOST_CELERY_EXPORTER_METRICS``).

Teams that watch Celery through celery-exporter's families (its celery-mixin dashboards and
alerts) can scrape the checker instead: the names, types and labels below are celery-exporter's,
and so is what each counts. They are computed from the totals in workers' wear reports (no Celery
task events, no second consumer of them), so they cost the fleet nothing more.

- ``celery_task_{received,started,succeeded,failed,rejected,revoked,retried}_total``
  {name, hostname, queue_name} (failed: and exception), from each worker's totals;
  ``celery_task_sent_total`` the same, always 0: producers send no ``task-sent`` events
  (Celery's default, as under celery-exporter).
- ``celery_task_runtime`` (succeeded tasks) and ``celery_task_queue_wait_time`` (from the
  producer's send to the start, where the producer stamped it): histograms, same labels.
- ``celery_worker_up`` and ``celery_worker_tasks_active`` {hostname}: the checker's records and
  the workers' reports; ``celery_queue_length`` and ``celery_active_{worker,consumer}_count``
  {queue_name}: the broker's depths and the workers in rotation consuming each work queue.

Where host's word differs from a heartbeat's, it is said here, once:

- ``celery_worker_up`` is 1 for every worker the checker hears, whatever its state: a worker host
  took out of rotation on purpose (DRAINING, QUARANTINED, PROBATION, MAINTENANCE) is alive, and
  the mixin's ``CeleryWorkerDown`` must not page for it. It is 0 only for OFFLINE (no heartbeat).
  Why a worker is out is host's own ``host_worker_state``; ``host_worker_info`` joins the two.
- ``hostname`` is celery-exporter's: the part of the node name after ``@``. Workers sharing one
  (several on one machine) are summed, and up while any of them is.
- Task names are host's (``host.*``) or ``other``; queues are work queues, ``verify`` or
  ``other``: labels stay bounded, as in host's own families.
- The gauges are exported by the leading checker only, so that counting workers over several
  checkers counts each once; counters are counted by whichever checker leads (the others'
  stop growing), so that sums of their increases stay right.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping

from celery.utils.nodenames import nodesplit
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from broker_config.queues import WORK_QUEUES
from broker_config.wear_event import RUNTIME_BUCKETS, WAIT_BUCKETS
from healthcheck.metrics.reported import Cumulative
from healthcheck.metrics.tasks import cumulative
from healthcheck.policy import Fleet, State, WorkerHealth

#: celery-exporter's task counters, in its order, with its help texts' meaning.
TASK_EVENTS = {
    "sent": "Tasks published (host's producers send no task-sent events: always 0)",
    "received": "Tasks a worker received",
    "started": "Tasks a worker started",
    "succeeded": "Tasks that succeeded",
    "failed": "Tasks that failed, by exception class",
    "rejected": "Tasks a worker rejected (host: handed back unstarted by a closed gate)",
    "revoked": "Tasks revoked",
    "retried": "Tasks that failed and will be retried",
}
#: The report kinds each counter family is read from.
_COUNT_KINDS = ("task_outcomes", "task_events")
#: What celery-exporter names a failure whose exception it cannot tell.
UNKNOWN_EXCEPTION = "UnknownException"

Key = tuple[str, str, str]  # (name, hostname, queue_name)


def hostname_of(worker: str) -> str:
    """celery-exporter's ``hostname`` label: the node name after ``@``."""
    return nodesplit(worker)[1] or worker


class CeleryExporterFamilies(Collector):
    """celery-exporter's families, on the checker's registry.

    Args:
        counts: the reported totals, by worker.
        fleet: returns the live fleet.
        exported: the workers still exported (host's own families' rule).
        running: returns the tasks each worker last said were executing.
        depths: returns the work queues' depths (None: ``celery_queue_length`` not exported).
        leads: whether this checker leads now (the gauges are the leader's alone).
    """

    def __init__(self, counts: Cumulative, fleet: Callable[[], Fleet],
                 exported: Callable[[Fleet], list[WorkerHealth]],
                 running: Callable[[], Mapping[str, int]],
                 depths: Callable[[], Mapping[str, int]] | None,
                 leads: Callable[[], bool]) -> None:
        self.counts, self.fleet, self.exported = counts, fleet, exported
        self.running, self.depths, self.leads = running, depths, leads

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        yield from self._task_families()
        if self.leads():
            yield from self._gauges()

    def _task_families(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        events: defaultdict[Key, Counter[str]] = defaultdict(Counter)
        exceptions: defaultdict[Key, Counter[str]] = defaultdict(Counter)
        runtimes: defaultdict[Key, Counter[str]] = defaultdict(Counter)
        waits: defaultdict[Key, Counter[str]] = defaultdict(Counter)
        into = {"task_outcomes": events, "task_events": events, "task_exceptions": exceptions,
                "task_runtimes": runtimes, "task_waits": waits}
        for (worker, kind, label), n in self.counts.by_worker.items():
            parts = label.split("|")
            if kind in into and len(parts) == 3:
                queue, task, last = parts
                into[kind][(task, hostname_of(worker), queue)][last] += n
        keys = sorted(events)  # every label set seen gets every counter (celery-exporter's 0s)
        for event, help_text in TASK_EVENTS.items():
            labels = ["name", "hostname", "queue_name"]
            family = CounterMetricFamily(f"celery_task_{event}", help_text,
                                         labels=[*labels, "exception"] if event == "failed"
                                         else labels)
            for key in keys:
                if event == "failed":
                    for exception, n in _failures(events[key]["failed"], exceptions[key]):
                        family.add_metric([*key, exception], n)
                else:
                    family.add_metric(list(key), events[key][event])
            yield family
        yield _histogram("celery_task_runtime", "Runtime of succeeded tasks, in seconds",
                         runtimes, RUNTIME_BUCKETS)
        yield _histogram("celery_task_queue_wait_time", "Seconds from a task's publication to "
                         "its start (tasks whose producer stamped it)", waits, WAIT_BUCKETS)

    def _gauges(self) -> Iterator[GaugeMetricFamily]:
        fleet = self.fleet()
        running = self.running()
        up: dict[str, int] = {}
        active: Counter[str] = Counter()
        for w in self.exported(fleet):
            host = hostname_of(w.name)
            alive = w.state is not State.OFFLINE
            up[host] = max(up.get(host, 0), int(alive))
            active[host] += running.get(w.name, 0) if alive else 0
        up_family = GaugeMetricFamily("celery_worker_up", "1 while a worker is heard, in "
                                      "rotation or out of it on purpose; 0 when offline",
                                      labels=["hostname"])
        active_family = GaugeMetricFamily("celery_worker_tasks_active", "Tasks executing",
                                          labels=["hostname"])
        for host in sorted(up):
            up_family.add_metric([host], up[host])
            active_family.add_metric([host], active[host])
        yield up_family
        yield active_family
        if self.depths is not None:
            length = GaugeMetricFamily("celery_queue_length", "Messages waiting in the queue",
                                       labels=["queue_name"])
            for queue, n in sorted(self.depths().items()):
                length.add_metric([queue], n)
            yield length
        for name, what in (("worker", "Workers"), ("consumer", "Consumers")):
            family = GaugeMetricFamily(f"celery_active_{name}_count",
                                       f"{what} consuming the queue (in rotation)",
                                       labels=["queue_name"])
            for queue in WORK_QUEUES:
                family.add_metric([queue], fleet.healthy_consumers(queue))
            yield family


def _failures(failed: int, by_exception: Mapping[str, int]) -> Iterable[tuple[str, int]]:
    """The failed counter's series for one label set: celery-exporter's zero series (``""``),
    each exception's count, and failures reported without one (older workers)."""
    yield "", 0
    yield from sorted(by_exception.items())
    unnamed = failed - sum(by_exception.values())
    if unnamed > 0:
        yield UNKNOWN_EXCEPTION, unnamed


def _histogram(name: str, help_text: str, seen: Mapping[Key, Counter[str]],
               bounds: tuple[float, ...]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=["name", "hostname", "queue_name"])
    for key, counts in sorted(seen.items()):
        folded, total_s = cumulative(counts, bounds)
        family.add_metric(list(key), folded, sum_value=total_s)
    return family
