"""The store in memory, for unit tests and the simulator: the same contract as on Redis."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from healthcheck.errors import LeaseLost
from healthcheck.policy import Peers, WorkerHealth
from healthcheck.policy.config import Guard
from healthcheck.policy.shards import refusal
from healthcheck.store.codec import UnfencedWrites, from_dict, recorded_at, to_dict


class InMemoryHealthStore(UnfencedWrites):
    """Every port of ``healthcheck.store.ports`` in one process's memory.

    Args:
        clock: seconds, for the lease's TTL.
        wall: seconds since 1970: a new lease epoch is at least this in milliseconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.wall = wall
        self.workers: dict[str, dict[str, Any]] = {}
        self.audit: list[dict[str, Any]] = []
        self.gates: dict[str, str] = {}
        self.last_reports: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.replies: dict[str, dict[str, Any]] = {}
        self.leader: str | None = None
        self.leader_until = 0.0
        self.epochs = 0
        self.forwarded: list[tuple[int, dict[str, Any]]] = []
        self._answered = threading.Condition()

    def load(self, keep: Callable[[str], bool] | None = None) -> dict[str, WorkerHealth]:
        return {k: from_dict(v) for k, v in self.workers.items() if keep is None or keep(k)}

    def get(self, worker: str) -> WorkerHealth | None:
        data = self.workers.get(worker)
        return from_dict(data) if data else None

    def commit(self, workers: Iterable[WorkerHealth], records: Iterable[Mapping[str, Any]] = (),
               reports: Mapping[str, Mapping[str, Any]] | None = None, fence: str = "") -> None:
        self._check(fence)
        for w in workers:
            self.workers[w.name] = to_dict(w)
        self.audit.extend(dict(r) for r in records)
        self.last_reports.update({k: dict(v) for k, v in (reports or {}).items()})

    def history(self, worker: str | None = None, since: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        records = [r for r in self.audit if (worker is None or r.get("worker") == worker)
                   and (since is None or (recorded_at(r) or -1.0) >= since)]
        return records[-limit:] if limit > 0 else []

    def reports(self) -> dict[str, dict[str, Any]]:
        return dict(self.last_reports)

    def close_gate(self, worker: str, reason: str, fence: str = "",
                   record: Mapping[str, Any] | None = None) -> None:
        self._check(fence)
        self.gates[worker] = reason
        if record is not None:
            self.audit.append(dict(record))

    def open_gate(self, worker: str, fence: str = "",
                  record: Mapping[str, Any] | None = None) -> None:
        self._check(fence)
        self.gates.pop(worker, None)
        if record is not None:
            self.audit.append(dict(record))

    def take_requests(self, limit: int = 100, fence: str = "") -> list[dict[str, Any]]:
        self._check(fence)
        with self._answered:
            taken, self.requests = self.requests[:limit], self.requests[limit:]
        return taken

    def forward(self, request: Mapping[str, Any], shard: int) -> None:
        with self._answered:
            self.forwarded.append((shard, dict(request)))

    def reply(self, request_id: str, answer: Mapping[str, Any]) -> None:
        with self._answered:
            self.replies[request_id] = dict(answer)
            self._answered.notify_all()

    def ask(self, request: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        request_id = str(request["id"])
        with self._answered:
            self.requests.append(dict(request))
            self._answered.wait_for(lambda: request_id in self.replies, timeout)
            if request_id not in self.replies:
                self.requests = [r for r in self.requests if str(r.get("id")) != request_id]
                return None
            return self.replies.pop(request_id)

    def lease(self, candidate: str, ttl_s: float, token: str = "") -> str | None:
        current = self._current()
        if current is not None and current != token:
            return current
        if current is None:
            self.epochs = max(self.epochs + 1, int(self.wall() * 1000))
            self.leader = f"{self.epochs}:{candidate}"
        self.leader_until = self.clock() + ttl_s
        return self.leader

    def release(self, token: str) -> None:
        if self._current() == token:
            self.leader = None

    def epoch(self) -> int:
        return self.epochs

    def _current(self) -> str | None:
        if self.leader is not None and self.clock() >= self.leader_until:
            self.leader = None
        return self.leader

    def _check(self, fence: str) -> None:
        if fence and self._current() != fence:
            raise LeaseLost(f"lease lost: {fence} no longer leads")


class InMemoryGuardBudgets:
    """Every shard's guard figures and ejections in one process (the simulator, unit tests):
    ``for_shard(k)`` is shard k's side of it, the same contract as ``RedisGuardBudget``.

    Args:
        shards: how many shards the fleet has.
    """

    def __init__(self, shards: int) -> None:
        self.figures = [Peers() for _ in range(shards)]
        self.ejections: list[list[float]] = [[] for _ in range(shards)]

    def for_shard(self, shard: int, lease: InMemoryHealthStore | None = None) -> ShardBudget:
        """Shard ``shard``'s side, fenced by ``lease`` (None: unfenced)."""
        return ShardBudget(self, shard, lease)


class ShardBudget:
    """One shard's side of ``InMemoryGuardBudgets``."""

    def __init__(self, budgets: InMemoryGuardBudgets, shard: int,
                 lease: InMemoryHealthStore | None) -> None:
        self.budgets, self.shard, self.lease = budgets, shard, lease

    def admit(self, worker: str, queues: tuple[str, ...], now: float, relapse: bool,
              guard: Guard, fence: str = "") -> str | None:
        self._check(fence)
        for times in self.budgets.ejections:
            times[:] = [t for t in times if t >= now - guard.window_s]
        whole = dataclasses.replace(Peers.total(self.budgets.figures),
                                    recent=sum(map(len, self.budgets.ejections)))
        why = refusal(guard, whole, queues, relapse)
        if why is None:
            mine = self.budgets.figures[self.shard]
            self.budgets.figures[self.shard] = dataclasses.replace(
                mine, out=mine.out + 1, queue_out=mine.queue_out + Counter(queues))
            self.budgets.ejections[self.shard].append(now)
        return why

    def publish(self, figures: Peers, fence: str = "") -> None:
        self._check(fence)
        self.budgets.figures[self.shard] = figures

    def peers(self, now: float, window_s: float) -> Peers:
        others = [k for k in range(len(self.budgets.figures)) if k != self.shard]
        return Peers.total(
            dataclasses.replace(self.budgets.figures[k],
                                recent=sum(t >= now - window_s for t in self.budgets.ejections[k]))
            for k in others)

    def _check(self, fence: str) -> None:
        if self.lease is not None:
            self.lease._check(fence)
