"""The fleet heals, on real workers and the real checker: a worker whose pool leaks real memory
past its limit is drained, recycled (its pool restarted at the checker's signed word) and back
HEALTHY, nothing lost; one that keeps leaking is recycled ``max_per_hour`` times, then stays
out for a person, the count in its reason."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from broker_config import contract
from broker_config.app import HostCelery
from broker_config.settings import EX_RECYCLE
from healthcheck.store import RedisHealthStore
from tests.conftest import CheckerFactory, WorkerFactory
from tests.support.cli import celery
from tests.support.platform_worker import PlatformWorker
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


def strays_ended(log: Path | None) -> int:
    """Runaway processes the worker says its recycles ended (from its JSON log)."""
    assert log is not None
    ended = 0
    for line in log.read_text(errors="replace").splitlines():
        if '"worker_recycled"' in line:
            ended += int(json.loads(line).get("strays_ended", 0))
    return ended


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
    assert celery("fleet", "inject", runaway.name, "", env=host_env).returncode == 0
    wait_until(lambda: kinds(store, runaway.name, "recycled"), 20, "the recycle")
    # The runaway children were there and the recycle ended them: the worker's own count (a
    # look at the process table here could come after they ended: drain, quarantine and
    # recycle took 40 ms once)
    assert wait_until(lambda: strays_ended(runaway.log_path), 10, "the worker's recycle") > 0
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


class Platform:
    """A platform's restart policy around one worker (a pod's ``restartPolicy: Always``, a
    unit's ``Restart=on-failure``): the entrypoint started again whenever it exits, its exit
    codes kept."""

    def __init__(self, short: str, env: dict[str, str], log_path: Path) -> None:
        self.short, self.env, self.log_path = short, env, log_path
        self.exits: list[int] = []
        self.worker = PlatformWorker(short, env, log_path).start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.is_set():
            assert self.worker.proc is not None
            try:
                code = self.worker.proc.wait(0.2)
            except subprocess.TimeoutExpired:
                continue
            self.exits.append(code)
            if not self._stop.is_set():
                self.worker = PlatformWorker(self.short, self.env, self.log_path).start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.worker.kill()


@pytest.mark.background  # a leak, a drain, an exit and a restart, a probation
def test_under_a_platform_a_recycle_restarts_the_whole_worker(
        app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
        host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
    """HOST_RECYCLE=exit: the leaking worker, drained and quarantined, is recycled by exiting
    with EX_RECYCLE (75); its platform starts it again (the leak gone with the process), it
    starts out of rotation and earns its way back HEALTHY; nothing lost."""
    store = RedisHealthStore(redis_client)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    env = {"HOST_WEAR_INTERVAL": "0.25", "HOST_WORKER_MEMORY_LIMIT": str(600 * MIB)}
    platform = Platform("hx1", {**host_env, **env, "HOST_RECYCLE": "exit"},
                        tmp_path / "hx1.log")
    leaky = platform.worker.name
    try:
        start_worker("hx2", env=env, queues=("tweets",))
        start_checker("--policy", str(policy), "--tick", "0.1")
        wait_until(lambda: state_of(store, leaky) == "HEALTHY", 30, "known")
        sent: list[Any] = []
        assert celery("fleet", "inject", leaky, LEAK, env=host_env).returncode == 0
        feed_until(app, store, leaky, sent,
                   lambda: state_of(store, leaky) in ("DRAINING", "QUARANTINED"))
        wait_until(lambda: kinds(store, leaky, "recycled"), 20, "the recycle")
        wait_until(lambda: platform.exits, 60, "the worker's exit")
        assert platform.exits[0] == EX_RECYCLE, platform.worker.tail()
        wait_until(lambda: state_of(store, leaky) == "HEALTHY", 90, "back HEALTHY")
        again = len(sent)
        feed_until(app, store, leaky, sent, lambda: len(sent) >= again + 10)
        assert leaky in {r.get(timeout=30)["worker"] for r in sent[again:]}
        results = [r.get(timeout=30) for r in sent]
        assert len({r["ref"] for r in results}) == len(sent)
        assert all(r["status"] == "analysed" for r in results)
        assert platform.exits == [EX_RECYCLE]  # once, and the leak gone with the process
    finally:
        platform.stop()
