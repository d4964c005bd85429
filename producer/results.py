"""Reading the results of the tasks a feed sent, straight from the Redis result backend.

Celery's result consumer is made for waiting on a few results. A feed waits on thousands at a
time, for hours, and through it ``ingest`` on 2,000,000 lines peaked at 413 MB: each wait on a
new set of results re-read every pending result, and notifications for results already read
that way were decoded and buffered. This reader does one thing per result: the worker
publishes the stored result on a channel named after its key (what Celery's Redis backend
does); the feed subscribes to that channel before it sends the task, decodes the one
notification, then unsubscribes and deletes the stored copy, which nobody else reads and
which would otherwise fill Redis for a day. Reading the stored results directly
(``stored``) covers notifications lost while the connection was away.

The backend may be away for a while (a restart; a Sentinel failover, during which the
sentinels still name the dead master for their down-after time): subscribing rides that out
for ``RETRY_S``, as publishing a task does (``task_publish_retry_policy``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis
from celery import states

from broker_config import fastjson

#: Keys per MGET/UNLINK, so that one command never carries a whole window.
KEYS_PER_COMMAND = 1000
#: How long subscribing to a result keeps trying while the backend does not answer.
RETRY_S = 30.0


class ResultReader:
    """Subscribes to, reads and then forgets task results, by task id.

    Args:
        backend: the app's Redis result backend (its client, key prefix and decoder are used).
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.client = backend.client
        self.prefix: bytes = backend.get_key_for_task("x")[:-1]
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=False)

    def key(self, task_id: str) -> bytes:
        return self.prefix + task_id.encode()

    def watch(self, task_id: str) -> None:
        """Subscribe to the task's result (before the task is sent: no notification is missed),
        trying again for up to ``RETRY_S`` while the backend does not answer."""
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                self.pubsub.subscribe(self.key(task_id))
                return
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)

    def arrived(self, timeout: float, most: int = 2000) -> list[tuple[str, dict[str, Any]]]:
        """Finished results notified within ``timeout`` seconds (all that are waiting, up to
        ``most``; an empty list when none came)."""
        got: list[tuple[str, dict[str, Any]]] = []
        message = self.pubsub.get_message(timeout=timeout)
        for _ in range(most):
            if message is None:
                break
            if message["type"] == "message":
                meta = self._ready(message["data"])
                if meta is not None:
                    got.append((message["channel"][len(self.prefix):].decode(), meta))
            message = self.pubsub.get_message(timeout=0)
        return got

    def stored(self, task_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """The finished results among ``task_ids``, read from where the workers stored them."""
        got = []
        for part in _parts(task_ids):
            for task_id, payload in zip(part, self.client.mget([self.key(t) for t in part]), strict=True):
                meta = self._ready(payload)
                if meta is not None:
                    got.append((task_id, meta))
        return got

    def forget(self, task_ids: list[str]) -> None:
        """Stop listening for these results and delete their stored copies."""
        for part in _parts(task_ids):
            keys = [self.key(t) for t in part]
            self.pubsub.unsubscribe(*keys)
            self.client.unlink(*keys)

    def close(self) -> None:
        self.pubsub.close()

    def _ready(self, payload: bytes | None) -> dict[str, Any] | None:
        if payload is None:
            return None
        # host's own results: read with orjson (a fifth of the time Celery's decoder takes)
        meta: dict[str, Any] = self.backend.meta_from_decoded(fastjson.loads(payload))
        return meta if meta.get("status") in states.READY_STATES else None


def _parts(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), KEYS_PER_COMMAND):
        yield items[i:i + KEYS_PER_COMMAND]
