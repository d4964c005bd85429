"""What runs inside a worker: tasks, signal receivers, and (later) wear reporter and health gate."""

from __future__ import annotations

from celery import Celery


def install(app: Celery) -> None:
    """Register host's tasks and worker extensions on ``app``."""
    from workers import signals, tasks  # noqa: F401 - importing registers the shared tasks

    signals.connect(app)
