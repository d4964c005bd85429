"""The ledger: what the checker decided and has not stored yet.

Every part of the checker writes here (a state changed, an audit record, a report summary);
only the checker flushes it to the store. It is the seam that keeps intake, decisions,
enforcement and operators' requests free of each other. Fail static: a write the store
refused stays in the ledger for the next pass; a lost lease empties it (the new leader
decides anew).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker_config.logs import get_logger
from healthcheck.audit import AuditRecord
from healthcheck.errors import HealthcheckError, LeaseLost
from healthcheck.policy import WorkerHealth
from healthcheck.store import StateStore

log = get_logger(__name__)


class Ledger:
    """Unsaved states (by worker name), audit records and report summaries."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.workers: set[str] = set()
        self.records: list[AuditRecord] = []
        self.reports: dict[str, dict[str, Any]] = {}

    def changed(self, *workers: str) -> None:
        """These workers' states changed."""
        self.workers.update(workers)

    def record(self, record: AuditRecord) -> None:
        """An audit record to write."""
        self.records.append(record)

    def report(self, worker: str, summary: dict[str, Any]) -> None:
        """A worker's last report summary."""
        self.reports[worker] = summary

    def clear(self) -> None:
        """Drop what was decided and not stored (a lost lease, a take-over)."""
        self.workers.clear()
        self.records.clear()

    def flush(self, fleet: Mapping[str, WorkerHealth], fence: str, epoch: int | None) -> None:
        """Write what is not stored yet; on a store failure keep it for the next pass.

        Raises:
            LeaseLost: the fence no longer holds the lease (nothing was written).
        """
        if not (self.workers or self.records or self.reports):
            return
        try:
            self.store.commit([fleet[n] for n in self.workers if n in fleet],
                              [r.with_epoch(epoch).to_dict() for r in self.records],
                              self.reports, fence=fence)
        except LeaseLost:
            raise
        except HealthcheckError as exc:
            log.error("store_write_failed", error=str(exc), pending=len(self.records))
            return
        self.reports = {}
        self.clear()
