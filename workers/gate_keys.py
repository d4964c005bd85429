"""The worker's side of the checker's gate keys: a read-only port, on Redis or in memory.

The checker writes ``host:gate:<worker>`` when it records a verdict (``healthcheck.store``);
every pool process reads it before it starts a work-queue task. Reads fail static: when the
store does not answer, the key counts as absent (the worker's local gate has decided already).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

import redis

from broker_config import keys
from broker_config.signing import NonceMemory, RedisNonces


class GateKeyReader(Protocol):
    """What a worker reads of the checker's decisions."""

    def closed(self, worker: str) -> bool:
        """True when the checker holds ``worker`` out (False also when the store is away)."""

    def reason(self, worker: str) -> str | None:
        """Why the checker holds ``worker`` out (None: it does not, or the store is away)."""

    def epoch(self, shard: int = 0) -> int | None:
        """The current fencing epoch of a shard's checker lease (None when the store cannot
        tell)."""

    def nonces(self) -> NonceMemory | None:
        """The fleet-wide memory of used control nonces (None: this process's own)."""


class RedisGateKeys:
    """The gate keys in the store's Redis, with short timeouts (a pool process waits on it).

    Args:
        client: a Redis client (its pool reconnects after a fork by itself).
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._own = threading.local()

    @classmethod
    def from_url(cls, url: str) -> RedisGateKeys:
        return cls(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5))

    def closed(self, worker: str) -> bool:
        """One EXISTS, on a connection this thread of this process keeps: every work-queue
        task pays for it, and the client's pool checkout and reply callbacks doubled its cost
        (44 us of CPU this way, 94 us through ``Redis.exists``)."""
        for _ in range(2):  # a connection the server dropped (a restart) is made again once
            try:
                conn = self._connection()
                conn.send_command("EXISTS", keys.gate(worker))
                return bool(conn.read_response())
            except (redis.ConnectionError, redis.TimeoutError):
                self._own.conn.disconnect()
                self._own.conn = None
        return False  # fail static

    def _connection(self) -> Any:
        own = self._own
        if getattr(own, "pid", None) != os.getpid() or own.conn is None:
            # A connection made before a fork belongs to the parent: never share its socket.
            own.conn, own.pid = self._client.connection_pool.make_connection(), os.getpid()
        return own.conn

    def reason(self, worker: str) -> str | None:
        value = self._get(self._client.get, keys.gate(worker))
        return value.decode() if value else None

    def epoch(self, shard: int = 0) -> int | None:
        try:
            value = self._client.get(keys.epoch(shard))
        except (redis.ConnectionError, redis.TimeoutError):
            return None
        return int(value) if value else 0

    def nonces(self) -> NonceMemory:
        return RedisNonces(self._client)

    def _get(self, read: Any, key: str) -> Any:
        try:
            return read(key)
        except (redis.ConnectionError, redis.TimeoutError):
            return None  # fail static


class InMemoryGateKeys:
    """The same reads from a dict, for unit tests; ``down`` makes every read fail static."""

    def __init__(self, gates: dict[str, str] | None = None, epoch: int = 0) -> None:
        self.gates = gates if gates is not None else {}
        self.current_epoch = epoch
        self.shard_epochs: dict[int, int] = {}
        self.down = False

    def closed(self, worker: str) -> bool:
        return not self.down and worker in self.gates

    def reason(self, worker: str) -> str | None:
        return None if self.down else self.gates.get(worker)

    def epoch(self, shard: int = 0) -> int | None:
        if self.down:
            return None
        return self.shard_epochs.get(shard, 0) if shard else self.current_epoch

    def nonces(self) -> NonceMemory | None:
        return None
