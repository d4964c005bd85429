"""Which shard watches which worker, and the routing key its wear reports travel on.

A fleet too large for one checker is split into ``n`` shards, each led by its own checker.
A worker's shard follows from its name alone (``shard_of``: the name hashed into one of
``BUCKETS`` buckets, the bucket into a shard by jump consistent hashing), so the assignment
does not move when checkers come and go, and only about ``1/n`` of the workers move when a
shard is added. Workers publish their wear reports per bucket (``wear_routing_key``), so a
shard's checker hears only its own workers' reports. Workers, checkers and commands all agree
on it: it lives on the ground floor.
"""

from __future__ import annotations

import hashlib

_MASK = (1 << 64) - 1
#: Workers are hashed into this many buckets, and buckets into shards: a worker publishes its
#: wear reports on its bucket's channel, so a shard's checker subscribes to its buckets only.
BUCKETS = 4096


def bucket_of(worker: str) -> int:
    """The bucket (0 .. BUCKETS - 1) of ``worker``: its name's hash."""
    digest = hashlib.blake2b(worker.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def jump(key: int, shards: int) -> int:
    """Jump consistent hash of ``key`` into ``shards`` (Lamping and Veach 2014)."""
    b, j = -1, 0
    while j < shards:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_of(worker: str, shards: int) -> int:
    """The shard (0 .. shards - 1) that watches ``worker``: its bucket's."""
    return 0 if shards <= 1 else jump(bucket_of(worker), shards)


def buckets_of(shard: int, shards: int) -> list[int]:
    """The buckets whose workers ``shard`` of ``shards`` watches."""
    return [b for b in range(BUCKETS) if jump(b, shards) == shard]


def wear_routing_key(worker: str) -> str:
    """The routing key ``worker`` publishes its wear reports with: ``worker.wear.<bucket>``.
    Receivers bound to ``#`` or ``worker.#`` (Flower, Celery's own) see them as ever."""
    return f"worker.wear.{bucket_of(worker)}"
