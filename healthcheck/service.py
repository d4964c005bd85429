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
from healthcheck.actuator import Actuator
from healthcheck.audit import AuditRecord
from healthcheck.intake import read
from healthcheck.lease import Leadership
from healthcheck.page import WearHistory
from healthcheck.parts import Parts, build
from healthcheck.policy import (
    Decision,
    Fleet,
    HealthPolicy,
    PolicyConfig,
    Reading,
    WearReport,
)
from healthcheck.policy.holds import hold_of
from healthcheck.policy.model import OUT_OF_ROTATION
from healthcheck.store import HealthStore

log = get_logger(__name__)

__all__ = ["Checker"]

#: How often every worker's clock-driven changes (OFFLINE, drain time-outs, probation) are
#: looked at; proposed ejections are decided at every tick regardless.
SWEEP_EVERY_S = 1.0
#: The shortest time between two ticks brought forward by a proposed ejection.
EAGER_S = 0.02


class Checker:
    """Keeps every worker's state and acts on the policy's verdicts.

    Args:
        parts: its parts, built once (``healthcheck.parts.build``; ``from_store`` builds them).
        tick_s: how often time-based decisions (and the guard's) are made.
    """

    def __init__(self, parts: Parts, tick_s: float = 0.25) -> None:
        self.tick_s = tick_s
        self._current = parts.current
        self.store, self.actuator, self.clock = parts.store, parts.actuator, parts.clock
        self.metrics, self.standing, self.sharding = parts.metrics, parts.standing, parts.sharding
        self.ledger, self.enforcer, self.operators = parts.ledger, parts.enforcer, parts.operators
        self.prober, self.succession, self.intake = parts.prober, parts.succession, parts.intake
        self.watch, self.hearing, self.inbox = parts.watch, parts.hearing, parts.inbox
        self.flush = parts.flush
        self._probes_sent = self._swept = self._ticked = self.last_loop = 0.0
        self._pruned = 0.0
        self.ready = False
        self.metrics.leading(self.leading())

    @classmethod
    def from_store(cls, store: HealthStore, actuator: Actuator, config: PolicyConfig,
                   clock: Callable[[], float] = time.time, seed: int | None = None,
                   tick_s: float = 0.25, **kwargs: Any) -> Checker:
        """A checker that resumes from the stored states (nobody is re-drained); with a
        ``shard``, that shard's workers only. ``kwargs``: ``healthcheck.parts.build``'s."""
        parts = build(Fleet(HealthPolicy(config)), store, actuator, clock=clock, tick_s=tick_s,
                      **kwargs)
        checker = cls(parts, tick_s)
        checker.fleet = fleet = checker.resumed(clock(), seed)
        log.info("checker_resumed", workers=len(fleet.workers),
                 states={s.value: n for s, n in fleet.by_state().items()})
        return checker

    @property
    def fleet(self) -> Fleet:
        """The fleet this checker goes by now."""
        return self._current.fleet

    @fleet.setter
    def fleet(self, fleet: Fleet) -> None:
        self._current.fleet = fleet

    @property
    def leadership(self) -> Leadership | None:
        """The lease (None: this checker runs alone, without one)."""
        return self.standing.leadership

    @property
    def wear(self) -> dict[str, Mapping[str, Reading]]:
        """Each worker's last readings."""
        return self.intake.wear

    @property
    def history(self) -> WearHistory:
        """Each worker's recent wear (the fleet page's sparklines)."""
        return self.intake.history

    # --- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Apply events and tick until ``stop`` is set."""
        self.ready = True
        next_tick = self.clock()
        while not stop.is_set():
            self.lead()
            try:
                first: tuple[list[dict[str, Any]], float] | None = self.inbox.get(
                    timeout=max(0.0, next_tick - self.clock()))
            except queue.Empty:
                first = None
            started = time.perf_counter()
            while first is not None:  # everything already waiting, before the next tick
                self.apply_events(*first)
                try:
                    first = self.inbox.get_nowait()
                except queue.Empty:
                    first = None
            self._guarded(self.enforcer.settle)  # answers to commands sent on the pool
            now = self.clock()
            # A proposed ejection is decided at once, not at the next tick (at most every
            # EAGER_S, so that a storm the guard holds back does not tick every pass).
            eager = self.fleet.has_proposals and now - self._ticked >= EAGER_S
            if now >= next_tick or eager:
                self.tick(now)
                self._ticked = now
                next_tick = now + self.tick_s
            self.metrics.loop_pass(time.perf_counter() - started)
            self.last_loop = now

    def on_event(self, event: dict[str, Any]) -> None:
        """Receiver thread: one event (see ``on_events``)."""
        self.on_events([event])

    def on_events(self, events: list[dict[str, Any]]) -> None:
        """Receiver thread: queue events for the loop, stamped with their arrival time."""
        self.inbox.take(events)

    @property
    def intake_trusted(self) -> bool:
        """True while silence from a worker means the worker (``hearing.Hearing``)."""
        return self.hearing.trusted_now

    def apply_events(self, events: list[dict[str, Any]], at: float) -> None:
        """Apply events that arrived together at ``at``."""
        if self.watch is not None:
            self.watch.applied(at, self.clock())
        self._guarded(lambda: self._handle_all(events, at))

    def handle(self, event: Mapping[str, Any], at: float) -> None:
        """Apply one event: observe it, act on what changed, correct the worker's gate."""
        self.apply_events([dict(event)], at)

    def _handle_all(self, events: list[dict[str, Any]], at: float) -> None:
        for event in events:
            self._handle(event, at)

    def _handle(self, event: Mapping[str, Any], at: float) -> None:
        if self.sharding is not None and not self.sharding.mine(str(event.get("hostname"))):
            return  # another shard's worker
        observed = read(event, at)
        if observed is None:
            return
        obs, report = observed
        if report is not None and isinstance(obs, WearReport):
            self.intake.take(obs)
            self.metrics.on_report(report.hostname, report.counts, count=self.leading())
        if not self.leading():
            return  # a standby only watches: its states come from the store
        before = self.fleet.workers.get(obs.worker)
        decision = self.fleet.observe(obs)
        after = self.fleet.workers[obs.worker]
        if report is not None and (summary := self.intake.summary(report, at,
                                                                  after.busy)) is not None:
            self.ledger.report(report.hostname, summary)
        if before is None:
            log.info("worker_joined", worker=obs.worker, state=after.state.value,
                     reason=after.reason)
            self.ledger.changed(obs.worker)
            self.ledger.record(AuditRecord.joined(obs.worker, at, after.state.value))
            if after.state in OUT_OF_ROTATION and self.fleet.config.enforce:
                # Held out by a checker whose record is gone (holds.adopted): its gate key
                # written again, so that a restart of the worker keeps it out too.
                self.enforcer.drain(after.name, after.reason, correction=True,
                                    hold=hold_of(after))
        elif (before.queues, before.consuming) != (after.queues, after.consuming):
            self.ledger.changed(obs.worker)  # status, metrics and --yes read them
        self.apply(decision)
        if report is not None and self.fleet.config.enforce:
            self.enforcer.correct(self.fleet.workers.get(obs.worker), report, at)

    def tick(self, now: float) -> None:
        """Time-based decisions, the guard's decisions, probes, operators' requests."""
        self.prune(now)
        trusted = self.hearing.trusted(now, self.fleet)
        if not self.leading():
            self.refresh(now)
            return
        self._guarded(lambda: self._tick(now, trusted))

    def _tick(self, now: float, trusted: bool) -> None:
        if trusted:  # else time stands still for the policy: nobody goes OFFLINE for our deafness
            sweep = now - self._swept >= SWEEP_EVERY_S
            if sweep:
                self._swept = now
            if self.sharding is not None:
                self.sharding.before_tick(self.fleet, now)
            self.apply(self.fleet.tick(now, sweep=sweep))
        if self.prober is not None:
            send = now - self._probes_sent >= 1.0  # sending looks at the whole fleet
            if send:
                self._probes_sent = now
            for result in self.prober.round(lambda: {w.name: w.state for w in self.fleet}, send):
                self.metrics.on_probe(result.worker, result.outcome)
                self.apply(self.fleet.observe(result))
        self.operators.serve(self.fleet, self.apply)
        self.flush()
        if self.sharding is not None:
            self.sharding.after_tick(self.fleet)

    def prune(self, now: float, every_s: float = 10.0) -> None:
        """Stop exporting workers that left long ago (bounded label cardinality)."""
        if now - self._pruned < every_s:
            return
        self._pruned = now
        for name in self.metrics.forget_stale(self.fleet):
            self.intake.forget(name)
            self.inbox.forget(name)
            log.info("worker_forgotten", worker=name,
                     note="offline too long: no longer exported in metrics")

    def refresh(self, now: float) -> None:
        """A standby's view: the stored states (``Succession.refresh``)."""
        self.fleet = self.succession.refresh(self.fleet, now)

    def resumed(self, now: float, seed: int | None, recall: bool = True) -> Fleet:
        """This checker's fleet (its shard's) rebuilt from the store."""
        return self.succession.resumed(self.fleet, now, seed, recall)

    # --- leading -------------------------------------------------------------------------

    def leading(self) -> bool:
        """True when this checker may act (it holds the lease, or runs without one)."""
        return self.standing.leading()

    def lead(self) -> None:
        """Renew or take the lease when due; on taking over, the fleet the store holds."""
        self.fleet = self.succession.step(self.fleet)

    def _guarded(self, step: Callable[[], None]) -> None:
        self.succession.guarded(step)

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
            held = self.fleet.workers.get(t.worker)
            self.enforcer.enforce(t, hold_of(held) if held is not None else "")
            if t.recycle and t.enforced:
                self.enforcer.recycle(t.worker, t.reason)
