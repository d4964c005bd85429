"""Waiting for asynchronous outcomes with a deadline, and asking workers what they consume."""

from __future__ import annotations

from celery import Celery

from harness.processes import wait_until

__all__ = ["consumed", "wait_until"]


def consumed(app: Celery, worker: str) -> list[str]:
    """The queues ``worker`` consumes, by Celery's own inspect (addressed to it alone)."""
    replies = app.control.inspect(destination=[worker], timeout=2).active_queues() or {}
    return sorted(q["name"] for q in replies.get(worker, []))
