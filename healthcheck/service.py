"""The checker service: Celery events in, the policy in the middle, stored states and actions out.

One loop owns the fleet. Events arrive on a receiver thread (``receiver``) and wait in a
queue; the loop applies them in order and ticks the policy every ``tick_s`` seconds, handing
what changed to its parts: ``intake`` (events into observations), the policy (decisions),
``ledger`` (what is not stored yet; only the loop flushes it), ``enforcement`` (gate keys and
control commands), ``operators`` (signed requests), ``leading``/``lease`` (may it act at all).
Time is the checker's wall clock (``healthcheck.policy.model``). Fail static: when the store or
the broker does not answer, nothing decided is undone; unsaved records wait for the next pass.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from broker_config.logs import get_logger
from broker_config.queues import verify_queue_name
from broker_config.signing import NonceMemory, Verifier
from broker_config.wear_event import WEAR_EVENT, WearEvent
from healthcheck.actuator import Actuator
from healthcheck.audit import AuditRecord
from healthcheck.enforcement import Enforcer
from healthcheck.errors import HealthcheckError, LeaseLost
from healthcheck.intake import EVENT_TYPES, Intake, observation, report_summary, wear_report
from healthcheck.leading import Lead
from healthcheck.lease import Leadership
from healthcheck.ledger import Ledger
from healthcheck.metrics import CheckerMetrics
from healthcheck.operators import OperatorDesk
from healthcheck.page import WearHistory
from healthcheck.policy import Decision, Fleet, Heartbeat, PolicyConfig, Reading, WearReport
from healthcheck.probes import Prober
from healthcheck.resume import resumed_fleet
from healthcheck.store import HealthStore

log = get_logger(__name__)

__all__ = ["Checker", "resumed_fleet"]


class Checker:
    """Keeps every worker's state and acts on the policy's verdicts.

    Args:
        fleet: the policy's fleet (loaded from the store by ``from_store``).
        store: where states, gate keys, requests and the lease live.
        actuator: takes workers in and out of rotation.
        metrics: what the checker exports.
        clock: the checker's wall clock (``time.time``).
        tick_s: how often time-based decisions (and the guard's) are made.
        reconcile_s: the least time between two corrections of one worker's gate.
    """

    def __init__(self, fleet: Fleet, store: HealthStore, actuator: Actuator,
                 metrics: CheckerMetrics | None = None, clock: Callable[[], float] = time.time,
                 tick_s: float = 0.25, reconcile_s: float = 2.0, secret: str = "",
                 previous_secret: str = "", prober: Prober | None = None,
                 leadership: Leadership | None = None, forget_after_s: float = 3600.0,
                 depths: Callable[[], Mapping[str, int]] | None = None,
                 nonces: NonceMemory | None = None) -> None:
        self.fleet = fleet
        self.store = store
        self.actuator = actuator
        self.clock = clock
        self.tick_s = tick_s
        self.intake = Intake()
        self.metrics = metrics or CheckerMetrics(lambda: self.fleet, lambda: self.wear,
                                                 clock=clock, forget_after_s=forget_after_s,
                                                 depths=depths)
        self.leadership = leadership
        self.standing = Lead(leadership)
        self.ledger = Ledger(store)
        self.enforcer = Enforcer(store, actuator, self.standing, self.ledger, self.flush,
                                 self.metrics, clock, reconcile_s)
        self.operators = OperatorDesk(store, Verifier(secret, clock, previous=previous_secret,
                                                      nonces=nonces),
                                      self.standing, self.metrics, clock)
        self.prober = prober
        self.inbox: queue.Queue[tuple[dict[str, Any], float]] = queue.Queue()
        self.last_loop = 0.0
        self.ready = False
        self._pruned = 0.0
        self._refreshed = 0.0
        self.metrics.leading(self.leading())

    @classmethod
    def from_store(cls, store: HealthStore, actuator: Actuator, config: PolicyConfig,
                   clock: Callable[[], float] = time.time, seed: int | None = None,
                   **kwargs: Any) -> Checker:
        """A checker that resumes from the stored states (nobody is re-drained)."""
        fleet = resumed_fleet(store, config, clock(), seed)
        checker = cls(fleet, store, actuator, clock=clock, **kwargs)
        log.info("checker_resumed", workers=len(fleet.workers),
                 states={s.value: n for s, n in fleet.by_state().items()})
        return checker

    @property
    def wear(self) -> dict[str, Mapping[str, Reading]]:
        """Each worker's last readings."""
        return self.intake.wear

    @property
    def history(self) -> WearHistory:
        """Each worker's recent wear (the fleet page's sparklines)."""
        return self.intake.history

    # --- leadership --------------------------------------------------------------------

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
        self.fleet = resumed_fleet(self.store, self.fleet.config, self.clock(), None)
        self.ledger.clear()
        self.ledger.record(AuditRecord.leader(self.clock(), self.leadership.candidate,
                                              self.leadership.epoch))
        self.enforcer.reset()
        if self.prober is not None:
            self.prober.reset()
        self.actuator.epoch = self.leadership.epoch
        self.metrics.leading(True)
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

    # --- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Apply events and tick until ``stop`` is set."""
        self.ready = True
        next_tick = self.clock()
        while not stop.is_set():
            self.lead()
            try:
                event, at = self.inbox.get(timeout=max(0.0, next_tick - self.clock()))
                self.handle(event, at)
                while True:  # everything already waiting, before the next tick
                    event, at = self.inbox.get_nowait()
                    self.handle(event, at)
            except queue.Empty:
                pass
            now = self.clock()
            if now >= next_tick:
                self.tick(now)
                next_tick = now + self.tick_s
            self.last_loop = now

    def on_event(self, event: dict[str, Any]) -> None:
        """Receiver thread: queue an event for the loop, stamped with its arrival time; task
        events only feed the task metrics."""
        kind = event.get("type")
        if kind in EVENT_TYPES:
            self.inbox.put((event, self.clock()))
        elif isinstance(kind, str) and kind.startswith("task-") and self.leading():
            self.metrics.on_task_event(event)  # one checker counts: sums stay right

    def handle(self, event: Mapping[str, Any], at: float) -> None:
        """Apply one event: observe it, act on what changed, correct the worker's gate."""
        self._guarded(lambda: self._handle(event, at))

    def _handle(self, event: Mapping[str, Any], at: float) -> None:
        report = WearEvent.parse(event) if event.get("type") == WEAR_EVENT else None
        obs: WearReport | Heartbeat | None
        if report is not None:
            obs = wear_report(report, at)
            self.intake.take(obs)
            self.ledger.report(report.hostname, report_summary(report, at))
            self.metrics.on_report(report.hostname, report.counts, count=self.leading())
        else:
            obs = observation(event, at)
        if obs is None:
            return
        if not self.leading():
            return  # a standby only watches: its states come from the store
        before = self.fleet.workers.get(obs.worker)
        decision = self.fleet.observe(obs)
        after = self.fleet.workers[obs.worker]
        if before is None:
            log.info("worker_joined", worker=obs.worker)
            self.ledger.changed(obs.worker)
            self.ledger.record(AuditRecord.joined(obs.worker, at, after.state.value))
            self.flush()
        elif (before.queues, before.consuming) != (after.queues, after.consuming):
            self.ledger.changed(obs.worker)  # status, metrics and --yes read them
        self.apply(decision)
        if report is not None and self.fleet.config.enforce:
            self.enforcer.correct(self.fleet.workers.get(obs.worker), report, at)

    def tick(self, now: float) -> None:
        """Time-based decisions, the guard's decisions, probes, operators' requests."""
        self.prune(now)
        if not self.leading():
            self.refresh(now)
            return
        self._guarded(lambda: self._tick(now))

    def _tick(self, now: float) -> None:
        self.apply(self.fleet.tick(now))
        if self.prober is not None:
            self.probe()
        self.operators.serve(self.fleet, self.apply)
        self.flush()

    def prune(self, now: float, every_s: float = 10.0) -> None:
        """Stop exporting workers that left long ago (bounded label cardinality)."""
        if now - self._pruned < every_s:
            return
        self._pruned = now
        for name in self.metrics.forget_stale(self.fleet):
            self.intake.forget(name)
            log.info("worker_forgotten", worker=name,
                     note="offline too long: no longer exported in metrics")

    def refresh(self, now: float, every_s: float = 1.0) -> None:
        """A standby's view: the stored states, read again every ``every_s`` (for metrics)."""
        if now - self._refreshed < every_s:
            return
        self._refreshed = now
        try:
            self.fleet = resumed_fleet(self.store, self.fleet.config, now, self.fleet.seed,
                                       recall=False)
        except HealthcheckError as exc:
            log.warning("store_read_failed", error=str(exc))
        self.ledger.reports.clear()

    # --- deciding ------------------------------------------------------------------------

    def apply(self, decision: Decision) -> None:
        """Store, log, count and enforce the transitions of a decision; store and audit what
        the guard holds back."""
        self.ledger.changed(*decision.changed)
        for name in decision.held:
            w = self.fleet.workers[name]
            log.warning("ejection_held", worker=name, state=w.state.value, held=w.held,
                        reason=w.reason)
            self.ledger.record(AuditRecord.held(name, self.clock(), w.state.value, w.held,
                                                w.reason))
        if not decision.transitions:
            if decision.changed:
                self.flush()
            return
        for t in decision.transitions:
            self.ledger.changed(t.worker)
            self.ledger.record(AuditRecord.transition(t))
            self.metrics.on_transition(t)
            log.info("worker_transition", worker=t.worker, from_state=t.from_state.value,
                     to_state=t.to_state.value, reason=t.reason, cause=t.cause.value,
                     code=t.code.value, enforced=t.enforced)
        self.flush()
        for t in decision.transitions:
            self.enforcer.enforce(t)

    def flush(self) -> None:
        """Store the ledger.

        Raises:
            LeaseLost: another checker leads (nothing was written).
        """
        self.ledger.flush(self.fleet.workers, self.standing.fence, self.standing.epoch)

    def probe(self) -> None:
        """Send the probes that are due and judge the answers that came back."""
        assert self.prober is not None
        try:
            self.prober.send_due({w.name: w.state for w in self.fleet})
            results = self.prober.collect()
        except Exception as exc:  # the broker or the backend failed: probe again next tick
            log.error("probes_failed", error=str(exc))
            return
        for result in results:
            self.metrics.on_probe(result.worker, result.outcome)
            if result.outcome != "ok":
                log.warning("probe_" + result.outcome, worker=result.worker, detail=result.detail,
                            task_id=result.task_id, queue=verify_queue_name(result.worker))
            self.apply(self.fleet.observe(result))
