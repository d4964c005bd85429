"""One shard's checker: which workers are its own, and the guard's fleet-wide budget.

With ``HOST_CHECKER_SHARDS`` above 1, each checker leads (or stands by for) one shard: it
applies only its own workers' events, rebuilds only their states from the store, takes only
its shard's operator requests, and holds its shard's own lease (``keys.leader(shard)``), so a
standby takes over one shard without touching the others. What stays fleet-wide is the guard:
before each tick the checker reads the other shards' figures into its fleet (the guard decides
with the whole fleet in view), every ejection it decides is also admitted by the store's one
budget (atomically, against every shard's figures: two shards never both take the last
place), and after each tick it publishes its own figures for the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broker_config.logs import get_logger
from broker_config.shards import buckets_of, shard_of
from healthcheck.errors import HealthcheckError, LeaseLost
from healthcheck.lease import Lead
from healthcheck.policy import Fleet, Peers
from healthcheck.store import GuardBudget

log = get_logger(__name__)


def routing_keys(shard: int, shards: int) -> list[str]:
    """The events one shard's checker listens to: its buckets' wear reports, the unbucketed
    ones of workers that predate buckets, and workers coming and going. Celery's heartbeats
    are left out (a wear report every second says more), and so are other shards' workers."""
    return ([f"worker.wear.{b}" for b in buckets_of(shard, shards)]
            + ["worker.wear", "worker.online", "worker.offline"])


@dataclass(frozen=True)
class Shard:
    """Which shard a checker is for: ``index`` of ``count``, and the fleet-wide budget."""

    index: int
    count: int
    budget: GuardBudget

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} is not one of 0..{self.count - 1}")


@dataclass
class Sharding:
    """This checker's shard.

    Args:
        index: the shard (0 .. count - 1).
        count: how many shards the fleet has.
        budget: the store's fleet-wide guard budget.
        lead: this checker's standing (the fence of every budget write).
    """

    index: int
    count: int
    budget: GuardBudget
    lead: Lead
    #: How long a proposed ejection waits for the other shards' figures of the same moment
    #: (the checker makes it two of its ticks: every shard publishes after each tick).
    settle_s: float = 0.5
    fleet: Fleet | None = None
    #: A fenced budget write refused during a tick: raised again after it (the lease is lost).
    lost: LeaseLost | None = None
    _mine: dict[str, bool] = field(default_factory=dict)
    _published: Peers | None = None

    def mine(self, worker: str) -> bool:
        """True when ``worker`` belongs to this shard."""
        known = self._mine.get(worker)
        if known is None:
            known = self._mine[worker] = shard_of(worker, self.count) == self.index
        return known

    def shard_of(self, worker: str) -> int:
        """The shard ``worker`` belongs to."""
        return shard_of(worker, self.count)

    def attach(self, fleet: Fleet) -> Fleet:
        """Make ``fleet`` this shard's: its ejections admitted by the fleet-wide budget."""
        self.fleet, fleet.budget, self._published = fleet, self, None
        fleet.settle_s = self.settle_s
        return fleet

    # --- the policy's Budget ---------------------------------------------------------------

    def admit(self, worker: str, queues: tuple[str, ...], now: float,
              relapse: bool) -> str | None:
        """Admit one ejection against the fleet-wide budget (``policy.shards.Budget``); a store
        that cannot answer admits nothing (fail static: nobody is ejected on a guess)."""
        assert self.fleet is not None
        try:
            return self.budget.admit(worker, queues, now, relapse, self.fleet.config.guard,
                                     self.lead.fence)
        except LeaseLost as exc:
            self.lost = exc
            return "lease lost"
        except HealthcheckError as exc:
            log.warning("guard_budget_unavailable", worker=worker, error=str(exc))
            return "the fleet-wide guard budget cannot be read (store unavailable)"

    # --- around each tick ------------------------------------------------------------------

    def before_tick(self, fleet: Fleet, now: float) -> None:
        """Read the other shards' figures into ``fleet`` (kept as they were if the store does
        not answer: the budget's admission still has the last word)."""
        try:
            fleet.peers = self.budget.peers(now, fleet.config.guard.window_s)
        except HealthcheckError as exc:
            log.warning("guard_peers_unavailable", error=str(exc))

    def after_tick(self, fleet: Fleet) -> None:
        """Publish this shard's figures when they changed.

        Raises:
            LeaseLost: another checker leads this shard (also when a budget admission was
                refused for that during the tick).
        """
        if self.lost is not None:
            lost, self.lost = self.lost, None
            raise lost
        figures = fleet.own_figures()
        if figures == self._published:
            return
        try:
            self.budget.publish(figures, self.lead.fence)
        except LeaseLost:
            raise
        except HealthcheckError as exc:
            log.warning("guard_publish_failed", error=str(exc))
            return
        self._published = figures
