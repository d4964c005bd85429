"""``host_control_commands_total``: what the checker sent, and what workers refused."""

from __future__ import annotations

from collections import Counter as CounterType
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from healthcheck.metrics.reported import Cumulative


class ControlCounts(Collector):
    """``host_control_commands_total{command,outcome}``: what the checker sent and how it went,
    plus what workers refused (unsigned, forged, expired, replayed, disabled), as they report it.
    """

    def __init__(self, reported: Cumulative) -> None:
        self.sent: CounterType[tuple[str, str]] = CounterType()
        self.reported = reported

    def count(self, command: str, outcome: str, n: int = 1) -> None:
        """Count ``n`` commands of ``command`` that ended in ``outcome``."""
        self.sent[(command, outcome)] += n

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("host_control_commands", "Control commands by outcome",
                                     labels=["command", "outcome"])
        totals: CounterType[tuple[str, str]] = CounterType(self.sent)
        for (kind, key), n in self.reported.totals.items():
            if kind == "refused":
                command, _, reason = key.partition(":")
                totals[(command, f"refused_{reason}")] += n
        for (command, outcome), n in sorted(totals.items()):
            family.add_metric([command, outcome], n)
        yield family
