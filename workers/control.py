"""host's remote control commands, run by a worker's main process.

Registered when this module is imported (``workers.install``). Every command is addressed to
one worker by name; the command line refuses to send one without a destination.
"""

from __future__ import annotations

import time
from typing import Any

from celery.worker.control import control_command

from workers import gate, inject
from workers.logs import get_logger

log = get_logger(__name__)


@control_command(args=[("spec", str)], signature="[SPEC]")
def host_inject(state: Any, spec: str = "") -> dict[str, Any]:
    """Change this worker's fault injection at run time ("" clears it)."""
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


@control_command(args=[("reason", str)], signature="[REASON]")
def host_drain(state: Any, reason: str = "drain") -> dict[str, Any]:
    """Take this worker out of rotation: close the gate, stop consuming work queues, then reply.

    In-flight tasks finish; reserved ones are handed back unstarted by the gate.
    """
    received = time.time()
    status = gate.take_out(state.consumer, reason)
    status["received_at"] = received
    log.warning("worker_drained", reason=reason, consuming=status["consuming"],
                inflight=status["inflight"])
    return {"ok": True, **status}


@control_command(args=[("reason", str)], signature="[REASON]")
def host_admit(state: Any, reason: str = "admit") -> dict[str, Any]:
    """Put this worker back in rotation: consume its work queues again, then open the gate."""
    status = gate.put_back(state.consumer, reason)
    log.info("worker_admitted", reason=reason, consuming=status["consuming"])
    return {"ok": True, **status}


@control_command()
def host_gate(state: Any) -> dict[str, Any]:
    """Report the gate and the queues without changing anything."""
    return {"ok": True, **gate.status(state.consumer)}
