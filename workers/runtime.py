"""Everything a host worker process holds, in one place.

``RUNTIME`` is this process's one ``WorkerRuntime``. Its fields are filled in by the signal
receivers of ``workers/signals.py`` as the worker starts, and nowhere else:

1. ``celeryd_after_setup`` (main process, before the pool forks): ``worker``, ``verify_queue``,
   ``configured``, ``checker``, ``verifier``, ``gate``;
2. ``worker_init`` (main process, before the pool forks): ``board``, ``counts``;
3. the consumer, when Celery builds it (main process): ``consumer``.

Each field says where it lives. *Shared* fields are memory the main process creates before
the pool forks: a pool process sees every change the main process makes, and the reverse.
*Main* fields are the main process's alone (a pool process has a stale copy it must not use).
*Copied* fields are set once before the fork and only read afterwards, in every process.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from broker_config.signing import Verifier
from workers.checker_view import CheckerView
from workers.shared import Gate, InjectionBoard
from workers.task_stats import TaskTotals, TaskWindow


@dataclass
class WorkerRuntime:
    """One worker process's state (see the module's docstring for who sets what, when)."""

    #: copied: this worker's node name ("" outside a host worker).
    worker: str = ""
    #: copied: this worker's own verify queue, the one queue it consumes out of rotation.
    verify_queue: str = ""
    #: copied: the work queues it was started to consume (``-Q``), whatever its state since.
    configured: tuple[str, ...] = ()
    #: shared: the health gate (a flag in shared memory) and its reason.
    gate: Gate | None = None
    #: copied: what it reads of the checker: gate keys, lease epochs, used nonces (each process
    #: opens its own connection to the store).
    checker: CheckerView | None = None
    #: main: checks control commands' signatures.
    verifier: Verifier = field(default_factory=lambda: Verifier("", time.time))
    #: shared: the fault injection in force.
    board: InjectionBoard | None = None
    #: shared: inbound outcomes and sentiment labels, counted by the pool (``workers.tally``).
    counts: Any = None
    #: shared: inputs done by the pool, a count that moves while work progresses.
    progress: Any = None
    #: main: Celery's consumer of this worker.
    consumer: Any = None
    #: main: task outcomes and runtimes (``HostRequest`` runs in the main process).
    tasks: TaskWindow = field(default_factory=TaskWindow)
    #: main: task outcomes and runtimes since the start (the checker's task metrics).
    totals: TaskTotals = field(default_factory=TaskTotals)
    #: main: messages handed back to the broker unstarted, by queue.
    requeued: Counter[str] = field(default_factory=Counter)
    #: main: messages the consumer dead-lettered before any task ran, by reason code.
    rejected: Counter[str] = field(default_factory=Counter)
    #: main: the highest lease epoch of each shard this worker obeyed a command under.
    epochs: dict[int, int] = field(default_factory=dict)
    #: main: control commands refused, by (command, reason).
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: main: work-queue subscriptions a worker out of rotation undid itself, by queue.
    undone: Counter[str] = field(default_factory=Counter)
    #: main: which queue each consumer tag consumes (a hand-back's destination on RabbitMQ).
    tag_queues: dict[str, str] = field(default_factory=dict)
    #: main: the connection hand-backs are published on (RabbitMQ).
    handback_connection: Any = None


#: This process's state.
RUNTIME = WorkerRuntime()
