"""host's Redis result backends: Celery's, storing a task's result in one round trip.

Celery's key-value backends read a task's stored result before writing its new one, so that a
task run twice never overwrites its success (``BaseKeyValueStoreBackend._store_result``). On
Redis that is a GET, then a SET and a PUBLISH: two round trips for every task, which a profile
of the per-task benchmark put at a quarter of a pool process's time. Here the read, the rule
and the write are one script: the same rule, in one round trip, and atomic (Celery's read and
write leave room for a second run between them).

Served under ``redis://``, ``rediss://`` and ``sentinel://`` in a process that configured a host
app (``register``); what the backend stores, where, for how long and what it publishes is
Celery's, unchanged: producers and monitors read results as they always do.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.app.backends import BACKEND_ALIASES
from celery.backends import redis as celery_redis
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

#: KEYS[1] the task's result key; ARGV[1] the encoded result, ARGV[2] its lifetime in seconds
#: (0: none). A success already stored stays (0), else the result is stored and published (1).
_STORE = """
local current = redis.call('GET', KEYS[1])
if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
        return 0
    end
end
local expires = tonumber(ARGV[2])
if expires > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', expires)
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


def register() -> None:
    """Serve host's Redis URLs of results with these backends in this process (idempotent)."""
    BACKEND_ALIASES["redis"] = "broker_config.results:RedisBackend"
    BACKEND_ALIASES["rediss"] = "broker_config.results:RedisBackend"
    BACKEND_ALIASES["sentinel"] = "broker_config.results:SentinelBackend"


class OneTrip:
    """Celery's ``_store_result`` for Redis, the read before the write inside the write."""

    _store_script: Any = None

    def _store_result(self: Any, task_id: str, result: Any, state: str,
                      traceback: Any = None, request: Any = None, **kwargs: Any) -> Any:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback,
                                     request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend",  # type: ignore[call-arg]
                                    state=state, task_id=task_id)  # (Celery's stubs lack both)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        self.ensure(self._store_once, (self.get_key_for_task(task_id), value, expires or 0))
        return result

    def _store_once(self: Any, key: bytes, value: Any, expires: int) -> int:
        if self._store_script is None:
            # redis-py sends the script's hash, and the script again where a server (a new
            # master after a failover) does not know it.
            self._store_script = self.client.register_script(_STORE)
        stored: int = self._store_script(keys=[key], args=[value, int(expires)])
        return stored


class RedisBackend(OneTrip, celery_redis.RedisBackend):
    """``redis://`` and ``rediss://`` results."""


class SentinelBackend(OneTrip, celery_redis.SentinelBackend):
    """``sentinel://`` results, on the master the sentinels name."""
