"""Operators' requests: drain, quarantine and restore, signed, applied by the leading checker.

``fleet drain|quarantine|restore`` queue a request in the store (``OperatorRequests``); the
leader takes the waiting ones each tick, checks the signature, applies what is allowed
through the policy (so the guard's figures and the audit log see it) and answers each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from broker_config.logs import get_logger
from broker_config.signing import Verifier
from healthcheck.audit import AuditRecord
from healthcheck.errors import HealthcheckError, LeaseLost
from healthcheck.lease import Lead
from healthcheck.metrics import CheckerMetrics
from healthcheck.policy import Cause, Decision, Fleet, State, WorkerHealth
from healthcheck.store import OperatorRequests

log = get_logger(__name__)


def operator_target(action: str, w: WorkerHealth, force: bool) -> State | str:
    """The state an operator's action leads to, or why it is not allowed."""
    if action in ("drain", "stop"):  # stop: a drain that ends when the worker starts again
        return State.MAINTENANCE
    if action == "quarantine":
        return State.QUARANTINED
    if action != "restore":
        return f"unknown action {action}"
    if w.state not in (State.MAINTENANCE, State.QUARANTINED):
        return f"{w.name} is {w.state.value}: only MAINTENANCE or QUARANTINED can be restored"
    if w.cause not in (Cause.OPERATOR, Cause.STOPPING) and not force:
        return (f"{w.name} was quarantined by the checker ({w.reason}); it re-admits it after "
                "probes pass — use --force to override")
    return State.HEALTHY if force else State.PROBATION


class OperatorDesk:
    """Takes operators' requests from the store and answers them.

    Args:
        requests: where requests wait and answers go.
        verifier: checks each request's signature (``operator:<action>``).
        lead: this checker's fence.
        metrics: counts requests by outcome.
        clock: the checker's wall clock.
        sharding: this checker's shard (``healthcheck.sharding.Sharding``; None: unsharded):
            a request about another shard's worker is handed to that shard's checker.
    """

    def __init__(self, requests: OperatorRequests, verifier: Verifier, lead: Lead,
                 metrics: CheckerMetrics, clock: Callable[[], float],
                 sharding: Any = None) -> None:
        self.requests = requests
        self.verifier = verifier
        self.lead = lead
        self.metrics = metrics
        self.clock = clock
        self.sharding = sharding

    def serve(self, fleet: Fleet, apply: Callable[[Decision], None]) -> None:
        """Apply the waiting requests to ``fleet`` (``apply`` stores and enforces a decision).

        Raises:
            LeaseLost: another checker leads (no request was taken).
        """
        try:
            waiting = self.requests.take_requests(fence=self.lead.fence)
        except LeaseLost:
            raise
        except HealthcheckError as exc:
            log.error("operator_requests_unavailable", error=str(exc))
            return
        for request in waiting:
            if self._forwarded(request):
                continue
            answer = self.answer(request, fleet, apply)
            request_id = str(request.get("id", ""))
            try:
                self.requests.reply(request_id, answer)
            except HealthcheckError as exc:
                log.error("operator_reply_failed", request=request_id, error=str(exc))

    def _forwarded(self, request: Mapping[str, Any]) -> bool:
        """Hand a request about another shard's worker to that shard (a `fleet` command run
        with another shard count than the checkers'); True when it was."""
        if self.sharding is None or self.sharding.mine(str(request.get("worker"))):
            return False
        shard = self.sharding.shard_of(str(request.get("worker")))
        try:
            self.requests.forward(request, shard)
        except HealthcheckError as exc:
            log.error("operator_forward_failed", request=request.get("id"), error=str(exc))
            return False
        log.info("operator_request_forwarded", worker=request.get("worker"), shard=shard)
        return True

    def answer(self, request: Mapping[str, Any], fleet: Fleet,
               apply: Callable[[Decision], None]) -> dict[str, Any]:
        """Apply one request; the answer the operator gets."""
        action = str(request.get("action"))
        worker = str(request.get("worker"))
        refusal = self.verifier.refusal(f"operator:{action}", request, "checker")
        if refusal:
            self.metrics.operator_request(action, f"refused_{refusal}")
            log.warning("operator_request_refused", action=action, worker=worker, reason=refusal)
            return {"ok": False, "code": "refused", "error": f"refused: {refusal}"}
        w = fleet.workers.get(worker)
        if w is None:
            return {"ok": False, "code": "unknown_worker", "error": f"unknown worker {worker}"}
        target = operator_target(action, w, bool(request.get("force")))
        if not isinstance(target, State):  # State is a str too: test it first
            return {"ok": False, "code": "not_allowed", "error": target}
        reason = f"operator: {request.get('reason') or action}"
        decision = fleet.operator(worker, target, reason, self.clock(), stopping=action == "stop")
        apply(decision)
        self.metrics.operator_request(action, "applied")
        state = fleet.workers[worker].state.value
        log.info("operator_action", action=action, worker=worker, reason=reason, state=state)
        return {"ok": True, "worker": worker, "state": state,
                "transitions": [AuditRecord.transition(t).to_dict() for t in decision.transitions]}
