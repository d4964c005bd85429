"""What runs inside a worker: tasks, signal receivers, the wear reporter and control commands."""

from __future__ import annotations

from celery import Celery


def install(app: Celery) -> None:
    """Register host's tasks and worker extensions on ``app``."""
    from workers import control, signals, tasks  # noqa: F401 - importing registers them
    from workers.reporter import WearReporter
    from workers.visibility import VisibilityKeeper

    signals.connect(app)
    app.steps["consumer"].add(WearReporter)
    app.steps["consumer"].add(VisibilityKeeper)
