"""Enforcement: taking workers out of rotation and putting them back, as the states say.

Out of rotation is the gate key first (from the moment it is written no work-queue task
starts on the worker), then ``host_drain`` to that worker alone; back in is the gate key
opened, then ``host_admit``. Each confirmation (or its absence) is an audit record. A worker
whose gate disagrees with its state (after a restart of either side) is corrected, at most
once per ``reconcile_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker_config.logs import get_logger
from broker_config.wear_event import WearEvent
from healthcheck.actuator import Actuator, Reply
from healthcheck.audit import AuditRecord, Kind
from healthcheck.errors import HealthcheckError, LeaseLost
from healthcheck.leading import Lead
from healthcheck.ledger import Ledger
from healthcheck.metrics import CheckerMetrics
from healthcheck.policy import Transition, WorkerHealth
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
    """

    def __init__(self, gates: GateKeys, actuator: Actuator, lead: Lead, ledger: Ledger,
                 flush: Callable[[], None], metrics: CheckerMetrics, clock: Callable[[], float],
                 reconcile_s: float = 2.0) -> None:
        self.gates = gates
        self.actuator = actuator
        self.lead = lead
        self.ledger = ledger
        self.flush = flush
        self.metrics = metrics
        self.clock = clock
        self.reconcile_s = reconcile_s
        self._last_correction: dict[str, float] = {}

    def reset(self) -> None:
        """Forget when workers were last corrected (a new leader corrects at once)."""
        self._last_correction.clear()

    def enforce(self, t: Transition) -> None:
        """Take the worker out of rotation or put it back, as the transition says."""
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
            self.drain(t.worker, t.reason)
        else:
            self.admit(t.worker, t.reason)

    def correct(self, w: WorkerHealth | None, report: WearEvent, at: float) -> None:
        """Make a worker's gate agree with its state, by what its report says."""
        if w is None or at - self._last_correction.get(w.name, 0.0) < self.reconcile_s:
            return
        gate_open = report.gate == "open" or bool(report.subscribed)
        if w.state in OUT_OF_ROTATION and gate_open:
            self._last_correction[w.name] = at
            self.drain(w.name, f"correction: {w.state.value}: {w.reason}", correction=True)
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

    def drain(self, worker: str, reason: str, correction: bool = False) -> None:
        """Gate key, then ``host_drain``; the confirmation is recorded.

        Raises:
            LeaseLost: another checker leads (nothing was written).
        """
        if not self.lead.leading():
            return
        try:
            self.gates.close_gate(worker, reason, fence=self.lead.fence)
        except LeaseLost:
            raise
        except HealthcheckError as exc:
            log.error("gate_key_write_failed", worker=worker, error=str(exc))
        enforced_at = self.clock()  # the gate key is written: this is the enforced verdict
        reply = self._send("drain", self.actuator.drain, worker, reason)
        if reply is None:
            return
        answered_at = self.clock()
        verdict_at = None if correction else enforced_at
        fields: dict[str, Any] = {
            "verdict_at": verdict_at, "reason": reason, "consuming": reply.body.get("consuming"),
            "sent_at": reply.sent_at, "received_at": reply.body.get("received_at"),
            "inflight": reply.body.get("inflight")}
        if reply.answered and verdict_at is not None:
            # Both ends on the checker's clock: the worker's own clock never enters a duration.
            fields["confirm_s"] = answered_at - verdict_at
            self.metrics.drain_confirmed(fields["confirm_s"])
        kind = Kind.DRAIN_CONFIRMED if reply.answered else Kind.DRAIN_UNCONFIRMED
        log.info(kind.value, worker=worker, reason=reason, confirm_s=fields.get("confirm_s"),
                 consuming=fields["consuming"], correction=correction)
        self.ledger.record(AuditRecord(kind, worker, answered_at, fields))
        self.flush()

    def admit(self, worker: str, reason: str) -> None:
        """Gate key opened, then ``host_admit``; the confirmation is recorded.

        Raises:
            LeaseLost: another checker leads (nothing was written).
        """
        if not self.lead.leading():
            return
        try:
            self.gates.open_gate(worker, fence=self.lead.fence)
        except LeaseLost:
            raise
        except HealthcheckError as exc:
            log.error("gate_key_write_failed", worker=worker, error=str(exc))
            return  # the worker would refuse work anyway: try again at the next correction
        reply = self._send("admit", self.actuator.admit, worker, reason)
        if reply is None:
            return
        kind = Kind.ADMIT_CONFIRMED if reply.answered else Kind.ADMIT_UNCONFIRMED
        log.info(kind.value, worker=worker, reason=reason, consuming=reply.body.get("consuming"))
        self.ledger.record(AuditRecord(kind, worker, self.clock(), {"reason": reason}))
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
