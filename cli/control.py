"""Sending host's control commands to one worker, and reading its reply."""

from __future__ import annotations

from typing import Any

import click
from celery import Celery

from broker_config.app import settings_of
from healthcheck.actuator import control_reply

EXIT_NO_REPLY = 4


class NoReply(click.ClickException):
    """The worker did not answer: unknown, stopped, or unreachable (exit code 4)."""

    exit_code = EXIT_NO_REPLY


class CommandRefused(click.ClickException):
    """The worker answered with an error (exit code 1)."""


def send(app: Celery, command: str, worker: str, arguments: dict[str, Any] | None = None,
         timeout: float = 3.0) -> dict[str, Any]:
    """Send ``command`` to ``worker`` alone and return its reply.

    Never broadcasts: kombu treats an empty destination as every worker, so an empty name is
    refused before anything is sent.

    Raises:
        click.UsageError: no worker named.
        NoReply: no reply within ``timeout`` seconds.
        CommandRefused: the worker replied with an error.
    """
    if not worker or not worker.strip():
        raise click.UsageError("a worker name is required (control commands are never broadcast)")
    answer = control_reply(app, command, worker, arguments, timeout,
                           secret=settings_of(app).control_secret)
    if answer is None:
        raise NoReply(f"no reply from {worker} within {timeout:g}s: unknown worker, or not running")
    if "error" in answer:
        raise CommandRefused(f"{worker}: {answer['error']}")
    return answer
