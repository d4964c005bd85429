"""host's remote control commands, run by a worker's main process.

Registered when this module is imported (``workers.install``). Every command is addressed to
one worker by name; the command line refuses to send one without a destination.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command

from workers import inject
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
