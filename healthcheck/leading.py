"""What a checker does when it takes the lease, loses it, or stands by: an object the checker
holds (``Succession``), which rebuilds the fleet from the store on taking over and treats a
refused fenced write as the lease lost. Whether it may act at all is the lease's word
(``lease.Lead``)."""

from __future__ import annotations

from collections.abc import Callable

from broker_config.logs import get_logger
from healthcheck.actuator import Actuator
from healthcheck.audit import AuditRecord
from healthcheck.enforcement import Enforcer
from healthcheck.errors import HealthcheckError, LeaseLost
from healthcheck.lease import Lead, Leadership
from healthcheck.ledger import Ledger
from healthcheck.metrics import CheckerMetrics
from healthcheck.policy import Fleet
from healthcheck.probes import Prober
from healthcheck.resume import resumed_fleet
from healthcheck.sharding import Sharding
from healthcheck.store import HealthStore

log = get_logger(__name__)


class Succession:
    """The checker's side of leadership.

    Args:
        standing: the lease's word on whether this checker may act, and its fence.
        store: where a new leader reads the fleet from.
        ledger, enforcer, prober, actuator, metrics, sharding: the parts a change of leader
            resets or tells.
        clock: the checker's wall clock.
    """

    def __init__(self, standing: Lead, store: HealthStore, ledger: Ledger, enforcer: Enforcer,
                 prober: Prober | None, actuator: Actuator, metrics: CheckerMetrics,
                 sharding: Sharding | None, clock: Callable[[], float]) -> None:
        self.standing, self.store, self.ledger, self.enforcer = standing, store, ledger, enforcer
        self.prober, self.actuator, self.metrics = prober, actuator, metrics
        self.sharding, self.clock = sharding, clock
        self._refreshed = self._refresh_took = 0.0

    @property
    def leadership(self) -> Leadership | None:
        return self.standing.leadership

    def leading(self) -> bool:
        """True when this checker may act (it holds the lease, or runs without one)."""
        return self.standing.leading()

    def step(self, fleet: Fleet) -> Fleet:
        """Renew or take the lease when due; take over or stand by when that changed. The
        fleet to go on with: on taking over, the one the store holds."""
        leadership = self.leadership
        if leadership is None or not leadership.step():
            return fleet
        if not leadership.leading():
            self.stand_by("lease not renewed in time" if leadership.token
                          else "another checker leads")
            return fleet
        fleet = self.resumed(fleet, self.clock(), None)
        self.guarded(lambda: self._take_over(fleet, leadership))
        return fleet

    def resumed(self, fleet: Fleet, now: float, seed: int | None, recall: bool = True) -> Fleet:
        """This checker's fleet (its shard's) rebuilt from the store, under ``fleet``'s policy."""
        sharding = self.sharding
        new = resumed_fleet(self.store, fleet.config, now, seed, recall,
                            sharding.mine if sharding else None)
        return sharding.attach(new) if sharding else new

    def refresh(self, fleet: Fleet, now: float, every_s: float = 1.0) -> Fleet:
        """A standby's view: the stored states, read again every ``every_s`` (for metrics), or
        every ten readings' time when reading them takes longer (a large fleet: 1.5 s for
        100,000 workers), so that a standby spends at most a tenth of its time on it and its
        loop stays free to take the lease. The fleet to go on with."""
        if now - self._refreshed < max(every_s, 10 * self._refresh_took):
            return fleet
        self._refreshed = now
        try:
            fleet = self.resumed(fleet, now, fleet.seed, recall=False)
        except HealthcheckError as exc:
            log.warning("store_read_failed", error=str(exc))
        self._refresh_took = max(0.0, self.clock() - now)
        self.ledger.reports.clear()
        return fleet

    def _take_over(self, fleet: Fleet, leadership: Leadership) -> None:
        """Lead from what the store holds: states as stored, nobody re-drained."""
        self.ledger.clear()
        self.ledger.record(AuditRecord.leader(self.clock(), leadership.candidate,
                                              leadership.epoch))
        self.enforcer.reset()
        if self.prober is not None:
            self.prober.reset()
        self.actuator.epoch = leadership.epoch
        self.metrics.leading(True)
        if self.sharding is not None:
            self.sharding.after_tick(fleet)  # the other shards count this one at once
        log.info("checker_leading", epoch=leadership.epoch, workers=len(fleet.workers),
                 states={s.value: n for s, n in fleet.by_state().items()})
        self.ledger.flush(fleet.workers, self.standing.fence, self.standing.epoch)

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

    def guarded(self, step: Callable[[], None]) -> None:
        """Run one step; a fenced write refused anywhere in it means the lease is lost."""
        try:
            step()
        except LeaseLost as exc:
            self.lose(exc)
