"""host's result backends on a real redis-server (and a Sentinel group): Celery's rule that a
task's success is never overwritten, kept in one round trip; results stored, published and
expiring as Celery's own backend does them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, states

from broker_config import redis_url, results
from broker_config.app import HostCelery
from broker_config.settings import Settings
from harness.sentinel import SentinelGroup
from workers.app import create_app


def store(app: Celery, task_id: str, value: Any, state: str = states.SUCCESS) -> None:
    app.backend.store_result(task_id, value, state)


def key_of(app: Celery, task_id: str) -> bytes:
    backend: Any = app.backend
    key: bytes = backend.get_key_for_task(task_id)
    return key


def test_a_host_app_stores_results_with_hosts_backend(app: HostCelery) -> None:
    assert isinstance(app.backend, results.RedisBackend)


def test_a_result_is_stored_published_and_read_back_as_celery_reads_it(
        app: HostCelery, redis_client: redis.Redis) -> None:
    key = key_of(app, "t1")
    with redis_client.pubsub() as sub:
        sub.subscribe(key)
        assert sub.get_message(timeout=2)["type"] == "subscribe"
        store(app, "t1", {"compound": 0.5})
        published = sub.get_message(timeout=2)
    assert published is not None and published["channel"] == key
    assert app.backend.decode(published["data"])["result"] == {"compound": 0.5}
    meta = app.AsyncResult("t1")
    assert (meta.state, meta.result) == (states.SUCCESS, {"compound": 0.5})
    assert 0 < redis_client.ttl(key) <= app.conf.result_expires


def test_a_success_is_never_overwritten_and_nothing_is_published_for_the_later_write(
        app: HostCelery, redis_client: redis.Redis) -> None:
    store(app, "t2", "first")
    key = key_of(app, "t2")
    with redis_client.pubsub() as sub:
        sub.subscribe(key)
        sub.get_message(timeout=2)
        store(app, "t2", "second")
        store(app, "t2", ValueError("a second run failed"), states.FAILURE)
        assert sub.get_message(timeout=0.5) is None
    assert app.AsyncResult("t2").result == "first"


def test_what_is_not_a_success_is_overwritten(app: HostCelery) -> None:
    store(app, "t3", None, states.STARTED)
    store(app, "t3", ValueError("first run"), states.FAILURE)
    store(app, "t3", "a retry that succeeded")
    assert (app.AsyncResult("t3").state, app.AsyncResult("t3").result) == (
        states.SUCCESS, "a retry that succeeded")


def test_a_value_that_is_no_json_is_overwritten_not_an_error(
        app: HostCelery, redis_client: redis.Redis) -> None:
    redis_client.set(key_of(app, "t4"), b"\x00 not json")
    store(app, "t4", "stored")
    assert app.AsyncResult("t4").result == "stored"


def test_failures_keep_their_own_lifetime_and_no_lifetime_is_none(
        host_env: dict[str, str], redis_client: redis.Redis) -> None:
    app = create_app(Settings.from_env(host_env))
    app.conf.result_failure_expires = 7
    store(app, "t5", ValueError("failed"), states.FAILURE)
    assert 0 < redis_client.ttl(key_of(app, "t5")) <= 7
    forever = create_app(Settings.from_env(host_env))
    forever.conf.result_expires = None
    store(forever, "t6", "kept")
    assert redis_client.ttl(key_of(forever, "t6")) == -1


@pytest.fixture
def sentinel_app(host_env: dict[str, str], sentinel_group: SentinelGroup) -> Iterator[HostCelery]:
    env = {**host_env, "HOST_RESULT_BACKEND": sentinel_group.url,
           "HOST_SENTINEL_MASTER": sentinel_group.master_name}
    yield create_app(Settings.from_env(env))


def test_under_sentinel_the_master_holds_the_result(
        sentinel_app: HostCelery, sentinel_group: SentinelGroup) -> None:
    assert isinstance(sentinel_app.backend, results.SentinelBackend)
    master = redis_url.client(sentinel_group.url, sentinel_app.host_settings.sentinel)
    master.flushall()  # the script is loaded again where the server does not know it
    master.script_flush()
    store(sentinel_app, "s1", "on the master")
    store(sentinel_app, "s1", "not twice")
    assert sentinel_app.AsyncResult("s1").result == "on the master"
    assert master.exists(key_of(sentinel_app, "s1"))
