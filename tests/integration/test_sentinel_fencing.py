"""The lease's epoch survives a failover that loses its last write.

Redis replicates asynchronously: a master can acknowledge a write and die before any replica
has it, and the replica the sentinels promote then never saw it ("last failover wins"). If
that write was a lease taken under a new epoch, a counter alone would hand the same epoch out
again on the new master: two checkers acting under one epoch, and a worker could not tell them
apart. Here the loss is made to happen (the replicas paused while the master takes the lease,
the master killed before they wake) on a private Sentinel group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from broker_config.redis_url import RedisAddress, SentinelOptions
from harness.sentinel import SentinelGroup
from healthcheck.store import RedisHealthStore
from tests.support.polling import wait_until


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    group = SentinelGroup(down_after_ms=1000).start()
    yield group
    group.stop()


def store_of(group: SentinelGroup) -> RedisHealthStore:
    return RedisHealthStore.from_url(RedisAddress(group.url, SentinelOptions(group.master_name)))


def lease(store: RedisHealthStore, candidate: str) -> str:
    """Take the lease, riding out the failover (the client finds the new master itself)."""
    got: list[str] = []

    def taken() -> bool:
        with contextlib.suppress(Exception):
            got.append(store.lease(candidate, 30) or "")
            return True
        return False

    wait_until(taken, 30, f"{candidate} to reach a master")
    return got[-1]


def test_a_lease_lost_in_a_failover_is_never_handed_out_again(group: SentinelGroup) -> None:
    a = store_of(group)
    token_a = lease(a, "a")
    a.release(token_a)
    master = group.master_port()
    assert a._client.wait(2, 5000) == 2  # both replicas have a's epoch
    replicas = [s.port for s in group.servers if s.port != master]
    for port in replicas:
        group.pause(port)
    try:
        # A paused replica's kernel would still take the stream into its socket buffer: cut
        # the links too, so that the next write reaches no replica at all.
        assert a._client.client_kill_filter(_type="replica") == len(replicas)
        b = store_of(group)
        token_b = lease(b, "b")  # acknowledged by the master alone
        assert b._client.wait(1, 200) == 0  # no replica has it
        group.kill_master()
    finally:
        for port in replicas:
            group.resume(port)
    group.wait_failover(master)
    c = store_of(group)
    # The write was lost: the new master knows a's epoch, not b's
    survivor = RedisHealthStore.from_url(RedisAddress(group.url, SentinelOptions(
        group.master_name)))
    wait_until(lambda: _epoch(survivor) is not None, 30, "the new master to answer")
    assert _epoch(survivor) == int(token_a.split(":")[0])
    token_c = lease(c, "c")
    epochs = [int(t.split(":")[0]) for t in (token_a, token_b, token_c)]
    print(f"epochs: a {epochs[0]}, b {epochs[1]} (lost in the failover), c {epochs[2]}")
    assert epochs[0] < epochs[1] < epochs[2]
    assert survivor.lease("d", 30) == token_c  # and c leads the new master


def _epoch(store: RedisHealthStore) -> int | None:
    with contextlib.suppress(Exception):
        return store.epoch()
    return None
