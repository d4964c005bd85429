"""``host_tasks_total`` and ``host_task_runtime_seconds``, from the totals in workers' reports.

Each worker counts its settled tasks in its main process (``workers.task_stats.TaskTotals``) and
sends the totals in every wear report; ``Cumulative`` turns them into fleet totals that survive
worker restarts. No Celery task events are needed: they cost a plain Celery worker about a
third of its per-task throughput, and with them on the checker would receive every task's
events besides every report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from broker_config.wear_event import RUNTIME_BUCKETS
from healthcheck.metrics.reported import Cumulative


def cumulative(counts: Mapping[str, int], bounds: tuple[float, ...]
               ) -> tuple[list[tuple[str, int]], float]:
    """A histogram's cumulative buckets and its sum, from the per-bucket counts a worker reports
    (``"<bound>"`` and ``"inf"``, not cumulative; ``"sum_us"``, microseconds)."""
    running, buckets = 0, []
    for bound in [*map(str, bounds), "inf"]:
        running += counts.get(bound, 0)
        buckets.append(("+Inf" if bound == "inf" else bound, running))
    return buckets, counts.get("sum_us", 0) / 1e6


class TaskTotals(Collector):
    """Tasks settled by queue, task and outcome; runtimes of the succeeded ones.

    Args:
        counts: the reported totals (kinds ``task_outcomes`` and ``task_runtimes``).
        tasks: the task names labelled by name (others: ``other``).
    """

    def __init__(self, counts: Cumulative, tasks: frozenset[str]) -> None:
        self.counts = counts
        self.tasks = tasks

    def _split(self, label: str) -> tuple[str, str, str] | None:
        parts = label.split("|")
        if len(parts) != 3:
            return None
        queue, task, last = parts
        return queue, task if task in self.tasks else "other", last

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        total = CounterMetricFamily("host_tasks", "Tasks settled, by queue, task and outcome "
                                    "(succeeded, failed, retried, rejected: handed back by "
                                    "a closed gate)", labels=["queue", "task", "outcome"])
        merged: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        buckets: defaultdict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for (kind, label), n in self.counts.totals.items():
            split = self._split(label)
            if split is None:
                continue
            if kind == "task_outcomes":
                merged[split] += n
            elif kind == "task_runtimes":
                seen = buckets[split[:2]]
                seen[split[2]] = seen.get(split[2], 0) + n
        for labels, n in sorted(merged.items()):
            total.add_metric(list(labels), n)
        yield total
        runtime = HistogramMetricFamily("host_task_runtime_seconds", "Runtime of succeeded tasks",
                                        labels=["queue", "task"])
        for (queue, task), seen in sorted(buckets.items()):
            folded, total_s = cumulative(seen, RUNTIME_BUCKETS)
            runtime.add_metric([queue, task], folded, sum_value=total_s)
        yield runtime
