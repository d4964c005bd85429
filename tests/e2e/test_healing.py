"""The fleet heals, on real workers and the real checker: a worker whose pool leaks real memory
past its limit is drained, recycled (its pool restarted at the checker's signed word) and back
HEALTHY, nothing lost; one that keeps leaking is recycled ``max_per_hour`` times, then stays
out for a person, the count in its reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from broker_config import contract
from broker_config.app import HostCelery
from healthcheck.store import RedisHealthStore
from tests.conftest import CheckerFactory, WorkerFactory
from tests.support.cli import celery
from tests.support.polling import wait_until

MIB = 2**20
#: Quick to forgive, so that a recycled worker is back within seconds; two recycles an hour.
POLICY = """
[backoff]
base_s = 1.0
max_s = 4.0
jitter_s = 0.0
[probes]
every_s = 1.0
[recovery]
probation_s = 2.0
[healing]
max_per_hour = 2
"""
LEAK = "leak=60"  # MiB per task, against a limit of 600 MiB


def state_of(store: RedisHealthStore, worker: str) -> str | None:
    w = store.get(worker)
    return w.state.value if w else None


def kinds(store: RedisHealthStore, worker: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in store.history(worker) if r["kind"] == kind]


def feed_until(app: HostCelery, store: RedisHealthStore, worker: str, sent: list[Any],
               done: Any, limit: int = 200) -> None:
    """Send tweets, one at a time, until ``done()``."""
    for _ in range(limit):
        if done():
            return
        sent.append(contract.analyse(app, f"leaky day number {len(sent)}", ref=f"h:{len(sent)}"))
        sent[-1].get(timeout=30)
        time.sleep(0.05)
    raise AssertionError(f"{worker}: still {state_of(store, worker)} after {limit} tweets")


@pytest.mark.background  # waits for a leak to grow and a recycle to end
def test_a_leak_is_recycled_back_to_health_and_a_lasting_one_waits_for_a_person(
        app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
        host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
    store = RedisHealthStore(redis_client)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    env = {"HOST_WEAR_INTERVAL": "0.25", "HOST_WORKER_MEMORY_LIMIT": str(600 * MIB)}
    leaky = start_worker("hl1", env=env, queues=("tweets",))
    start_worker("hl2", env=env, queues=("tweets",))  # takes the traffic while hl1 is out
    start_checker("--policy", str(policy), "--tick", "0.1")
    wait_until(lambda: state_of(store, leaky.name) == "HEALTHY", 20, "known")
    sent: list[Any] = []
    # When its pool leaks with the traffic, past its memory limit
    assert celery("fleet", "inject", leaky.name, LEAK, env=host_env).returncode == 0
    feed_until(app, store, leaky.name, sent,
               lambda: state_of(store, leaky.name) in ("DRAINING", "QUARANTINED"))
    # Then it is drained and recycled (the leak itself fixed meanwhile, by a deploy, say)
    assert celery("fleet", "inject", leaky.name, "", env=host_env).returncode == 0
    wait_until(lambda: kinds(store, leaky.name, "recycled"), 20, "the recycle")
    out = next(r for r in store.history(leaky.name) if r.get("to") == "DRAINING")
    assert "rss_percent" in out["reason"], out
    quarantine = next(r for r in store.history(leaky.name) if r.get("to") == "QUARANTINED")
    assert quarantine["recycle"] is True
    # And it earns its way back: HEALTHY, and working
    wait_until(lambda: state_of(store, leaky.name) == "HEALTHY", 60, "back HEALTHY")
    before = len(sent)
    feed_until(app, store, leaky.name, sent, lambda: len(sent) >= before + 10)
    assert leaky.name in {r.get(timeout=30)["worker"] for r in sent[before:]}

    # When it keeps leaking
    assert celery("fleet", "inject", leaky.name, LEAK, env=host_env).returncode == 0
    feed_until(app, store, leaky.name, sent, lambda: bool(
        (w := store.get(leaky.name)) and w.for_person), limit=400)
    # Then after two recycles it stays out for a person, the count in its reason
    held = store.get(leaky.name)
    assert held is not None and held.state.value == "QUARANTINED"
    assert held.reason.startswith("recycled 2 times in the last hour, still worn"), held.reason
    assert len(kinds(store, leaky.name, "recycled")) == 2
    time.sleep(5)  # probes keep passing; it stays out
    assert state_of(store, leaky.name) == "QUARANTINED"
    # And nothing was lost: every tweet answered once, analysed
    results = [r.get(timeout=30) for r in sent]
    assert len({r["ref"] for r in results}) == len(sent)
    assert all(r["status"] == "analysed" for r in results)


def strays() -> int:
    """Processes the ``stray`` injection started that are still running, machine-wide (one
    handed to init when its pool process ended would be counted too)."""
    found = 0
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["cmdline"] == ["sleep", "3600"] and p.info["status"] != psutil.STATUS_ZOMBIE:
            found += 1
    return found


@pytest.mark.background  # waits for a drain, a recycle and a probation
def test_a_runaway_child_is_ended_with_a_recycle_and_the_worker_is_back(
        app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
        host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
    """Each task leaves a process running (``stray=1``): the worker reports it, is drained and
    recycled, the processes are ended with its pool (none handed to init), and it is back
    HEALTHY; nothing lost."""
    store = RedisHealthStore(redis_client)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    env = {"HOST_WEAR_INTERVAL": "0.25"}
    runaway = start_worker("hs1", env=env, queues=("tweets",))
    start_worker("hs2", env=env, queues=("tweets",))
    start_checker("--policy", str(policy), "--tick", "0.1")
    wait_until(lambda: state_of(store, runaway.name) == "HEALTHY", 20, "known")
    before = strays()
    sent: list[Any] = []
    assert celery("fleet", "inject", runaway.name, "stray=1", env=host_env).returncode == 0
    feed_until(app, store, runaway.name, sent,
               lambda: state_of(store, runaway.name) in ("DRAINING", "QUARANTINED"))
    assert strays() > before
    assert celery("fleet", "inject", runaway.name, "", env=host_env).returncode == 0
    wait_until(lambda: kinds(store, runaway.name, "recycled"), 20, "the recycle")
    out = next(r for r in store.history(runaway.name) if r.get("to") == "DRAINING")
    assert "stray_processes" in out["reason"], out
    wait_until(lambda: strays() == before, 10, "the runaway children ended")
    wait_until(lambda: state_of(store, runaway.name) == "HEALTHY", 60, "back HEALTHY")
    again = len(sent)
    feed_until(app, store, runaway.name, sent, lambda: len(sent) >= again + 10)
    assert runaway.name in {r.get(timeout=30)["worker"] for r in sent[again:]}
    results = [r.get(timeout=30) for r in sent]
    assert len({r["ref"] for r in results}) == len(sent)
    assert all(r["status"] == "analysed" for r in results)
