"""A dead worker's messages come back in seconds; a live worker's long task is not run twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from broker_config.app import HostCelery
from broker_config.contract import envelope
from healthcheck.store import RedisHealthStore
from tests.conftest import GROUND_TRUTH, CheckerFactory, WorkerFactory
from tests.support.brokers import on_every_queue_type
from tests.support.cli import REPO, read_jsonl
from tests.support.events import EventTap
from tests.support.polling import wait_until


@pytest.fixture
def host_env(host_env: dict[str, str]) -> dict[str, str]:
    """Workers here send Celery's task events (HOST_TASK_EVENTS): the tests watch them."""
    return {**host_env, "HOST_TASK_EVENTS": "true"}


@on_every_queue_type
class TestKilledWorker:
    def test_sigkill_mid_task_loses_nothing_and_redelivers_within_15s(
            self, app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        """200 tweets in flight; one worker SIGKILLed mid-task: OFFLINE within 3 missed
        heartbeats, what it held runs elsewhere within 15 s, every tweet exactly once."""
        store = RedisHealthStore(redis_client)
        victim = start_worker("kv1", env={"HOST_WEAR_INJECT": "slow=2"})
        # The others are slowed too, so the 200 tweets are still in flight when the victim dies
        others = [start_worker(f"kv{i}", env={"HOST_WEAR_INJECT": "slow=0.1"}) for i in (2, 3)]
        start_checker("--tick", "0.1")
        wait_until(lambda: all(store.get(w.name) for w in (victim, *others)), 20,
                   "the checker to know all three workers")
        src = tmp_path / "200.tsv"
        lines = GROUND_TRUTH.read_text(encoding="utf-8").splitlines()[:200] if \
            GROUND_TRUTH.exists() else [f"{i}\t0\ttweet {i} is fine" for i in range(200)]
        src.write_text("\n".join(lines) + "\n")
        out = tmp_path / "out.jsonl"
        with EventTap(app) as tap:
            ingest = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "ingest",
                                       str(src), "--out", str(out), "--timeout", "60"],
                                      env=host_env, cwd=REPO, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            def stream_task_running() -> bool:
                # a stream task (not one of the checker's probes) has started on the victim
                ours = {e["uuid"] for e in tap.of("task-received", victim.name)
                        if "200.tsv" in str(e.get("args"))}
                return any(e["uuid"] in ours for e in tap.of("task-started", victim.name))

            started = wait_until(stream_task_running, 30, "a stream task on the victim")
            assert victim.pid is not None
            os.killpg(victim.pid, signal.SIGKILL)
            killed_at = time.time()
            assert ingest.wait(120) == 0
            time.sleep(0.5)
            received = {e["uuid"] for e in tap.of("task-received", victim.name)}
            done_on_victim = {e["uuid"] for e in tap.of("task-succeeded", victim.name)}
            elsewhere = {e["uuid"]: e["timestamp"] for e in tap.of("task-succeeded")
                         if e["hostname"] != victim.name}
        results = read_jsonl(out)
        # What it held of the stream (a probe on its own verify queue waits for it, by design)
        held = (received - done_on_victim) & {r["task_id"] for r in results}
        assert started and held, "the victim held nothing of the stream when it was killed"
        for task_id in held:
            assert task_id in elsewhere, task_id
            assert elsewhere[task_id] - killed_at <= 15.0, elsewhere[task_id] - killed_at
        assert len(results) == 200 and len({r["ref"] for r in results}) == 200
        assert all(r["status"] == "analysed" for r in results)
        assert {r["worker"] for r in results if r["task_id"] in held} <= {w.name for w in others}
        offline = wait_until(lambda: next((r for r in store.history(victim.name)
                                           if r.get("to") == "OFFLINE"), None), 15, "OFFLINE")
        assert offline["at"] - killed_at <= 3 * 2.0 + 1.5  # 3 missed 2 s heartbeats, one tick


class TestLongTask:
    def test_a_task_longer_than_the_visibility_timeout_runs_once(
            self, app: HostCelery, start_worker: WorkerFactory) -> None:
        """A live worker keeps its messages invisible: a 13 s task (timeout 10 s) runs once."""
        slow = start_worker("lt1", env={"HOST_WEAR_INJECT": "slow=13"}, queues=("tweets",))
        with EventTap(app) as tap:
            result = app.send_task("host.analyse", args=[envelope("long:1", "a long one")])
            wait_until(lambda: tap.of("task-started", slow.name), 20, "the long task started")
            start_worker("lt2", queues=("tweets",))
            record = result.get(timeout=40)
            time.sleep(3)  # a wrongly restored copy would now run on lt2
            runs = Counter(e["hostname"] for e in tap.of("task-received") if e["uuid"] == result.id)
        assert record["worker"] == slow.name
        assert runs == {slow.name: 1}
