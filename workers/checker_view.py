"""What a worker reads of the checker: a read-only port, on Redis or in memory.

Three things the checker writes and a worker reads: the gate key of each worker (the verdict
that holds it out), the lease epoch of each shard (a command under an older epoch is refused)
and the nonces of signed commands already used (a command is obeyed once).

The checker writes ``host:gate:<worker>`` when it records a verdict (``healthcheck.store``);
every pool process reads it before it starts a work-queue task. Reads fail static: when the
store does not answer, the worker goes by what it last read (and its local gate, which the
checker's drain command closes over the broker, has decided already).

The data plane never waits on the store: a read that takes longer than ``READ_TIMEOUT_S`` marks
the store away, and for a while (a quarter second, doubling to ``AWAY_MAX_S`` while it stays
away) tasks go by the last answer without asking; then one read tries again. A store that is
slow, stalled, refusing connections or failing over costs each pool process one short wait per
window, not one per task. While it answers, every task reads the key: nothing starts after a
verdict the store holds.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Protocol

import redis

from broker_config import keys
from broker_config.logs import get_logger
from broker_config.redis_url import RedisAddress, address
from broker_config.signing import NonceMemory, RedisNonces

log = get_logger(__name__)

#: The longest a task waits for the gate key (a healthy store answers in well under 1 ms).
READ_TIMEOUT_S = 0.05
#: How long tasks go by the last answer after a read failed: doubling from the first, to the
#: last, while the store stays away.
AWAY_FIRST_S = 0.25
AWAY_MAX_S = 2.0


class StoreAway(Exception):
    """The store did not answer: what the checker decided is not known here."""


class CheckerView(Protocol):
    """What a worker reads of the checker's decisions."""

    def closed(self, worker: str) -> bool:
        """True when the checker holds ``worker`` out (False also when the store is away)."""

    def reason(self, worker: str, quick: bool = False) -> str | None:
        """Why the checker holds ``worker`` out (None: it does not).

        Raises:
            StoreAway: the store did not answer (``quick``: within the per-task timeout).
        """

    def epoch(self, shard: int = 0) -> int | None:
        """The current fencing epoch of a shard's checker lease (None when the store cannot
        tell)."""

    def nonces(self) -> NonceMemory | None:
        """The fleet-wide memory of used control nonces (None: this process's own)."""


class RedisCheckerView:
    """The gate keys in the store's Redis, with short timeouts (a pool process waits on it).

    Args:
        client: a Redis client (its pool reconnects after a fork by itself).
    """

    def __init__(self, client: redis.Redis, per_task: redis.Redis | None = None,
                 clock: Any = time.monotonic) -> None:
        self._client = client
        self._per_task = per_task or client
        self._own = threading.local()
        self._clock = clock

    @classmethod
    def from_url(cls, url: RedisAddress | str) -> RedisCheckerView:
        """Reads on ``url``: the per-task one (``closed``) with ``READ_TIMEOUT_S``, the rare
        ones (an epoch, a reason at start) with half a second."""
        where = address(url)
        return cls(where.client(socket_timeout=0.5, socket_connect_timeout=0.5),
                   where.client(socket_timeout=READ_TIMEOUT_S,
                                socket_connect_timeout=READ_TIMEOUT_S))

    def closed(self, worker: str) -> bool:
        """One EXISTS, on a connection this thread of this process keeps: every work-queue
        task pays for it, and the client's pool checkout and reply callbacks doubled its cost
        (44 us of CPU this way, 94 us through ``Redis.exists``). While the store is away, the
        last answer, without asking (see the module's docstring)."""
        own = self._state()
        now = self._clock()
        if now < own.away_until:
            return bool(own.last.get(worker, False))
        for attempt in range(2):  # a connection the server dropped (a restart) is made again
            try:
                conn = self._connection()
                conn.send_command("EXISTS", keys.gate(worker))
                answer = bool(conn.read_response())
            except redis.ConnectionError:
                self._drop()
                if attempt == 0:
                    continue  # once: a connection the server dropped, made again
            except redis.TimeoutError:
                self._drop()  # not answering in time: no second wait
            else:
                own.last[worker], own.away_s = answer, 0.0
                return answer
            break
        own.away_s = min(AWAY_MAX_S, own.away_s * 2 if own.away_s else AWAY_FIRST_S)
        own.away_until = self._clock() + own.away_s
        last = bool(own.last.get(worker, False))
        # Said once a window: every task this process starts until ``until`` goes by ``last``
        # (a verdict written meanwhile is known here only by the checker's drain command).
        now = time.time()
        log.warning("gate_read_failed", worker=worker, pid=os.getpid(), at=now,
                    until=now + own.away_s, last="closed" if last else "open")
        return last  # fail static: what it last read

    def _state(self) -> Any:
        own = self._own
        if getattr(own, "pid", None) != os.getpid():
            # What a parent knew before the fork, or its socket, is not this process's.
            own.pid, own.conn, own.last, own.away_s, own.away_until = os.getpid(), None, {}, \
                0.0, 0.0
        return own

    def _drop(self) -> None:
        if self._own.conn is not None:
            self._own.conn.disconnect()
        self._own.conn = None

    def _connection(self) -> Any:
        own = self._state()
        if own.conn is None:
            own.conn = self._per_task.connection_pool.make_connection()
        return own.conn

    def reason(self, worker: str, quick: bool = False) -> str | None:
        try:
            value: Any = (self._per_task if quick else self._client).get(keys.gate(worker))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreAway(str(exc)) from None
        return value.decode() if value else None

    def epoch(self, shard: int = 0) -> int | None:
        try:
            value = self._client.get(keys.epoch(shard))
        except (redis.ConnectionError, redis.TimeoutError):
            return None
        return int(value) if value else 0

    def nonces(self) -> NonceMemory:
        return RedisNonces(self._client)


class InMemoryCheckerView:
    """The same reads from a dict, for unit tests; ``down`` makes every read fail static."""

    def __init__(self, gates: dict[str, str] | None = None, epoch: int = 0) -> None:
        self.gates = gates if gates is not None else {}
        self.current_epoch = epoch
        self.shard_epochs: dict[int, int] = {}
        self.down = False

    def closed(self, worker: str) -> bool:
        return not self.down and worker in self.gates

    def reason(self, worker: str, quick: bool = False) -> str | None:
        if self.down:
            raise StoreAway("down")
        return self.gates.get(worker)

    def epoch(self, shard: int = 0) -> int | None:
        if self.down:
            return None
        return self.shard_epochs.get(shard, 0) if shard else self.current_epoch

    def nonces(self) -> NonceMemory | None:
        return None
