"""The checker's own intake: events taken by type, how far behind the loop is, how long a pass
takes. Counted by the loop in plain integers and read at scrape time (no metric object on the
hot path)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

#: Event types counted by name; every other type counts as ``task`` (task-*) or ``other``.
EVENT_TYPES = ("worker-wear", "worker-heartbeat", "worker-online", "worker-offline")
#: Upper bounds of the loop-pass histogram, seconds.
LOOP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def event_label(kind: object) -> str:
    """A bounded label for an event's type."""
    if kind in EVENT_TYPES:
        return str(kind)
    return "task" if isinstance(kind, str) and kind.startswith("task-") else "other"


class IntakeFigures(Collector):
    """``host_checker_events_total{type}``, ``host_checker_intake_lag_seconds``,
    ``host_checker_inbox_events``, ``host_checker_loop_seconds`` and
    ``host_checker_subscribed``."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        #: Read at scrape time: (lag in seconds, events waiting, subscribed and hearing).
        self.state: Callable[[], tuple[float, int, bool]] = lambda: (0.0, 0, True)
        self._loop_counts = [0] * (len(LOOP_BUCKETS) + 1)
        self._loop_sum = 0.0

    def loop_pass(self, seconds: float) -> None:
        """One pass of the loop took ``seconds``."""
        self._loop_sum += seconds
        for i, bound in enumerate(LOOP_BUCKETS):
            if seconds <= bound:
                self._loop_counts[i] += 1
                return
        self._loop_counts[-1] += 1

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        events = CounterMetricFamily("host_checker_events", "Events the checker received, by "
                                     "type", labels=["type"])
        for kind in (*EVENT_TYPES, "task", "other"):
            events.add_metric([kind], self.events[kind])
        yield events
        lag, inbox, hearing = self.state()
        yield GaugeMetricFamily("host_checker_intake_lag_seconds", "How far behind the checker "
                                "takes in the fleet's events (healthcheck.intake.IntakeWatch)",
                                value=lag)
        yield GaugeMetricFamily("host_checker_inbox_events", "Events received and not yet "
                                "applied", value=inbox)
        yield GaugeMetricFamily("host_checker_subscribed", "1 while the checker is subscribed "
                                "to the fleet's events and hearing them", value=float(hearing))
        cumulative, buckets = 0, []
        for bound, n in zip((*LOOP_BUCKETS, float("inf")), self._loop_counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        yield HistogramMetricFamily("host_checker_loop_seconds", "Duration of one pass of the "
                                    "checker's loop (events applied, then a tick if due)",
                                    buckets=buckets, sum_value=self._loop_sum)
