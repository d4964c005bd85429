"""What runs inside a worker: tasks, signal receivers, the wear reporter and control commands."""

from __future__ import annotations

from celery import Celery


def install(app: Celery) -> None:
    """Register host's tasks and worker extensions on ``app``."""
    from broker_config import transport
    from workers import control, signals, tasks  # noqa: F401 - importing registers them
    from workers.consumer import dead_letter_raw
    from workers.reporter import WearReporter
    from workers.visibility import VisibilityKeeper

    transport.on_undeliverable(
        lambda raw, queue, code, detail: dead_letter_raw(app, raw, queue, code, detail))
    signals.connect(app)
    app.steps["consumer"].add(WearReporter)
    app.steps["consumer"].add(VisibilityKeeper)
