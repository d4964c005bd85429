"""The fleet driven by producers that are not host — a plain Celery app, and bytes written
straight onto the queue — with the checker watching: the sender's faults are the sender's."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from healthcheck.store import RedisHealthStore
from tests.conftest import GROUND_TRUTH, CheckerFactory, WorkerFactory
from tests.support.cli import celery
from tests.support.polling import wait_until
from tests.support.raw_messages import malformed
from workers.deadletter import RedisDeadLetterStore

PRODUCER = Path(__file__).resolve().parents[1] / "support" / "plain_producer.py"
FAST = {"HOST_WEAR_INTERVAL": "0.25"}


def plain(mode: str, broker: str, n: int = 0) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(PRODUCER), mode, broker, str(n)], cwd="/",
                          capture_output=True, text=True, timeout=600, check=False,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["imported_host"] == [], summary["imported_host"]
    return summary


def transitions(env: dict[str, str]) -> list[dict[str, Any]]:
    proc = celery("fleet", "history", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return [r for r in map(json.loads, filter(None, proc.stdout.splitlines()))
            if r.get("kind") == "transition"]


@pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
class TestPlainProducer:
    def test_a_burst_of_wrong_tasks_and_bad_bytes_ejects_nobody(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis) -> None:
        """200 wrong-signature tasks then 2,000 tweets from a plain Celery app, with 100 bad
        messages pushed onto the queue meanwhile: 2,000 exact results, 300 dead letters, no
        worker leaves HEALTHY; then fail_rate=1 on one worker still quarantines it."""
        store = RedisHealthStore(redis_client)
        workers = [start_worker(f"pp{i}", env=FAST, concurrency=2) for i in (1, 2, 3)]
        start_checker("--tick", "0.1")
        wait_until(lambda: all((w := store.get(x.name)) and w.state.value == "HEALTHY"
                               for x in workers), 20, "three healthy workers")
        bad_items = list(itertools.islice(itertools.cycle(
            [v for k, v in malformed().items() if k != "oversize"]), 100))

        def push_bad() -> None:
            client = redis.Redis.from_url(host_env["HOST_BROKER_URL"])
            for item in bad_items:
                client.lpush("tweets", item)

        pusher = threading.Thread(target=push_bad)
        pusher.start()
        summary = plain("raw", host_env["HOST_BROKER_URL"], 2000)
        pusher.join()
        assert {r["status"] for r in summary["bad"]} == {"rejected"}
        assert {r["reason"] for r in summary["bad"]} == {"bad_arguments"}
        vader = SentimentIntensityAnalyzer()
        good = summary["good"]
        assert len(good) == 2000 and {r["status"] for r in good} == {"analysed"}
        for r in good[:300]:
            assert r["compound"] == vader.polarity_scores(r["text"])["compound"]
        dead = RedisDeadLetterStore(redis_client)
        wait_until(lambda: dead.counts().get("total", 0) >= 300, 30, "300 dead letters")
        assert all(w.alive() for w in workers)
        assert [t for t in transitions(host_env) if t["from"] == "HEALTHY"] == []
        # A worker that really fails is still convicted
        bad_worker = workers[0]
        assert celery("fleet", "inject", bad_worker.name, "fail_rate=1",
                      env=host_env).returncode == 0
        failing = plain("helper", host_env["HOST_BROKER_URL"], 300)
        # Every task is accounted for: analysed by a healthy worker, or failed on the bad one
        # until its failures or a wrong probe answer (whichever the checker sees first) took
        # it out.
        assert len(failing["good"]) == 300
        assert {r["status"] for r in failing["good"]} <= {"analysed", "failed"}
        wait_until(lambda: (w := store.get(bad_worker.name)) and w.state.value in (
            "DRAINING", "QUARANTINED"), 60, "the failing worker to be taken out")

    def test_the_contract_helper_and_an_unrouted_task(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str]) -> None:
        """The helper routes to tweets; a task sent without a queue waits on `celery`, seen in
        host_queue_messages{queue="celery"}."""
        start_worker("pp4")
        checker = start_checker("--tick", "0.1")
        summary = plain("helper", host_env["HOST_BROKER_URL"], 50)
        assert [r["status"] for r in summary["good"]] == ["analysed"] * 50
        assert summary["rejected"] == 0
        plain("unrouted", host_env["HOST_BROKER_URL"])
        wait_until(lambda: 'host_queue_messages{queue="celery"} 1.0' in checker.get("/metrics")[1],
                   20, "the celery queue's depth in /metrics")
