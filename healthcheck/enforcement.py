"""Enforcement: taking workers out of rotation and putting them back, as the states say.

Out of rotation is the gate key first (from the moment it is written no work-queue task
starts on the worker), then ``host_drain`` to that worker alone; back in is the gate key
opened, then ``host_admit``. Each confirmation (or its absence) is an audit record. A worker
whose gate disagrees with its state (after a restart of either side) is corrected, at most
once per ``reconcile_s``.

Acting never blocks watching: with a ``pool``, the gate key is written in the loop (one fenced
store write) and the control command runs on the pool, one at a time per worker; the loop
settles the answers (audit records, metrics) on its next pass. A worker that never answers
costs its own timeout, on a pool thread, not the fleet's.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from broker_config.logs import get_logger
from broker_config.wear_event import WearEvent
from healthcheck.actuator import Actuator, Reply, Sent, judged
from healthcheck.audit import AuditRecord, Kind
from healthcheck.errors import HealthcheckError, LeaseLost
from healthcheck.lease import Lead
from healthcheck.ledger import Ledger
from healthcheck.metrics import CheckerMetrics
from healthcheck.policy import Transition, WorkerHealth
from healthcheck.policy.holds import hold_of
from healthcheck.policy.model import CONSUMING, OUT_OF_ROTATION
from healthcheck.store import GateKeys

log = get_logger(__name__)


class Enforcer:
    """Acts on transitions and corrects gates.

    Args:
        gates: where the gate keys are written.
        actuator: sends the control commands.
        lead: whether this checker may act, and its fence.
        ledger: where the audit records go.
        flush: stores the ledger (raises LeaseLost).
        metrics: counts what was sent and how it went.
        clock: the checker's wall clock.
        reconcile_s: the least time between two corrections of one worker's gate.
        pool: where control commands run (None: in the caller, waiting for each answer).
    """

    def __init__(self, gates: GateKeys, actuator: Actuator, lead: Lead, ledger: Ledger,
                 flush: Callable[[], None], metrics: CheckerMetrics, clock: Callable[[], float],
                 reconcile_s: float = 2.0, pool: Executor | None = None) -> None:
        self.gates = gates
        self.actuator = actuator
        self.lead = lead
        self.ledger = ledger
        self.flush = flush
        self.metrics = metrics
        self.clock = clock
        self.reconcile_s = reconcile_s
        self._last_correction: dict[str, float] = {}
        self._unanswered: dict[str, int] = {}  # commands in a row a worker did not answer
        # When (by the worker's own clock) each worker last answered a command of ours: a report
        # it sampled before then may not show what the command did.
        self._answered_at: dict[str, float] = {}
        self.pool = pool
        self._settled: queue.SimpleQueue[Sent] = queue.SimpleQueue()
        self._waiting: dict[str, deque[Sent]] = {}  # per worker: in flight first, then queued
        self._lock = threading.Lock()  # guards _waiting (the loop and pool threads)

    def reset(self) -> None:
        """Forget when workers were last corrected (a new leader corrects at once)."""
        self._last_correction.clear()
        self._unanswered.clear()

    def enforce(self, t: Transition, hold: str = "") -> None:
        """Take the worker out of rotation or put it back, as the transition says (``hold``:
        what it is held out as, ``healthcheck.policy.holds``)."""
        out = t.to_state in OUT_OF_ROTATION and t.from_state not in OUT_OF_ROTATION
        back = t.to_state in CONSUMING and t.from_state in OUT_OF_ROTATION
        if not (out or back):
            return
        if not t.enforced:
            log.warning("dry_run_would_act", worker=t.worker, action="drain" if out else "admit",
                        reason=t.reason)
            self.metrics.command("drain" if out else "admit", "dry_run")
            return
        if out:
            self.drain(t.worker, t.reason, hold=hold)
        else:
            self.admit(t.worker, t.reason)

    def correct(self, w: WorkerHealth | None, report: WearEvent, at: float) -> None:
        """Make a worker's gate agree with its state, by what its report says: at most once per
        ``reconcile_s``, never while a command to it is still out, never by a report the worker
        sampled before it answered our last command (it may have been sent before the command
        arrived and be heard after its answer), and less often each time it does not answer
        (doubling, up to a minute)."""
        if w is None or w.name in self._waiting:
            return
        if report.at is not None and report.at < self._answered_at.get(w.name, float("-inf")):
            return
        every = min(60.0, self.reconcile_s * 2 ** self._unanswered.get(w.name, 0))
        if at - self._last_correction.get(w.name, 0.0) < every:
            return
        gate_open = report.gate == "open" or bool(report.subscribed)
        if w.state in OUT_OF_ROTATION and gate_open:
            self._last_correction[w.name] = at
            self.drain(w.name, f"correction: {w.state.value}: {w.reason}", correction=True,
                       hold=hold_of(w))
        elif w.state in CONSUMING and report.gate == "closed" and not report.self_protected:
            self._last_correction[w.name] = at
            self.admit(w.name, f"correction: {w.state.value}")
        elif w.state in CONSUMING and (missing := report.not_consuming):
            # Alive but not consuming (a cancel_consumer, a reconnect that lost a queue): put
            # it back. Should that not take, its reports keep saying so and the policy ejects it.
            self._last_correction[w.name] = at
            log.warning("consumption_corrected", worker=w.name, not_consuming=missing)
            self.metrics.command("consumption_correction", "sent")
            self.admit(w.name, f"correction: not consuming {', '.join(missing)}")

    def drain(self, worker: str, reason: str, correction: bool = False, hold: str = "") -> None:
        """Gate key, then ``host_drain``; the confirmation is recorded when it is settled.

        Raises:
            LeaseLost: another checker leads (nothing was written).
        """
        if not self.lead.leading():
            return
        record = self._ordered(Kind.DRAIN_ORDERED, worker, reason, correction)
        try:
            self.gates.close_gate(worker, reason, fence=self.lead.fence, record=record.to_dict())
        except LeaseLost:
            raise
        except HealthcheckError as exc:
            log.error("gate_key_write_failed", worker=worker, error=str(exc))
            self.ledger.record(record)  # the command still goes: its record waits for the store
        # The gate key is written: this is the enforced verdict (a correction has none).
        self._send(Sent("drain", worker, reason, None if correction else self.clock(), hold))

    def admit(self, worker: str, reason: str) -> None:
        """Gate key opened, then ``host_admit``; the confirmation is recorded when settled.

        Raises:
            LeaseLost: another checker leads (nothing was written).
        """
        if not self.lead.leading():
            return
        record = self._ordered(Kind.ADMIT_ORDERED, worker, reason, correction=False)
        try:
            self.gates.open_gate(worker, fence=self.lead.fence, record=record.to_dict())
        except LeaseLost:
            raise
        except HealthcheckError as exc:
            log.error("gate_key_write_failed", worker=worker, error=str(exc))
            return  # the worker would refuse work anyway: try again at the next correction
        self._send(Sent("admit", worker, reason, None))

    def recycle(self, worker: str, reason: str) -> None:
        """``host_recycle``: a worker out of rotation restarts its pool (it refuses while in
        rotation); the answer is recorded when settled."""
        if self.lead.leading():
            self._send(Sent("recycle", worker, reason, None))

    def _ordered(self, kind: Kind, worker: str, reason: str, correction: bool) -> AuditRecord:
        """The record written with a gate key (stamped with the leader's epoch)."""
        return AuditRecord.ordered(kind, worker, self.clock(), reason,
                                   correction).with_epoch(self.lead.epoch)

    @property
    def in_flight(self) -> int:
        """Commands sent or queued and not answered yet."""
        with self._lock:
            return sum(len(q) for q in self._waiting.values())

    def settle(self) -> None:
        """Record the answers that came back (the loop's thread)."""
        while True:
            try:
                sent = self._settled.get_nowait()
            except queue.Empty:
                return
            self._record(sent)

    def _send(self, sent: Sent) -> None:
        if self.pool is None:
            self._run(sent)
            self._record(sent)
            return
        with self._lock:
            line = self._waiting.setdefault(sent.worker, deque())
            line.append(sent)
            first = len(line) == 1  # nothing in flight for this worker: send now
        if first:
            self.pool.submit(self._run_line, sent.worker)

    def _run_line(self, worker: str) -> None:
        """A pool thread: send ``worker``'s commands one after another, handing each answer to
        the loop, until its line is empty."""
        while True:
            with self._lock:
                sent = self._waiting[worker][0]
            self._run(sent)
            self._settled.put(sent)
            with self._lock:
                line = self._waiting[worker]
                line.popleft()
                if not line:
                    del self._waiting[worker]
                    return

    def _run(self, sent: Sent) -> None:
        try:
            if sent.command == "drain":
                sent.reply = self.actuator.drain(sent.worker, sent.reason, sent.hold)
            else:
                command = {"admit": self.actuator.admit, "recycle": self.actuator.recycle}
                sent.reply = command[sent.command](sent.worker, sent.reason)
        except HealthcheckError as exc:
            sent.error = str(exc)
        except Exception as exc:  # whatever it was, the worker's line goes on
            # An error nobody foresaw (a broker client's own, after a restart) must not leave
            # the command in its worker's line for ever: every later command and correction
            # to that worker would wait behind it (seed 55 of the nemesis: a worker left
            # drained while the checker said HEALTHY). It counts as a command not answered.
            sent.error = f"{type(exc).__name__}: {exc}"
        sent.answered_at = self.clock()
        # Here, before the command leaves its worker's line (on a pool thread, before the loop
        # settles it): from then on ``correct`` reads reports again, and must know the answer.
        worker_at = sent.reply.body.get("at") if sent.reply and sent.reply.answered else None
        if isinstance(worker_at, (int, float)) and not isinstance(worker_at, bool):
            self._answered_at[sent.worker] = float(worker_at)

    def _record(self, sent: Sent) -> None:
        if sent.reply is None:
            log.error("control_failed", worker=sent.worker, command=sent.command,
                      error=sent.error)
            self.metrics.command(sent.command, "error")
            self._unanswered[sent.worker] = self._unanswered.get(sent.worker, 0) + 1
            return
        reply = sent.reply
        if sent.command == "recycle":
            self._recycled(sent, reply)
            return
        error, outcome = judged(reply)
        confirmed = outcome == "confirmed"
        self.metrics.command(sent.command, outcome)
        if reply.answered:
            self._unanswered.pop(sent.worker, None)
        else:
            self._unanswered[sent.worker] = self._unanswered.get(sent.worker, 0) + 1
        refused = {"error": error} if outcome == "refused" else {}
        if sent.command == "admit":
            kind = Kind.ADMIT_CONFIRMED if confirmed else Kind.ADMIT_UNCONFIRMED
            log.info(kind.value, worker=sent.worker, reason=sent.reason,
                     consuming=reply.body.get("consuming"), error=refused.get("error"))
            self.ledger.record(AuditRecord(kind, sent.worker, sent.answered_at,
                                           {"reason": sent.reason, **refused}))
            self.flush()
            return
        fields: dict[str, Any] = {
            "verdict_at": sent.verdict_at, "reason": sent.reason,
            "consuming": reply.body.get("consuming"), "sent_at": reply.sent_at,
            "received_at": reply.body.get("received_at"), "inflight": reply.body.get("inflight"),
            **refused}
        if confirmed and sent.verdict_at is not None:
            # Both ends on the checker's clock: the worker's own clock never enters a duration.
            fields["confirm_s"] = sent.answered_at - sent.verdict_at
            self.metrics.drain_confirmed(fields["confirm_s"])
        kind = Kind.DRAIN_CONFIRMED if confirmed else Kind.DRAIN_UNCONFIRMED
        log.info(kind.value, worker=sent.worker, reason=sent.reason,
                 confirm_s=fields.get("confirm_s"), consuming=fields["consuming"],
                 correction=sent.verdict_at is None)
        self.ledger.record(AuditRecord(kind, sent.worker, sent.answered_at, fields))
        self.flush()

    def _recycled(self, sent: Sent, reply: Reply) -> None:
        error, outcome = judged(reply)
        self.metrics.command("recycle", outcome)
        fields: dict[str, Any] = {"reason": sent.reason}
        if error is None:
            self.metrics.recycled(sent.worker)
            restarted = reply.body.get("restarted")
            if isinstance(restarted, int):
                fields["restarted"] = restarted
        else:
            fields["error"] = str(error)
        kind = Kind.RECYCLED if error is None else Kind.RECYCLE_UNCONFIRMED
        log.warning(kind.value, worker=sent.worker, reason=sent.reason, error=error)
        self.ledger.record(AuditRecord(kind, sent.worker, sent.answered_at, fields))
        self.flush()
