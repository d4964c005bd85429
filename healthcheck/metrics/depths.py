"""``host_queue_messages``' source: queue depths read from the broker, cached."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from broker_config.logs import get_logger
from broker_config.queues import WORK_QUEUES

log = get_logger(__name__)


class QueueDepths:
    """Work-queue depths read from the broker, cached, with a bounded cost per scrape.

    A scrape older than ``every_s`` starts one refresh in the background and waits for it at
    most ``wait_s``; a slow or absent broker leaves the last known depths in place (and the
    metric absent until the first success) instead of stalling the scrape.

    Args:
        read: returns the depth of each queue (talks to the broker).
        every_s: how long a reading is fresh.
        wait_s: the most a scrape waits for a refresh.
    """

    def __init__(self, read: Callable[[], Mapping[str, int]], every_s: float = 5.0,
                 wait_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self.every_s = every_s
        self.wait_s = wait_s
        self._clock = clock
        self._values: dict[str, int] = {}
        self._read_at = -math.inf
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, int]:
        with self._lock:
            if self._clock() - self._read_at >= self.every_s and not (
                    self._thread and self._thread.is_alive()):
                self._thread = threading.Thread(target=self._refresh, daemon=True)
                self._thread.start()
            thread = self._thread
        if thread is not None:
            thread.join(self.wait_s)
        return dict(self._values)

    def _refresh(self) -> None:
        try:
            values = dict(self._read())
        except Exception as exc:  # the broker is slow or away: keep what we had
            log.warning("queue_depths_unavailable", error=str(exc))
            return
        self._values = values
        self._read_at = self._clock()


def broker_depths(app: Any, queues: tuple[str, ...] = WORK_QUEUES,
                  timeout_s: float = 2.0) -> Callable[[], dict[str, int]]:
    """Reads each queue's message count from the broker (a passive declare: Redis or AMQP)."""

    def read() -> dict[str, int]:
        depths = {}
        with app.connection_for_read(connect_timeout=timeout_s) as conn:
            for q in queues:
                channel = conn.channel()  # a refused passive declare closes an AMQP channel
                try:
                    depths[q] = int(channel.queue_declare(q, passive=True).message_count)
                except conn.channel_errors:
                    depths[q] = 0  # never declared: nothing was ever sent to it
                finally:
                    channel.close()
        return depths

    return read
