"""The checker service: Celery events in, the policy in the middle, stored states and actions out.

One loop owns the fleet: events arrive on a receiver thread and wait in a queue; the loop
applies them in order, ticks the policy every ``tick_s`` seconds, stores what changed, writes
the audit log, and acts. Time is the wall clock (read once per step and passed to the policy),
so stored states stay meaningful when the checker restarts or another one takes over.

Fail static: when the store or the broker does not answer, nothing already decided is undone;
unsaved records wait and are written on the next pass, and workers keep their last state.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery

from broker_config.queues import verify_queue_name
from broker_config.signing import NonceMemory, Verifier
from healthcheck.actuator import Actuator, Reply
from healthcheck.errors import HealthcheckError, LeaseLost
from healthcheck.intake import WEAR_EVENT, consuming, observation
from healthcheck.lease import Leadership
from healthcheck.metrics import CheckerMetrics
from healthcheck.page import WearHistory
from healthcheck.policy import Decision, Fleet, HealthPolicy, PolicyConfig, Reading, State
from healthcheck.policy.model import CONSUMING, OUT_OF_ROTATION, Transition
from healthcheck.probes import Prober
from healthcheck.store import HealthStore
from workers.logs import get_logger

log = get_logger(__name__)

#: States in which the worker must not consume work queues (what the checker enforces).
MUST_BE_OUT = OUT_OF_ROTATION
EVENT_TYPES = (WEAR_EVENT, "worker-heartbeat", "worker-online", "worker-offline")


class Checker:
    """Keeps every worker's state and acts on the policy's verdicts.

    Args:
        fleet: the policy's fleet (loaded from the store by ``from_store``).
        store: where states and the audit log go.
        actuator: takes workers in and out of rotation.
        metrics: what the checker exports.
        clock: wall-clock seconds.
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
        self.reconcile_s = reconcile_s
        self.metrics = metrics or CheckerMetrics(lambda: self.fleet, lambda: self.wear,
                                                 clock=clock, forget_after_s=forget_after_s,
                                                 depths=depths)
        self._pruned = 0.0
        self.inbox: queue.Queue[tuple[dict[str, Any], float]] = queue.Queue()
        self.wear: dict[str, Mapping[str, Reading]] = {}
        self.history = WearHistory()
        self.last_loop = 0.0
        self.ready = False
        self._unsaved_workers: set[str] = set()
        self._unsaved_audit: list[dict[str, Any]] = []
        self._last_correction: dict[str, float] = {}
        self._reports: dict[str, dict[str, Any]] = {}
        self._verifier = Verifier(secret, clock, previous=previous_secret, nonces=nonces)
        self.prober = prober
        self.leadership = leadership
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

    # --- leadership --------------------------------------------------------------------

    def leading(self) -> bool:
        """True when this checker may act (it holds the lease, or runs without one)."""
        return self.leadership is None or self.leadership.leading()

    @property
    def fence(self) -> str:
        """The lease token every write is fenced with ("" without a lease)."""
        if self.leadership is None:
            return ""
        return self.leadership.token or "none"  # not leading: a token no lease ever matches

    def lead(self) -> None:
        """Renew or take the lease when due; take over or stand by when that changed."""
        if self.leadership is None or not self.leadership.step():
            return
        if self.leadership.leading():
            self.take_over()
        else:
            self.stand_by("lease not renewed in time" if self.leadership.token
                          else "another checker leads")

    def take_over(self) -> None:
        """Lead from what the store holds: states as stored, nobody re-drained."""
        assert self.leadership is not None
        self.fleet = resumed_fleet(self.store, self.fleet.config, self.clock(), None)
        self._unsaved_workers.clear()
        self._unsaved_audit[:] = [{"kind": "leader", "worker": None, "at": self.clock(),
                                   "checker": self.leadership.candidate,
                                   "epoch": self.leadership.epoch}]
        self._last_correction.clear()
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
        self._unsaved_workers.clear()
        self._unsaved_audit.clear()
        self.metrics.leading(False)
        log.warning("checker_standing_by", reason=why,
                    leader=self.leadership.leader if self.leadership else None)

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
        obs = observation(event, at)
        if obs is None:
            return
        if event.get("type") == WEAR_EVENT and hasattr(obs, "wear"):
            self.wear[obs.worker] = obs.wear
            self.history.add(obs.worker, obs.wear)
            self._reports[obs.worker] = report_summary(event, at)
            self.metrics.on_report(obs.worker, event, count=self.leading())
        if not self.leading():
            return  # a standby only watches: its states come from the store
        before = self.fleet.workers.get(obs.worker)
        joined = before is None
        decision = self.fleet.observe(obs)
        after = self.fleet.workers[obs.worker]
        if before is not None and (before.queues, before.consuming) != (after.queues,
                                                                       after.consuming):
            self._unsaved_workers.add(obs.worker)  # status, metrics and --yes read them
        if joined:
            log.info("worker_joined", worker=obs.worker)
            self._unsaved_workers.add(obs.worker)
            self._unsaved_audit.append({"kind": "joined", "worker": obs.worker, "at": at,
                                        "state": self.fleet.workers[obs.worker].state.value})
            self.flush()
        self.apply(decision)
        if event.get("type") == WEAR_EVENT:
            self.correct(event, at)

    def tick(self, now: float) -> None:
        """Time-based decisions, the guard's decisions, probes, operators' requests."""
        self.prune(now)
        if not self.leading():
            self.refresh(now)
            return
        self.apply(self.fleet.tick(now))
        if self.prober is not None:
            self.probe()
        self.serve_operators()
        self.flush()

    def prune(self, now: float, every_s: float = 10.0) -> None:
        """Stop exporting workers that left long ago (bounded label cardinality)."""
        if now - self._pruned < every_s:
            return
        self._pruned = now
        for name in self.metrics.forget_stale(self.fleet):
            self.wear.pop(name, None)
            self.history.forget(name)
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
        self._reports.clear()

    # --- acting --------------------------------------------------------------------------

    def apply(self, decision: Decision) -> None:
        """Store, log, count and enforce the transitions of a decision; store and audit what
        the guard holds back."""
        self._unsaved_workers.update(decision.changed)
        for name in decision.held:
            w = self.fleet.workers[name]
            log.warning("ejection_held", worker=name, state=w.state.value, held=w.held,
                        reason=w.reason)
            self._unsaved_audit.append({"kind": "held", "worker": name, "at": self.clock(),
                                        "state": w.state.value, "held": w.held,
                                        "reason": w.reason})
        if not decision.transitions:
            if decision.changed:
                self.flush()
            return
        for t in decision.transitions:
            self._unsaved_workers.add(t.worker)
            self._unsaved_audit.append(audit_record(t))
            self.metrics.on_transition(t)
            log.info("worker_transition", worker=t.worker, from_state=t.from_state.value,
                     to_state=t.to_state.value, reason=t.reason, cause=t.cause.value,
                     enforced=t.enforced)
        self.flush()
        if not self.leading():
            return  # the lease went while deciding: the new leader decides for itself
        for t in decision.transitions:
            self.enforce(t)

    def enforce(self, t: Transition) -> None:
        """Take the worker out of rotation or put it back, as the transition says."""
        out = t.to_state in MUST_BE_OUT and t.from_state not in MUST_BE_OUT
        back = t.to_state in CONSUMING and t.from_state in MUST_BE_OUT
        if not (out or back):
            return
        if not t.enforced:
            log.warning("dry_run_would_act", worker=t.worker, action="drain" if out else "admit",
                        reason=t.reason)
            self.metrics.command("drain" if out else "admit", "dry_run")
            return
        if out:
            self._drain(t.worker, t.reason)
        else:
            self._admit(t.worker, t.reason)

    def correct(self, event: Mapping[str, Any], at: float) -> None:
        """Make a worker's gate agree with its state (after a restart of either side)."""
        name = str(event.get("hostname"))
        w = self.fleet.workers.get(name)
        if w is None or not self.fleet.config.enforce:
            return
        if at - self._last_correction.get(name, 0.0) < self.reconcile_s:
            return
        gate_open = event.get("gate") == "open" or bool(event.get("consuming"))
        if w.state in MUST_BE_OUT and gate_open:
            self._last_correction[name] = at
            self._drain(name, f"correction: {w.state.value}: {w.reason}", correction=True)
        elif (w.state in CONSUMING and event.get("gate") == "closed"
              and not event.get("self_protected")):
            self._last_correction[name] = at
            self._admit(name, f"correction: {w.state.value}")
        elif w.state in CONSUMING and (missing := _not_consuming(event)):
            # Alive but not consuming (a cancel_consumer, a reconnect that lost a queue): put
            # it back. Should that not take, its reports keep saying so and the policy ejects it.
            self._last_correction[name] = at
            log.warning("consumption_corrected", worker=name, not_consuming=missing)
            self.metrics.command("consumption_correction", "sent")
            self._admit(name, f"correction: not consuming {', '.join(missing)}")

    def _drain(self, worker: str, reason: str, correction: bool = False) -> None:
        if not self.leading():
            return
        # The gate key first: from the moment it is written no work-queue task starts on the
        # worker, before the command has even reached it. That moment is the enforced verdict.
        try:
            self.store.close_gate(worker, reason, fence=self.fence)
        except LeaseLost as exc:
            self.lose(exc)
            return
        except HealthcheckError as exc:
            log.error("gate_key_write_failed", worker=worker, error=str(exc))
        enforced_at = self.clock()
        reply = self._send("drain", self.actuator.drain, worker, reason)
        if reply is None:
            return
        verdict_at = None if correction else enforced_at
        record: dict[str, Any] = {"kind": "drain_confirmed" if reply.answered else "drain_unconfirmed",
                                  "worker": worker, "at": reply.confirmed_at or self.clock(),
                                  "verdict_at": verdict_at, "reason": reason,
                                  "consuming": reply.body.get("consuming"),
                                  "sent_at": reply.sent_at,
                                  "received_at": reply.body.get("received_at"),
                                  "inflight": reply.body.get("inflight")}
        if reply.answered and verdict_at is not None and reply.confirmed_at is not None:
            record["confirm_s"] = reply.confirmed_at - verdict_at
            self.metrics.drain_confirmed(record["confirm_s"])
        log.info("drain_" + ("confirmed" if reply.answered else "unconfirmed"), worker=worker,
                 reason=reason, confirm_s=record.get("confirm_s"), consuming=record["consuming"],
                 correction=correction)
        self._unsaved_audit.append(record)
        self.flush()

    def _admit(self, worker: str, reason: str) -> None:
        if not self.leading():
            return
        try:
            self.store.open_gate(worker, fence=self.fence)
        except LeaseLost as exc:
            self.lose(exc)
            return
        except HealthcheckError as exc:
            log.error("gate_key_write_failed", worker=worker, error=str(exc))
            return  # the worker would refuse work anyway: try again at the next correction
        reply = self._send("admit", self.actuator.admit, worker, reason)
        if reply is not None:
            log.info("admit_" + ("confirmed" if reply.answered else "unconfirmed"), worker=worker,
                     reason=reason, consuming=reply.body.get("consuming"))
            self._unsaved_audit.append({"kind": "admit_confirmed" if reply.answered
                                        else "admit_unconfirmed", "worker": worker,
                                        "at": reply.confirmed_at or self.clock(), "reason": reason})
            self.flush()

    def _send(self, name: str, command: Callable[[str, str], Reply], worker: str,
              reason: str) -> Reply | None:
        try:
            reply = command(worker, reason)
        except HealthcheckError as exc:
            log.error("control_failed", worker=worker, command=name, error=str(exc))
            self.metrics.command(name, "error")
            return None
        self.metrics.command(name, "confirmed" if reply.answered else "no_reply")
        return reply

    def flush(self) -> None:
        """Write what is not stored yet; on a store failure keep it for the next pass."""
        if not (self._unsaved_workers or self._unsaved_audit or self._reports):
            return
        epoch = self.leadership.epoch if self.leadership is not None else None
        records = [r if epoch is None else {**r, "epoch": epoch} for r in self._unsaved_audit]
        try:
            self.store.commit([self.fleet.workers[n] for n in self._unsaved_workers
                               if n in self.fleet.workers], records, self._reports,
                              fence=self.fence)
            self._reports = {}
        except LeaseLost as exc:
            self.lose(exc)
            return
        except HealthcheckError as exc:
            log.error("store_write_failed", error=str(exc), pending=len(self._unsaved_audit))
            return
        self._unsaved_workers.clear()
        self._unsaved_audit.clear()

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

    # --- operators ----------------------------------------------------------------------

    def serve_operators(self) -> None:
        """Apply operators' waiting requests (drain, quarantine, restore) and answer each."""
        try:
            requests = self.store.take_requests(fence=self.fence)
        except LeaseLost as exc:
            self.lose(exc)
            return
        except HealthcheckError as exc:
            log.error("operator_requests_unavailable", error=str(exc))
            return
        for request in requests:
            answer = self._operator_answer(request)
            request_id = str(request.get("id", ""))
            try:
                self.store.reply(request_id, answer)
            except HealthcheckError as exc:
                log.error("operator_reply_failed", request=request_id, error=str(exc))

    def _operator_answer(self, request: Mapping[str, Any]) -> dict[str, Any]:
        action = str(request.get("action"))
        worker = str(request.get("worker"))
        refusal = self._verifier.refusal(f"operator:{action}", request, "checker")
        if refusal:
            self.metrics.operator_request(action, f"refused_{refusal}")
            log.warning("operator_request_refused", action=action, worker=worker, reason=refusal)
            return {"ok": False, "code": "refused", "error": f"refused: {refusal}"}
        w = self.fleet.workers.get(worker)
        if w is None:
            return {"ok": False, "code": "unknown_worker", "error": f"unknown worker {worker}"}
        target = operator_target(action, w, bool(request.get("force")))
        if not isinstance(target, State):  # State is a str too: test it first
            return {"ok": False, "code": "not_allowed", "error": target}
        reason = f"operator: {request.get('reason') or action}"
        decision = self.fleet.operator(worker, target, reason, self.clock())
        self.apply(decision)
        self.metrics.operator_request(action, "applied")
        log.info("operator_action", action=action, worker=worker, reason=reason,
                 state=self.fleet.workers[worker].state.value)
        return {"ok": True, "worker": worker, "state": self.fleet.workers[worker].state.value,
                "transitions": [audit_record(t) for t in decision.transitions]}


def resumed_fleet(store: HealthStore, config: PolicyConfig, now: float,
                  seed: int | None, recall: bool = True) -> Fleet:
    """The fleet as stored, each worker given ``offline_after_s`` from ``now`` to be heard from,
    and (``recall``) the guard reminded of the ejections of its current window (from the audit
    log; a standby, which never ejects, skips reading it)."""
    import dataclasses
    import random

    workers = {name: dataclasses.replace(w, last_seen=max(w.last_seen, now))
               for name, w in store.load().items()}
    fleet = Fleet(HealthPolicy(config), seed=seed if seed is not None else random.getrandbits(32),
                  workers=workers)
    if not recall:
        return fleet
    window = config.guard.window_s
    fleet.recall_ejections(r["at"] for r in store.history(since=now - window, limit=10_000)
                           if r.get("kind") == "transition" and r.get("cause") == "wear"
                           and r.get("to") == State.DRAINING.value
                           and isinstance(r.get("at"), (int, float)))
    return fleet


def operator_target(action: str, w: Any, force: bool) -> State | str:
    """The state an operator's action leads to, or why it is not allowed."""
    if action == "drain":
        return State.MAINTENANCE
    if action == "quarantine":
        return State.QUARANTINED
    if action != "restore":
        return f"unknown action {action}"
    from healthcheck.policy.model import Cause

    if w.state not in (State.MAINTENANCE, State.QUARANTINED):
        return f"{w.name} is {w.state.value}: only MAINTENANCE or QUARANTINED can be restored"
    if w.cause is not Cause.OPERATOR and not force:
        return (f"{w.name} was quarantined by the checker ({w.reason}); it re-admits it after "
                "probes pass — use --force to override")
    return State.HEALTHY if force else State.PROBATION


def _not_consuming(event: Mapping[str, Any]) -> list[str]:
    """Configured work queues an open-gated worker reports it does not consume."""
    actual = consuming(event)
    if event.get("gate") != "open" or actual is None:
        return []
    return [str(q) for q in event.get("queues") or () if q not in actual]


def report_summary(event: Mapping[str, Any], at: float) -> dict[str, Any]:
    """What ``fleet status`` shows of a worker's last report."""
    wear = event.get("wear") or {}
    return {"at": at, "wear": {m: v[0] for m, v in wear.items()
                               if isinstance(v, (list, tuple)) and v},
            "consuming": event.get("consuming"), "queues": event.get("queues"),
            "inflight": event.get("inflight"), "gate": event.get("gate"),
            "self_protected": event.get("self_protected"), "inject": event.get("inject")}


def audit_record(t: Transition) -> dict[str, Any]:
    """The audit log's record of one transition."""
    return {"kind": "transition", "worker": t.worker, "from": t.from_state.value,
            "to": t.to_state.value, "reason": t.reason, "cause": t.cause.value,
            "automatic": t.automatic, "enforced": t.enforced, "at": t.at,
            "evidence": dict(t.evidence)}


def receive_events(app: Celery, on_event: Callable[[dict[str, Any]], None],
                   stop: threading.Event, on_subscribed: Callable[[], None] | None = None) -> None:
    """Feed every Celery event to ``on_event`` until ``stop``; reconnect when the broker drops.

    ``on_subscribed`` is called each time the receiver is subscribed (events flow from then on).
    """
    delay = 0.5
    while not stop.is_set():
        try:
            with app.connection() as conn:
                recv = app.events.Receiver(conn, handlers={"*": on_event})
                if on_subscribed is not None:
                    recv.on_consume_ready = _then(recv.on_consume_ready, on_subscribed)
                watcher = threading.Thread(target=_stop_when, args=(stop, recv), daemon=True)
                watcher.start()
                delay = 0.5
                recv.capture(limit=None, timeout=None, wakeup=False)
        except Exception as exc:  # the broker went away: wait and reconnect
            log.warning("event_receiver_reconnecting", error=str(exc), delay_s=delay)
            stop.wait(delay)
            delay = min(delay * 2, 10.0)


def _then(first: Callable[..., Any], second: Callable[[], None]) -> Callable[..., None]:
    def both(*args: Any, **kwargs: Any) -> None:
        first(*args, **kwargs)
        second()

    return both


def _stop_when(stop: threading.Event, recv: Any) -> None:
    stop.wait()
    recv.should_stop = True
