"""How much work waits in the broker: the depth of the work queues, read every quarter second
as the checker reads them (``healthcheck.metrics.depths.broker_depths``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from celery import Celery

from broker_config.queues import WORK_QUEUES
from healthcheck.metrics.depths import broker_depths

log = structlog.get_logger("host.api")

EVERY_S = 0.25


class BacklogWatch:
    """``depth[queue]``: messages waiting, as last read; ``read_at``: when (monotonic; 0 never).

    Args:
        published: how many messages this process has published so far; ``waiting`` adds those
            published since the last read to the depth read, so that a burst between two reads
            is counted at once.
    """

    def __init__(self, app: Celery, queues: tuple[str, ...] = WORK_QUEUES,
                 published: Callable[[], int] = lambda: 0) -> None:
        self.app, self.queues, self.published = app, queues, published
        self.depth: dict[str, int] = dict.fromkeys(queues, 0)
        self._published_at_read = 0
        self._read = broker_depths(app, queues)
        self.read_at = 0.0
        self.error = "not read yet"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="host-api-backlog", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def waiting(self, queue: str) -> int:
        """Messages in ``queue`` now, at most: as last read, plus those published since."""
        return self.depth.get(queue, 0) + max(0, self.published() - self._published_at_read)

    def fresh(self, within: float) -> bool:
        return time.monotonic() - self.read_at <= within

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                before = self.published()
                self.depth = self._read()
                self._published_at_read = before
                self.read_at, self.error = time.monotonic(), ""
            except Exception as exc:
                if not self.error:
                    log.warning("api_backlog_unreadable", error=str(exc))
                self.error = str(exc) or type(exc).__name__
            self._stop.wait(EVERY_S)
