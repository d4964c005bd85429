"""host's remote control commands, run by a worker's main process, and the ones it refuses.

Every host command is addressed to one worker by name and, when ``HOST_CONTROL_SECRET`` is
set, must carry a valid signature for this worker (``broker_config.signing``): unsigned, forged,
expired or replayed commands are refused, logged and counted. Celery's destructive built-ins
(``shutdown``, ``pool_restart``, ``pool_shrink``) are refused unless
``HOST_ALLOW_DANGEROUS_CONTROL`` is set.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from celery.worker.control import Panel, control_command

from broker_config.signing import Verifier
from workers import gate, inject
from workers.logs import get_logger

log = get_logger(__name__)

DANGEROUS = ("shutdown", "pool_restart", "pool_shrink")
#: Refused commands by (command, reason), reported in every wear report.
REFUSED: Counter[tuple[str, str]] = Counter()

_verifier = Verifier("", time.time)


def configure(secret: str, allow_dangerous: bool, worker: str, previous: str = "") -> None:
    """Set the secret commands must be signed with, and disarm Celery's destructive built-ins."""
    global _verifier
    _verifier = Verifier(secret, time.time, previous=previous)
    if not secret:
        log.warning("control_commands_unsigned", worker=worker,
                    note="HOST_CONTROL_SECRET is not set: any client of the broker can drain "
                         "this worker (refused in production)")
    if not allow_dangerous:
        for name in DANGEROUS:
            Panel.data[name] = _refusing(name)


def _refusing(name: str) -> Callable[..., dict[str, Any]]:
    def refuse(state: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        REFUSED[(name, "disabled")] += 1
        log.warning("control_command_refused", command=name, reason="disabled",
                    worker=state.consumer.hostname)
        return {"error": f"{name} is disabled on host workers (HOST_ALLOW_DANGEROUS_CONTROL)"}

    return refuse


def _authentic(state: Any, command: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
    """None if the command may run; else the error reply (and the refusal is counted)."""
    worker = state.consumer.hostname
    reason = _verifier.refusal(command, arguments, worker)
    if reason is None:
        return None
    REFUSED[(command, reason)] += 1
    log.warning("control_command_refused", command=command, reason=reason, worker=worker)
    return {"error": f"refused: {reason}"}


@control_command(args=[("spec", str)], signature="[SPEC]")
def host_inject(state: Any, spec: str = "", **signed: Any) -> dict[str, Any]:
    """Change this worker's fault injection at run time ("" clears it)."""
    refused = _authentic(state, "host_inject", {"spec": spec, **signed})
    if refused:
        return refused
    board = inject.board()
    if board is None:
        return {"error": "this worker has no injection board"}
    try:
        injection = board.set(spec)
    except ValueError as exc:
        return {"error": str(exc)}
    log.warning("wear_injection_changed", spec=injection.spec() or None,
                worker=state.consumer.hostname)
    return {"ok": injection.spec()}


def _fenced(state: Any, command: str, epoch: int | None) -> dict[str, Any] | None:
    """None if ``epoch`` is the checker lease's current one (or newer); else the error reply.

    A checker that lost its lease (paused past its TTL, say) may still send what it decided
    before; the store's epoch has moved on by then, so the command is refused here.
    """
    current = gate.checker_epoch()
    if epoch is None or current is None or epoch >= current:
        return None
    REFUSED[(command, "stale_leader")] += 1
    log.warning("control_command_refused", command=command, reason="stale_leader",
                epoch=epoch, current_epoch=current, worker=state.consumer.hostname)
    return {"error": f"refused: stale_leader (epoch {epoch} < {current})"}


def _arguments(reason: str, epoch: int | None, signed: dict[str, Any]) -> dict[str, Any]:
    return {"reason": reason, **({} if epoch is None else {"epoch": epoch}), **signed}


@control_command(args=[("reason", str), ("epoch", int)], signature="[REASON] [EPOCH]")
def host_drain(state: Any, reason: str = "drain", epoch: int | None = None,
               **signed: Any) -> dict[str, Any]:
    """Take this worker out of rotation: close the gate, stop consuming work queues, then reply.

    In-flight tasks finish; reserved ones are handed back unstarted by the gate.
    """
    received = time.time()
    refused = (_authentic(state, "host_drain", _arguments(reason, epoch, signed))
               or _fenced(state, "host_drain", epoch))
    if refused:
        return refused
    status = gate.take_out(state.consumer, reason)
    status["received_at"] = received
    log.warning("worker_drained", reason=reason, consuming=status["consuming"],
                inflight=status["inflight"])
    return {"ok": True, **status}


@control_command(args=[("reason", str), ("epoch", int)], signature="[REASON] [EPOCH]")
def host_admit(state: Any, reason: str = "admit", epoch: int | None = None,
               **signed: Any) -> dict[str, Any]:
    """Put this worker back in rotation: consume its work queues again, then open the gate."""
    refused = (_authentic(state, "host_admit", _arguments(reason, epoch, signed))
               or _fenced(state, "host_admit", epoch))
    if refused:
        return refused
    status = gate.put_back(state.consumer, reason)
    log.info("worker_admitted", reason=reason, consuming=status["consuming"])
    return {"ok": True, **status}


@control_command()
def host_gate(state: Any, **signed: Any) -> dict[str, Any]:
    """Report the gate and the queues without changing anything."""
    refused = _authentic(state, "host_gate", signed)
    if refused:
        return refused
    return {"ok": True, **gate.status(state.consumer)}


def refused_counts() -> dict[str, int]:
    """Refusals as ``command:reason`` -> count, for the wear report."""
    return {f"{c}:{r}": n for (c, r), n in REFUSED.items()}
