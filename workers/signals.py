"""Celery signal receivers: logging set-up, per-task log context, the private verify queue."""

from __future__ import annotations

import logging
from typing import Any

import structlog
from celery import Celery, signals

from broker_config import tracing
from broker_config.app import settings_of
from broker_config.logs import configure_logging, get_logger
from broker_config.queues import dead_queue, verify_queue
from workers import control, gate, status, tally
from workers.checker_view import RedisCheckerView
from workers.inject import install_board
from workers.sentiment import analyzer

log = get_logger(__name__)


def connect(app: Celery) -> None:
    """Connect host's receivers (idempotent: Celery signals dedupe by dispatch_uid)."""
    signals.setup_logging.connect(_setup_logging, weak=False, dispatch_uid="host.setup_logging")
    signals.celeryd_after_setup.connect(_add_verify_queue, weak=False,
                                        dispatch_uid="host.verify_queue")
    signals.worker_init.connect(_install_injection, weak=False, dispatch_uid="host.injection")
    signals.worker_process_init.connect(_warm_up, weak=False, dispatch_uid="host.warm_up")
    signals.worker_process_shutdown.connect(_flush_traces, weak=False,
                                            dispatch_uid="host.flush_traces")
    signals.worker_ready.connect(_serve_status, weak=False, dispatch_uid="host.status")
    signals.task_prerun.connect(_bind_task, weak=False, dispatch_uid="host.bind_task")
    signals.task_postrun.connect(_unbind_task, weak=False, dispatch_uid="host.unbind_task")


def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    from celery import current_app

    settings = settings_of(current_app)
    # `celery worker -l` arrives as a level number; without it, HOST_LOG_LEVEL decides.
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else settings.log_level
    configure_logging(settings.log_format, str(level))


def _add_verify_queue(sender: str, instance: Any, **_: Any) -> None:
    """Every worker consumes its own ``host.verify.<name>`` queue, whatever ``-Q`` says.

    A worker that the checker last knew out of rotation starts out of rotation too
    (fail static): its gate closed, its work queues not consumed until the checker admits it.
    """
    structlog.contextvars.bind_contextvars(worker=sender)
    queues = instance.app.amqp.queues
    settings = settings_of(instance.app)
    if settings.queue_type == "quorum":
        queues.select_add(dead_queue())  # every worker in rotation records what the broker drops
    configured = list(queues.consume_from)
    queue = verify_queue(sender)
    queues.select_add(queue)
    log.info("verify_queue_added", queue=queue.name)
    checker = RedisCheckerView.from_url(settings.store)
    control.configure(settings.control_secret, settings.allow_dangerous_control, sender,
                      previous=settings.control_secret_previous,
                      allowed=settings.allowed_control, nonces=checker.nonces())
    held = gate.install(sender, configured, checker)
    if held is not None:
        for name in gate.configured_work_queues():
            queues.deselect(name)
        log.warning("starting_out_of_rotation", reason=held)


def _install_injection(sender: Any, **_: Any) -> None:
    """Create the shared injection board before the pool forks, and say loudly if it is active."""
    tally.install()
    tracing.require(settings_of(sender.app).tracing)  # before the pool forks, not in each child
    spec = settings_of(sender.app).wear_inject
    board = install_board(spec)
    if board.get().active:
        log.warning("wear_injection_active", spec=board.get().spec(),
                    note="fault injection is ON: this worker reports and behaves worse on purpose")


def _serve_status(sender: Any, **_: Any) -> None:
    """Serve /readyz and /healthz for the worker's platform, if a port is configured (the pool
    has forked by now: its processes do not inherit the server's thread)."""
    settings = settings_of(sender.app)
    if settings.worker_status_port:
        status.serve(settings.metrics_address, settings.worker_status_port)


def _warm_up(**_: Any) -> None:
    """Load VADER's lexicon when a pool process starts, not during its first task; start
    tracing there (HOST_TRACING: its exporter's thread must start after the fork)."""
    from celery import current_app

    analyzer()
    tracing.enable("host-worker", settings_of(current_app).tracing)


def _flush_traces(**_: Any) -> None:
    tracing.flush()


def _bind_task(task_id: str, task: Any, **_: Any) -> None:
    delivery = task.request.delivery_info or {}
    structlog.contextvars.bind_contextvars(task_id=task_id, queue=delivery.get("routing_key"),
                                           worker=task.request.hostname)


def _unbind_task(**_: Any) -> None:
    structlog.contextvars.unbind_contextvars("task_id", "queue")
