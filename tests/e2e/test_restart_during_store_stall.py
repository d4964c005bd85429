"""A worker started again while host's store does not answer (its platform restarted it during a
store stall) cannot know whether the checker holds it out: it starts nothing from a work queue
until the store answers, and then is in rotation or stays out as the checker decided. Found by
the nemesis (seed 44): a worker quarantined for wear, killed and started again while the store
was paused, ran 45 tasks in the 20 s before a person restored it."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from celery.result import AsyncResult

from broker_config.app import HostCelery
from broker_config.contract import envelope
from harness.processes import node_name
from harness.store_faults import FaultyStore
from healthcheck.store import RedisHealthStore
from tests.conftest import WorkerFactory

#: How long the test watches a worker that must start nothing, with the store away.
WATCH_S = 3.0


@pytest.fixture
def host_env(host_env: dict[str, str], faulty_store: FaultyStore) -> dict[str, str]:
    return {**host_env, **faulty_store.env, "HOST_WEAR_INTERVAL": "0.5"}


def send(app: HostCelery, n: int) -> list[AsyncResult[Any]]:
    return [app.send_task("host.analyse", args=[envelope(f"rs:{i}", f"tweet {i} is fine")])
            for i in range(n)]


@pytest.mark.parametrize("faulty_store", ["pause", "refuse"], indirect=True)
@pytest.mark.parametrize("held", [False, True], ids=["not-held", "held-out"])
def test_a_worker_started_while_the_store_is_away_starts_nothing_until_it_knows(
        app: HostCelery, start_worker: WorkerFactory, faulty_store: FaultyStore, held: bool) -> None:
    name = node_name("rs1")
    writer = RedisHealthStore(redis.Redis.from_url(faulty_store.env["HOST_STORE_URL"]))
    if held:
        writer.close_gate(name, "QUARANTINED: wrong answers")
    faulty_store.begin()
    try:
        worker = start_worker("rs1")  # its platform starts it again, the store away
        assert worker.name == name
        results = send(app, 10)
        time.sleep(WATCH_S)
        ran = [r for r in results if r.ready()]
        assert ran == [], f"{len(ran)} task(s) ran before the worker knew its verdict"
    finally:
        faulty_store.end()
    if not held:
        records = [r.get(timeout=60) for r in results]  # it asks again, and is in rotation
        assert {rec["worker"] for rec in records} == {name}
        return
    time.sleep(WATCH_S)  # the store answers: held out, it still starts nothing
    assert not any(r.ready() for r in results)
    healthy = start_worker("rs2")
    records = [r.get(timeout=60) for r in results]
    assert {rec["worker"] for rec in records} == {healthy.name}
