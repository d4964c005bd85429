"""Waiting for asynchronous outcomes with a deadline, and asking workers what they consume."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import Celery


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def consumed(app: Celery, worker: str) -> list[str]:
    """The queues ``worker`` consumes, by Celery's own inspect (addressed to it alone)."""
    replies = app.control.inspect(destination=[worker], timeout=2).active_queues() or {}
    return sorted(q["name"] for q in replies.get(worker, []))
