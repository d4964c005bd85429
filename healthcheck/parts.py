"""A checker's parts, built once and handed to ``service.Checker`` finished: the ledger and
the enforcer that act on decisions, the operators' desk, the succession of leaders, the intake
of events, the metrics. Every part that reads the fleet reads it from ``Current``, which the
checker replaces on taking the lease (and a standby on every refresh): nothing reaches back
into the checker."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

from broker_config.signing import NonceMemory, Verifier
from healthcheck.actuator import Actuator
from healthcheck.enforcement import Enforcer
from healthcheck.intake import Hearing, Inbox, Intake, IntakeWatch
from healthcheck.leading import Succession
from healthcheck.lease import Lead, Leadership
from healthcheck.ledger import Ledger
from healthcheck.metrics import CheckerMetrics
from healthcheck.operators import OperatorDesk
from healthcheck.policy import Fleet
from healthcheck.probes import Prober
from healthcheck.sharding import Shard, Sharding
from healthcheck.store import HealthStore


@dataclass
class Current:
    """The fleet the checker goes by now."""

    fleet: Fleet


@dataclass
class Parts:
    current: Current
    store: HealthStore
    actuator: Actuator
    clock: Callable[[], float]
    metrics: CheckerMetrics
    standing: Lead
    sharding: Sharding | None
    ledger: Ledger
    flush: Callable[[], None]  # stores the ledger (raises LeaseLost)
    enforcer: Enforcer
    operators: OperatorDesk
    prober: Prober | None
    succession: Succession
    intake: Intake
    watch: IntakeWatch | None
    hearing: Hearing
    inbox: Inbox


def build(fleet: Fleet, store: HealthStore, actuator: Actuator,
          metrics: CheckerMetrics | None = None, clock: Callable[[], float] = time.time,
          tick_s: float = 0.25, reconcile_s: float = 2.0, secret: str = "",
          previous_secret: str = "", prober: Prober | None = None,
          leadership: Leadership | None = None, forget_after_s: float = 3600.0,
          depths: Callable[[], Mapping[str, int]] | None = None,
          nonces: NonceMemory | None = None, watch: IntakeWatch | None = None,
          act_pool: Executor | None = None, shard: Shard | None = None) -> Parts:
    """Every part of a checker of ``fleet``.

    Args:
        store: where states, gate keys, requests and the lease live.
        actuator: takes workers in and out of rotation.
        metrics: what the checker exports (built here when None).
        clock: the checker's wall clock (``time.time``).
        tick_s: how often time-based decisions (and the guard's) are made.
        reconcile_s: the least time between two corrections of one worker's gate.
        secret, previous_secret, nonces: what operators' requests are verified with.
        leadership: the lease (None: a checker that runs alone always leads).
        shard: the shard this checker watches (None or one of one: the whole fleet).
    """
    current, intake, standing = Current(fleet), Intake(), Lead(leadership)
    metrics = metrics or CheckerMetrics(lambda: current.fleet, lambda: intake.wear, clock=clock,
                                        forget_after_s=forget_after_s, depths=depths,
                                        inflight=lambda: intake.inflight,
                                        running=lambda: intake.running)
    sharding = None
    if shard is not None and shard.count > 1:
        sharding = Sharding(shard.index, shard.count, shard.budget, standing,
                            settle_s=2 * tick_s)
        sharding.attach(fleet)
        actuator.shard = shard.index
        metrics.sharded(shard.count)
    ledger = Ledger(store)

    def flush() -> None:
        ledger.flush(current.fleet.workers, standing.fence, standing.epoch)

    enforcer = Enforcer(store, actuator, standing, ledger, flush, metrics, clock, reconcile_s,
                        act_pool)
    operators = OperatorDesk(store, Verifier(secret, clock, previous=previous_secret,
                                             nonces=nonces), standing, metrics, clock, sharding)
    succession = Succession(standing, store, ledger, enforcer, prober, actuator, metrics,
                            sharding, clock)
    hearing = Hearing(watch)
    inbox = Inbox(metrics, clock, watch)
    metrics.intake.state = lambda: (watch.lag_s if watch else 0.0, inbox.qsize(),
                                    hearing.trusted_now)
    return Parts(current, store, actuator, clock, metrics, standing, sharding, ledger, flush,
                 enforcer, operators, prober, succession, intake, watch, hearing, inbox)
