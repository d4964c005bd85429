"""Counters workers report as totals in their wear reports, summed into fleet totals."""

from __future__ import annotations

from collections import Counter as CounterType
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from broker_config.wear_event import LABELS, OUTCOMES


class Cumulative:
    """Counters workers report as totals since they started, summed into totals that never go
    back (a restarted worker's counts start again from zero; the totals keep growing)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str], int] = {}
        self.totals: CounterType[tuple[str, str]] = CounterType()
        self.by_worker: CounterType[tuple[str, str, str]] = CounterType()

    def update(self, worker: str, kind: str, counts: Mapping[str, Any], count: bool = True) -> None:
        """Take one worker's report of ``kind`` counts (``{label: count since start}``).

        With ``count`` false (a standby checker) only the last values are remembered, so that
        counting starts from them when this checker leads: totals are counted by one checker
        at a time, and summing them across checkers stays right.
        """
        for label, raw in counts.items():
            if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
                continue
            key = (worker, kind, str(label))
            last = self._last.get(key, 0)
            delta = raw - last if raw >= last else raw  # below the last count: it restarted
            self._last[key] = raw
            if count:
                self.totals[(kind, str(label))] += delta
                self.by_worker[key] += delta

    def workers(self) -> set[str]:
        """The workers with series of their own."""
        return {worker for worker, _, _ in self.by_worker}

    def forget(self, worker: str) -> None:
        """Stop exporting a worker's own series (the fleet totals keep its counts)."""
        for key in [k for k in self.by_worker if k[0] == worker]:
            del self.by_worker[key]
            self._last.pop(key, None)


class ReportedCounts(Collector):
    """``host_gate_requeued_total``, ``host_inbound_total`` and ``host_tweets_total``, from the
    totals in workers' reports."""

    def __init__(self, counts: Cumulative) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        requeued = CounterMetricFamily("host_gate_requeued", "Messages a closed gate handed back "
                                       "to the broker unstarted", labels=["worker", "queue"])
        for (worker, kind, queue), n in sorted(self.counts.by_worker.items()):
            if kind == "requeued":
                requeued.add_metric([worker, queue], n)
        yield requeued
        inbound = CounterMetricFamily("host_inbound", "Inbound messages by outcome "
                                      "(analysed, or rejected to the dead letters)",
                                      labels=["outcome"])
        for outcome in OUTCOMES:
            inbound.add_metric([outcome], self.counts.totals[("inbound", outcome)])
        yield inbound
        tweets = CounterMetricFamily("host_tweets", "Analysed tweets by sentiment label",
                                     labels=["sentiment"])
        for label in LABELS:
            tweets.add_metric([label], self.counts.totals[("tweets", label)])
        yield tweets
