"""The fleet page: a read-only view of the checker at ``/``, fed by ``/fleet.json``.

The page is one HTML file with its script and style inline (``fleet.html``): no build step, no
external assets. It asks for ``/fleet.json`` every two seconds and redraws; everything it shows
is set as text, never as markup, since worker names and reasons come off the network.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from broker_config.queues import WORK_QUEUES
from healthcheck.audit import Kind, parse_all
from healthcheck.errors import HealthcheckError
from healthcheck.policy import Fleet, Reading, WorkerHealth
from healthcheck.policy.model import CONSUMING
from healthcheck.store import StateStore

#: Wear samples kept per worker for the sparklines.
SPARK_POINTS = 60
#: Wear metrics drawn as sparklines.
SPARK_METRICS = ("cpu_percent", "memory_percent")


def html() -> bytes:
    """The page itself."""
    return resources.files("healthcheck").joinpath("fleet.html").read_bytes()


class WearHistory:
    """The last ``SPARK_POINTS`` readings of each worker's sparkline metrics."""

    def __init__(self, points: int = SPARK_POINTS) -> None:
        self.points = points
        self._series: dict[str, dict[str, deque[float]]] = {}

    def add(self, worker: str, wear: Mapping[str, Reading]) -> None:
        series = self._series.setdefault(worker, {m: deque(maxlen=self.points)
                                                  for m in SPARK_METRICS})
        for metric in SPARK_METRICS:
            if metric in wear:
                series[metric].append(round(wear[metric].value, 2))

    def of(self, worker: str) -> dict[str, list[float]]:
        return {m: list(v) for m, v in self._series.get(worker, {}).items()}

    def forget(self, worker: str) -> None:
        self._series.pop(worker, None)


class StoredStates:
    """Every stored worker's state, for the page of one shard's checker: read again at most
    every 2 s, or every ten readings' time when reading takes longer (a large fleet)."""

    def __init__(self, store: StateStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.clock = store, clock
        self._states: dict[str, WorkerHealth] = {}
        self._read_at = float("-inf")
        self._took = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, WorkerHealth]:
        """The states (the last ones read, when the store does not answer)."""
        with self._lock:
            if self.clock() - self._read_at >= max(2.0, 10 * self._took):
                started = self.clock()
                with contextlib.suppress(HealthcheckError):  # shows as store_ok on the page
                    self._states = self.store.load()
                self._read_at, self._took = self.clock(), self.clock() - started
            return self._states


def fleet_view(fleet: Fleet, history: WearHistory, store: StateStore, leading: bool,
               depths: Callable[[], Mapping[str, int]] | None = None,
               clock: Callable[[], float] = time.time, transitions: int = 20,
               others: Callable[[], Mapping[str, WorkerHealth]] | None = None
               ) -> dict[str, Any]:
    """What the page shows, as JSON-ready data. ``others``: this checker watches one shard;
    the other shards' workers are shown as their leaders last stored them."""
    known = dict(fleet.workers)
    if others is not None:
        known = {**others(), **known}
    workers = sorted(known.values(), key=lambda w: w.name)
    try:
        recent = [r for r in parse_all(store.history(limit=200)) if r.kind is Kind.TRANSITION]
        recent = recent[-transitions:][::-1]
        store_ok = True
    except HealthcheckError:
        recent, store_ok = [], False
    queue_depths = dict(depths()) if depths is not None else {}
    return {
        "generated_at": clock(),
        "leading": leading,
        "store_ok": store_ok,
        "guard_engaged": fleet.guard_engaged,
        "states": dict(Counter(w.state.value for w in workers)),
        "queues": [{"queue": q, "healthy_consumers": sum(w.consumes(q) for w in workers),
                    "messages": queue_depths.get(q)} for q in WORK_QUEUES],
        "workers": [{"name": w.name, "state": w.state.value, "reason": w.reason,
                     "cause": w.cause.value, "held": w.held or None, "since": w.since,
                     "busy": (w.busy or None) if w.state in CONSUMING else None,
                     "last_seen": w.last_seen,
                     "queues": list(w.queues), "wear": history.of(w.name)} for w in workers],
        "transitions": [{"at": r.at, "worker": r.worker, "from": r.get("from"),
                         "to": r.to_state, "reason": r.get("reason")} for r in recent],
    }
