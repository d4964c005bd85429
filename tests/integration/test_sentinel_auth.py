"""A Sentinel group with passwords everywhere: the servers' (in the URL) and the sentinels'
own (HOST_SENTINEL_PASSWORD). The store, the broker and the result backend all reach it; a
client without the sentinels' password is refused, with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_config.redis_url import RedisAddress, SentinelOptions
from harness.sentinel import SentinelGroup
from healthcheck.errors import StoreUnavailable
from healthcheck.policy import State, WorkerHealth
from healthcheck.store import RedisHealthStore
from tests.conftest import GROUND_TRUTH, WorkerFactory
from tests.support.cli import ingest_head


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    group = SentinelGroup(password="server-secret", sentinel_password="sentinel-secret").start()
    yield group
    group.stop()


@pytest.fixture
def host_env(host_env: dict[str, str], group: SentinelGroup) -> dict[str, str]:
    return {**host_env, "HOST_BROKER_URL": group.url, "HOST_RESULT_BACKEND": group.url,
            "HOST_STORE_URL": group.url, "HOST_SENTINEL_MASTER": group.master_name,
            "HOST_SENTINEL_PASSWORD": "sentinel-secret"}


def test_the_store_reaches_the_master_with_both_passwords(group: SentinelGroup) -> None:
    store = RedisHealthStore.from_url(RedisAddress(group.url, SentinelOptions(
        group.master_name, password="sentinel-secret")))
    token = store.lease("a", 30) or ""
    store.commit([WorkerHealth(name="w1", state=State.QUARANTINED, queues=("tweets",))],
                 fence=token)
    assert store.get("w1") is not None
    without = RedisHealthStore.from_url(RedisAddress(group.url, SentinelOptions(
        group.master_name)))
    with pytest.raises(StoreUnavailable, match="No master found"):  # no sentinel answers it
        without.get("w1")


def test_redis_refuses_a_wrong_master_password(group: SentinelGroup) -> None:
    wrong = group.url.replace("server-secret", "guess", 1)
    store = RedisHealthStore.from_url(RedisAddress(wrong, SentinelOptions(
        group.master_name, password="sentinel-secret")))
    with pytest.raises(StoreUnavailable, match="invalid username-password pair"):
        store.get("w1")


@pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
def test_a_worker_and_ingest_on_the_group(start_worker: WorkerFactory,
                                          host_env: dict[str, str], tmp_path: Path) -> None:
    start_worker("sa1")
    results = ingest_head(GROUND_TRUTH, 50, host_env, tmp_path)
    assert len(results) == 50 and {r["status"] for r in results} == {"analysed"}
