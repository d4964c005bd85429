"""Inputs that would cost a worker far more than their share — VADER is quadratic in emoji —
are refused at a bounded cost: the stream keeps its pace and no worker leaves HEALTHY."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from healthcheck.store import RedisHealthStore
from tests.conftest import CheckerFactory, WorkerFactory
from tests.support.cli import celery, read_jsonl
from tests.support.polling import wait_until

FAST = {"HOST_WEAR_INTERVAL": "0.25"}


def ingest_seconds(source: Path, out: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    proc = celery("ingest", str(source), "--out", str(out), env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return time.monotonic() - started


class TestExpensiveInputs:
    def test_six_huge_emoji_tweets_in_a_stream_of_300(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        """Each 9,999-emoji tweet would cost ~19 s of VADER: rejected as too_expensive, the
        stream within 2x its time without them, every worker HEALTHY throughout."""
        store = RedisHealthStore(redis_client)
        workers = [start_worker(f"ex{i}", env=FAST, concurrency=2) for i in (1, 2)]
        start_checker("--tick", "0.1")
        wait_until(lambda: all(store.get(w.name) for w in workers), 20, "both workers known")
        plain = [f"an ordinary tweet number {i}, quite nice" for i in range(300)]
        spiked = list(plain)
        for k in range(6):
            spiked.insert(25 + 50 * k, "😀" * 9_999)
        (tmp_path / "plain.txt").write_text("\n".join(plain) + "\n", encoding="utf-8")
        (tmp_path / "spiked.txt").write_text("\n".join(spiked) + "\n", encoding="utf-8")
        env = host_env
        normal = ingest_seconds(tmp_path / "plain.txt", tmp_path / "plain.jsonl", env)
        with_spikes = ingest_seconds(tmp_path / "spiked.txt", tmp_path / "spiked.jsonl", env)
        records = read_jsonl(tmp_path / "spiked.jsonl")
        rejected = [r for r in records if r["status"] == "rejected"]
        assert len(records) == 306 and len(rejected) == 6
        assert {r["reason"] for r in rejected} == {"too_expensive"}
        assert with_spikes <= 2 * normal + 1.0, (with_spikes, normal)
        history = celery("fleet", "history", "--json", env=host_env)
        transitions = [r for r in map(json.loads, filter(None, history.stdout.splitlines()))
                       if r.get("kind") == "transition"]
        assert transitions == [], transitions
        print(f"expensive inputs: plain {normal:.2f}s, with six 9,999-emoji tweets "
              f"{with_spikes:.2f}s")
