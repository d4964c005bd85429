"""host's remote control commands, run by a worker's main process, and the ones it refuses.

Every host command is addressed to one worker by name and, when ``HOST_CONTROL_SECRET`` is
set, must carry a valid signature for this worker (``broker_config.signing``): unsigned, forged,
expired or replayed commands are refused, logged and counted. Nonces are kept in the store, so
a command is obeyed at most once fleet-wide, whatever restarts.

Celery's built-ins that change what a worker consumes or how much it can do (``GUARDED``:
add/cancel consumer, rate and time limits, autoscale, pool grow/shrink, revoke with terminate,
terminate, shutdown, pool restart, objgraph) are refused unless signed like host's own
commands, or named in ``HOST_ALLOW_CONTROL``; the destructive ones (``DANGEROUS``) need
``HOST_ALLOW_DANGEROUS_CONTROL`` as well. Whoever sends it, no command subscribes a worker out
of rotation to a work queue. Inspection (``celery inspect``, Flower's pages) is untouched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import psutil
from celery.worker import state as worker_state
from celery.worker.control import Panel, control_command

from broker_config.app import settings_of
from broker_config.logs import get_logger
from broker_config.settings import EX_RECYCLE
from broker_config.settings_rules import GUARDED_BUILTINS
from broker_config.signing import SIGNATURE_FIELDS, NonceMemory, Verifier
from workers import gate
from workers.runtime import RUNTIME

log = get_logger(__name__)

#: Celery built-ins that stop, restart or kill: refused unless HOST_ALLOW_DANGEROUS_CONTROL.
DANGEROUS = ("shutdown", "pool_restart", "terminate")
#: Signed or allowed by name, else refused (see broker_config.settings.GUARDED_BUILTINS).
GUARDED = GUARDED_BUILTINS
_TERMINATING = ("revoke", "revoke_by_stamped_headers")
#: Celery's own handlers of the guarded commands, as Celery registered them in its (process-
#: wide) Panel: kept once, so that configuring again never wraps a guard in a guard.
_BUILTINS: dict[str, Callable[..., Any]] = {}


def configure(secret: str, allow_dangerous: bool, worker: str, previous: str = "",
              allowed: tuple[str, ...] = (), nonces: NonceMemory | None = None) -> None:
    """Set the secret commands must be signed with, and guard Celery's built-ins.

    Args:
        allowed: guarded built-ins obeyed unsigned (``HOST_ALLOW_CONTROL``).
        nonces: the fleet-wide memory of used nonces.
    """
    RUNTIME.verifier = Verifier(secret, time.time, previous=previous, nonces=nonces)
    if not secret:
        log.warning("control_commands_unsigned", worker=worker,
                    note="HOST_CONTROL_SECRET is not set: any client of the broker can drain "
                         "this worker (refused in production)")
    for name in GUARDED:
        original = _BUILTINS.setdefault(name, Panel.data[name])
        # HOST_ALLOW_DANGEROUS_CONTROL lets the destructive ones through as Celery sends them.
        dangerous = name in DANGEROUS
        Panel.data[name] = _guarded(name, original, name in allowed or (dangerous and allow_dangerous),
                                    dangerous and not allow_dangerous)


def _guarded(name: str, original: Callable[..., Any], allowed: bool,
             disabled: bool) -> Callable[..., Any]:
    def guard(state: Any, **arguments: Any) -> Any:
        if name in _TERMINATING and not arguments.get("terminate"):
            return original(state, **arguments)  # a plain revoke changes no capacity
        worker = state.consumer.hostname
        if disabled:
            return _refuse(name, "disabled", worker,
                           f"{name} is disabled on host workers (HOST_ALLOW_DANGEROUS_CONTROL)")
        if not allowed:
            reason = RUNTIME.verifier.refusal(name, arguments, worker)
            if reason is not None or not RUNTIME.verifier.secret:
                return _refuse(name, reason or "unsigned", worker,
                               f"refused: {reason or 'unsigned'} ({name} changes what a host "
                               "worker consumes or can do: sign it, or name it in "
                               "HOST_ALLOW_CONTROL)")
        if name == "add_consumer" and not gate.allows(str(arguments.get("queue")), worker):
            return _refuse(name, "out_of_rotation", worker,
                           f"refused: {worker} is out of rotation; only the checker's admit "
                           "puts it back on a work queue")
        plain = {k: v for k, v in arguments.items() if k not in SIGNATURE_FIELDS}
        return original(state, **plain)

    return guard


def _refuse(name: str, reason: str, worker: str, message: str) -> dict[str, Any]:
    RUNTIME.refused[(name, reason)] += 1
    log.warning("control_command_refused", command=name, reason=reason, worker=worker)
    return {"error": message}


def _authentic(state: Any, command: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
    """None if the command may run; else the error reply (and the refusal is counted)."""
    worker = state.consumer.hostname
    reason = RUNTIME.verifier.refusal(command, arguments, worker)
    if reason is None:
        return None
    RUNTIME.refused[(command, reason)] += 1
    log.warning("control_command_refused", command=command, reason=reason, worker=worker)
    return {"error": f"refused: {reason}"}


@control_command(args=[("spec", str)], signature="[SPEC]")
def host_inject(state: Any, spec: str = "", **signed: Any) -> dict[str, Any]:
    """Change this worker's fault injection at run time ("" clears it)."""
    refused = _authentic(state, "host_inject", {"spec": spec, **signed})
    if refused:
        return refused
    board = RUNTIME.board
    if board is None:
        return {"error": "this worker has no injection board"}
    try:
        injection = board.set(spec)
    except ValueError as exc:
        return {"error": str(exc)}
    log.warning("wear_injection_changed", spec=injection.spec() or None,
                worker=state.consumer.hostname)
    return {"ok": injection.spec()}


def _fenced(state: Any, command: str, epoch: int | None,
            signed: dict[str, Any]) -> dict[str, Any] | None:
    """None if ``epoch`` is the current one of the lease of the shard the command names (or
    newer), and no older than any this worker obeyed before; else the error reply.

    A checker that lost its lease (paused past its TTL, say) may still send what it decided
    before; the store's epoch has moved on by then, so the command is refused here. A store
    that failed over may have lost its newest epoch: the highest one this worker obeyed still
    stands, so an older leader is refused by every worker that heard from a newer one. The
    shard is part of what was signed.
    """
    shard = signed.get("shard", 0)
    if not isinstance(shard, int) or isinstance(shard, bool) or shard < 0:
        return {"error": f"refused: bad shard {shard!r}"}
    if epoch is None:
        return None
    stored = RUNTIME.checker.epoch(shard) if RUNTIME.checker is not None else None
    current = max(stored or 0, RUNTIME.epochs.get(shard, 0))
    if epoch >= current:
        RUNTIME.epochs[shard] = epoch
        return None
    RUNTIME.refused[(command, "stale_leader")] += 1
    log.warning("control_command_refused", command=command, reason="stale_leader",
                epoch=epoch, current_epoch=current, worker=state.consumer.hostname)
    return {"error": f"refused: stale_leader (epoch {epoch} < {current})"}


def _arguments(reason: str, epoch: int | None, signed: dict[str, Any]) -> dict[str, Any]:
    return {"reason": reason, **({} if epoch is None else {"epoch": epoch}), **signed}


@control_command(args=[("reason", str), ("epoch", int)], signature="[REASON] [EPOCH]")
def host_drain(state: Any, reason: str = "drain", epoch: int | None = None,
               **signed: Any) -> dict[str, Any]:
    """Take this worker out of rotation: close the gate, stop consuming work queues, then reply.

    In-flight tasks finish; reserved ones are handed back unstarted by the gate. ``hold``
    (signed with the rest) is what the checker holds it out as; the worker reports it back.
    """
    received = time.time()
    refused = (_authentic(state, "host_drain", _arguments(reason, epoch, signed))
               or _fenced(state, "host_drain", epoch, signed))
    if refused:
        return refused
    status = gate.take_out(state.consumer, reason, str(signed.get("hold") or ""))
    status["received_at"] = received
    log.warning("worker_drained", reason=reason, consuming=status["consuming"],
                inflight=status["inflight"], epoch=epoch, shard=signed.get("shard"))
    return {"ok": True, **status}


@control_command(args=[("reason", str), ("epoch", int)], signature="[REASON] [EPOCH]")
def host_admit(state: Any, reason: str = "admit", epoch: int | None = None,
               **signed: Any) -> dict[str, Any]:
    """Put this worker back in rotation: consume its work queues again, then open the gate."""
    refused = (_authentic(state, "host_admit", _arguments(reason, epoch, signed))
               or _fenced(state, "host_admit", epoch, signed))
    if refused:
        return refused
    status = gate.put_back(state.consumer, reason)
    log.info("worker_admitted", reason=reason, consuming=status["consuming"], epoch=epoch,
             shard=signed.get("shard"))
    return {"ok": True, **status}


@control_command(args=[("reason", str), ("epoch", int)], signature="[REASON] [EPOCH]")
def host_recycle(state: Any, reason: str = "recycle", epoch: int | None = None,
                 **signed: Any) -> dict[str, Any]:
    """Restart this worker's pool: each pool process is replaced by a fresh one (what a leak
    grew, or a stuck process held, is gone), or with HOST_RECYCLE=exit the whole worker, by its
    platform. Only out of rotation: a worker whose gate is open refuses, so that a recycle never
    costs the fleet a working worker's capacity."""
    refused = (_authentic(state, "host_recycle", _arguments(reason, epoch, signed))
               or _fenced(state, "host_recycle", epoch, signed))
    if refused:
        return refused
    g = gate.gate()
    if g is None or g.is_open():
        RUNTIME.refused[("host_recycle", "in_rotation")] += 1
        return {"error": "refused: in rotation (only a worker out of rotation is recycled)"}
    if settings_of(state.consumer.app).recycle == "exit":
        return _exit_for_platform(state, reason)
    # Each pool process is ended (SIGTERM) and billiard starts a fresh one in its place. Not
    # billiard's graceful restart: its processes wait on their pipe with no timeout and look
    # at the restart flag only when a job wakes them, and a stuck one never would.
    processes = _pool_processes(state)
    if not processes:
        return {"error": "refused: this pool has no processes to restart"}
    ended = strays = 0
    for process in processes:
        strays += _end_descendants(process.pid)  # ended with their pool process, not left
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(process.pid, signal.SIGTERM)
            ended += 1
    log.warning("worker_recycled", reason=reason, restarted=ended, strays_ended=strays,
                worker=state.consumer.hostname)
    return {"ok": True, "restarted": ended, "strays_ended": strays, "at": time.time()}


def _exit_for_platform(state: Any, reason: str) -> dict[str, Any]:
    """HOST_RECYCLE=exit: the whole worker ends (what its pool processes started first), warm,
    with EX_RECYCLE, for its platform to start it again (a pod's restartPolicy, a unit's
    Restart=on-failure): what grew in the main process goes too. It starts again out of
    rotation, as the checker last knew it, and earns its way back as a recycled pool does."""
    processes = _pool_processes(state)
    strays = sum(_end_descendants(p.pid) for p in processes)
    # the consumer's loop stops at its next turn, with this exit code (typed None in Celery)
    worker_state.should_stop = EX_RECYCLE  # type: ignore[assignment]
    log.warning("worker_recycled", reason=reason, restarted="worker", strays_ended=strays,
                exit_code=EX_RECYCLE, worker=state.consumer.hostname)
    return {"ok": True, "restarted": "worker", "exit_code": EX_RECYCLE, "strays_ended": strays,
            "at": time.time()}


def _pool_processes(state: Any) -> list[Any]:
    """The prefork pool's processes (billiard's; none for another pool)."""
    return list(getattr(getattr(state.consumer.controller.pool, "_pool", None), "_pool",
                        None) or ())


def _end_descendants(pid: int) -> int:
    """SIGKILL what a pool process started (a pool restart alone would leave them running,
    handed to init); how many."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    return len(children)


@control_command()
def host_gate(state: Any, **signed: Any) -> dict[str, Any]:
    """Report the gate and the queues without changing anything."""
    refused = _authentic(state, "host_gate", signed)
    if refused:
        return refused
    return {"ok": True, **gate.status(state.consumer)}


def refused_counts() -> dict[str, int]:
    """Refusals as ``command:reason`` -> count, for the wear report."""
    return {f"{c}:{r}": n for (c, r), n in RUNTIME.refused.items()}
