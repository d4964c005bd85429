"""What every host command shares: exit codes, the app from Celery's context, progress output."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from kombu.exceptions import OperationalError

from broker_config import redis_url, tracing
from broker_config.app import ConfigurationFailed, HostCelery
from broker_config.settings import ConfigError

EXIT_OK = 0
#: Some inputs were not accounted for (missing or failed), or the work did not finish.
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_BROKER_UNREACHABLE = 3
#: The named worker is unknown or did not answer.
EXIT_NO_REPLY = 4
#: No checker answered an operator's request.
EXIT_NO_CHECKER = 5
#: The action needs --yes (it would leave a work queue with no healthy consumer).
EXIT_NEEDS_YES = 6
EXIT_CONFIG = 78


class BrokerUnreachable(click.ClickException):
    """The broker did not answer; one line, exit code 3."""

    exit_code = EXIT_BROKER_UNREACHABLE


def start_tracing(app: HostCelery, service: str) -> None:
    """Traces from this command, when HOST_TRACING is on (a missing extra: exit 78)."""
    try:
        tracing.enable(service, app.host_settings.tracing)
    except tracing.TracingUnavailable as exc:
        raise ConfigurationFailed(ConfigError("HOST_TRACING", "true", str(exc))) from None


def host_app(ctx: click.Context) -> HostCelery:
    """The host app that ``celery -A host`` loaded."""
    app = ctx.obj.app
    if not isinstance(app, HostCelery):
        raise click.UsageError("this command needs the host app: run it as `celery -A host ...`")
    app.host_settings  # noqa: B018 - fail fast, with one line, on bad configuration
    return app


def check_broker(app: HostCelery, timeout: float = 5.0) -> None:
    """Raise BrokerUnreachable unless the broker answers within ``timeout`` seconds (trying
    again every second: a broker that restarts as the command starts is waited for)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(interval_start=1, interval_step=0, interval_max=1,
                                   timeout=int(timeout))
    except (OperationalError, OSError) as exc:
        url = app.conf.broker_url
        raise BrokerUnreachable(f"broker {_redact(url)} is unreachable: {exc}") from None


def check_store(app: HostCelery, timeout: float = 5.0, optional: bool = False) -> bool:
    """Raise BrokerUnreachable unless the result backend and host's store answer within
    ``timeout`` seconds (trying again every half second).

    ``optional``: host's store, where it is not the result backend, is asked once (half a
    second at most) and may be away: False then, not an error. A command that only writes dead
    letters there sets them aside until it answers, and must not refuse work meanwhile."""
    settings = app.host_settings
    _answers(settings.backend, timeout)
    if settings.store == settings.backend:
        return True
    if not optional:
        _answers(settings.store, timeout)
        return True
    try:
        _answers(settings.store, 0.5, tries=1)
    except BrokerUnreachable:
        return False
    return True


def _answers(where: redis_url.RedisAddress, timeout: float, tries: int | None = None) -> None:
    import redis

    deadline = time.monotonic() + timeout
    client = where.client(socket_timeout=timeout, socket_connect_timeout=timeout)
    tried = 0
    while True:
        try:
            client.ping()
            return
        except (redis.RedisError, OSError) as exc:
            tried += 1
            if time.monotonic() >= deadline or tried == tries:
                raise BrokerUnreachable(f"store {where} is unreachable: {exc}") from None
            time.sleep(0.5)


def _redact(url: str) -> str:
    return redis_url.redacted(url)


class Progress:
    """A progress bar on a terminal; plain progress lines (at most every 2 s) otherwise."""

    def __init__(self, label: str, stream: Any = None, interval: float = 2.0) -> None:
        self._stream = stream or sys.stderr
        self._label = label
        self._interval = interval
        self._last_line = 0.0
        self._bar: Any = None
        self._task: Any = None
        self._started: float | None = None

    @contextmanager
    def running(self) -> Iterator[Progress]:
        """Show progress while the block runs."""
        self._started = time.monotonic()
        if self._stream.isatty():
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            with RichProgress(console=Console(file=self._stream), transient=False) as bar:
                self._bar, self._task = bar, bar.add_task(self._label, total=None)
                yield self
            return
        yield self

    def update(self, done: int, total: int, final_total: bool, detail: str = "") -> None:
        """Report ``done`` of ``total`` (the total may still grow until ``final_total``), with
        a rate and, once the total is final, an ETA; ``detail`` is shown after them."""
        if self._started is None:
            self._started = time.monotonic()
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total if final_total else None,
                             description=f"{self._label} {detail}".strip())
            return
        now = time.monotonic()
        if now - self._last_line >= self._interval or (final_total and done == total):
            self._last_line = now
            pct = f" ({100 * done // total}%)" if final_total and total else ""
            rate = done / max(now - self._started, 1e-9)
            eta = f", ETA {(total - done) / rate:.0f}s" if final_total and rate and done else ""
            extra = f" {detail}" if detail else ""
            print(f"{self._label}: {done}/{total} accounted{pct}, {rate:.0f}/s{eta}{extra}",
                  file=self._stream, flush=True)
