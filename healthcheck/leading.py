"""Whether this checker may act now, the token its writes are fenced with, and what the
checker does when it takes the lease, loses it, or stands by."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker_config.logs import get_logger
from healthcheck.actuator import Actuator
from healthcheck.audit import AuditRecord
from healthcheck.errors import LeaseLost
from healthcheck.lease import Leadership
from healthcheck.ledger import Ledger
from healthcheck.metrics import CheckerMetrics
from healthcheck.policy import Fleet
from healthcheck.store import HealthStore

log = get_logger(__name__)


class Lead:
    """This checker's standing, as every part that writes or acts asks for it.

    Args:
        leadership: the lease (None: a checker that runs alone, without one, always leads).
    """

    def __init__(self, leadership: Leadership | None) -> None:
        self.leadership = leadership

    def leading(self) -> bool:
        """True when this checker may act (it holds the lease, or runs without one)."""
        return self.leadership is None or self.leadership.leading()

    @property
    def fence(self) -> str:
        """The lease token every write is fenced with ("" without a lease)."""
        if self.leadership is None:
            return ""
        return self.leadership.token or "none"  # not leading: a token no lease ever matches

    @property
    def epoch(self) -> int | None:
        """The epoch this checker leads under (None without a lease)."""
        return None if self.leadership is None else self.leadership.epoch


class Succession:
    """The checker's side of leadership (``service.Checker`` is one): taking over from what the
    store holds, standing by, and treating a refused fenced write as the lease lost."""

    leadership: Leadership | None
    standing: Lead
    fleet: Fleet
    store: HealthStore
    ledger: Ledger
    enforcer: Any  # healthcheck.enforcement.Enforcer (which imports this module)
    prober: Any  # healthcheck.probes.Prober | None
    actuator: Actuator
    metrics: CheckerMetrics
    sharding: Any  # healthcheck.sharding.Sharding | None (which imports this module)
    clock: Callable[[], float]

    def flush(self) -> None:  # the checker's
        raise NotImplementedError

    def resumed(self, now: float, seed: int | None, recall: bool = True) -> Fleet:  # the checker's
        raise NotImplementedError

    def leading(self) -> bool:
        """True when this checker may act (it holds the lease, or runs without one)."""
        return self.standing.leading()

    def lead(self) -> None:
        """Renew or take the lease when due; take over or stand by when that changed."""
        if self.leadership is None or not self.leadership.step():
            return
        if self.leadership.leading():
            self._guarded(self.take_over)
        else:
            self.stand_by("lease not renewed in time" if self.leadership.token
                          else "another checker leads")

    def take_over(self) -> None:
        """Lead from what the store holds: states as stored, nobody re-drained."""
        assert self.leadership is not None
        self.fleet = self.resumed(self.clock(), None)
        self.ledger.clear()
        self.ledger.record(AuditRecord.leader(self.clock(), self.leadership.candidate,
                                              self.leadership.epoch))
        self.enforcer.reset()
        if self.prober is not None:
            self.prober.reset()
        self.actuator.epoch = self.leadership.epoch
        self.metrics.leading(True)
        if self.sharding is not None:
            self.sharding.after_tick(self.fleet)  # the other shards count this one at once
        log.info("checker_leading", epoch=self.leadership.epoch, workers=len(self.fleet.workers),
                 states={s.value: n for s, n in self.fleet.by_state().items()})
        self.flush()

    def lose(self, exc: LeaseLost) -> None:
        """A fenced write was refused: another checker leads now."""
        if self.leadership is not None:
            self.leadership.lost()
        self.stand_by(str(exc))

    def stand_by(self, why: str) -> None:
        """Stop acting: what was decided and not stored is dropped (the leader decides anew)."""
        self.ledger.clear()
        self.metrics.leading(False)
        log.warning("checker_standing_by", reason=why,
                    leader=self.leadership.leader if self.leadership else None)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run one step; a fenced write refused anywhere in it means the lease is lost."""
        try:
            step()
        except LeaseLost as exc:
            self.lose(exc)

