"""How much work waits in the broker: the depth of the work queues, read every quarter second
on one connection of its own (kombu's passive declare: Redis and RabbitMQ alike)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from celery import Celery

from broker_config.queues import WORK_QUEUES

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
        conn: Any = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self.app.connection_for_read()
                    conn.ensure_connection(max_retries=1)
                before = self.published()
                self.depth = {q: self._depth(conn, q) for q in self.queues}
                self._published_at_read = before
                self.read_at, self.error = time.monotonic(), ""
            except Exception as exc:
                if not self.error:
                    log.warning("api_backlog_unreadable", error=str(exc))
                self.error = str(exc) or type(exc).__name__
                with contextlib.suppress(Exception):
                    conn.release()
                conn = None
            self._stop.wait(EVERY_S)
        with contextlib.suppress(Exception):
            conn.release()

    @staticmethod
    def _depth(conn: Any, queue: str) -> int:
        channel = conn.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except conn.channel_errors:  # not declared yet: nothing waits in it
            return 0
        finally:
            with contextlib.suppress(Exception):
                channel.close()
