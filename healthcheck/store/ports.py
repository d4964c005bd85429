"""The checker's store, split by concern: one narrow port per job.

Each port has a Redis implementation (``redis_store``) and an in-memory one (``memory``); one
contract suite (tests/integration/test_store_contract.py) runs the same cases against both.
Every method raises StoreUnavailable when the store does not answer, and a fenced write (a
``fence`` lease token) raises LeaseLost, writing nothing, once that token no longer leads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from healthcheck.policy import Peers, WorkerHealth
from healthcheck.policy.config import Guard


class StateStore(Protocol):
    """Worker states, the audit log and the last report summaries, written together."""

    def load(self, keep: Callable[[str], bool] | None = None) -> dict[str, WorkerHealth]:
        """Every stored worker's health (``keep``: only the workers it keeps, the others not
        even decoded: one shard's, out of a large fleet)."""

    def get(self, worker: str) -> WorkerHealth | None:
        """One worker's stored health."""

    def commit(self, workers: Iterable[WorkerHealth], records: Iterable[Mapping[str, Any]] = (),
               reports: Mapping[str, Mapping[str, Any]] | None = None, fence: str = "") -> None:
        """Store workers' health, audit records and report summaries, all or nothing."""

    def save(self, workers: Iterable[WorkerHealth]) -> None:
        """Store these workers' health (unfenced: tools and tests)."""

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add records to the audit log (unfenced: tools and tests)."""

    def history(self, worker: str | None = None, since: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
        """Audit records, oldest first: the newest ``limit`` of those about ``worker`` (all
        workers: None) whose ``at`` is at or after ``since`` (wall-clock seconds)."""

    def reports(self) -> dict[str, dict[str, Any]]:
        """Every worker's last report summary."""


class GateKeys(Protocol):
    """The checker's side of the gate keys: workers refuse work-queue tasks while theirs is set."""

    def close_gate(self, worker: str, reason: str, fence: str = "",
                   record: Mapping[str, Any] | None = None) -> None:
        """Hold ``worker`` out: its pool processes refuse work-queue tasks from now on.
        ``record``, an audit record, is written with the key: both or neither."""

    def open_gate(self, worker: str, fence: str = "",
                  record: Mapping[str, Any] | None = None) -> None:
        """Let ``worker``'s pool processes start work-queue tasks again (``record``: as for
        ``close_gate``)."""


class OperatorRequests(Protocol):
    """Operators' requests to the checker, and its answers."""

    def take_requests(self, limit: int = 100, fence: str = "") -> list[dict[str, Any]]:
        """Requests waiting for the checker, oldest first (removed from the queue)."""

    def reply(self, request_id: str, answer: Mapping[str, Any]) -> None:
        """Answer one request."""

    def forward(self, request: Mapping[str, Any], shard: int) -> None:
        """Hand a request taken here to the checker of the worker's shard."""

    def ask(self, request: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        """Queue a request and wait for its answer (None: none came, and it was taken back)."""


class LeaseStore(Protocol):
    """The checker lease: who leads, under which fencing epoch."""

    def lease(self, candidate: str, ttl_s: float, token: str = "") -> str | None:
        """Take or renew the lease; the leading token afterwards (None: nobody leads).

        ``token`` is the caller's current token, renewed if it still leads; otherwise a free
        lease is taken under a new epoch (``"<epoch>:<candidate>"``): above every epoch taken
        before, and at least the store's clock in milliseconds, so that an epoch a failover
        lost is never handed out again.
        """

    def release(self, token: str) -> None:
        """Give the lease up, if ``token`` still holds it."""

    def epoch(self) -> int:
        """The fencing epoch: that of the last lease taken (0: none yet)."""


class GuardBudget(Protocol):
    """The fleet-wide guard budget of a sharded fleet, as one shard uses it."""

    def admit(self, worker: str, queues: tuple[str, ...], now: float, relapse: bool,
              guard: Guard, fence: str = "") -> str | None:
        """Count ``worker`` out against every shard's figures at once, if the guard's bounds
        allow it (``healthcheck.policy.shards.refusal``); None when admitted, else why not."""

    def publish(self, figures: Peers, fence: str = "") -> None:
        """Replace this shard's figures with its leader's own count."""

    def peers(self, now: float, window_s: float) -> Peers:
        """The other shards' figures, their ejections counted over the window up to ``now``."""


class HealthStore(StateStore, GateKeys, OperatorRequests, LeaseStore, Protocol):
    """Every port at once: what one Redis (or one in-memory store) provides to the checker."""
