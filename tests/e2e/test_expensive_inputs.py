"""Costly inputs: over the emoji cap they are refused at a bounded cost; under it, the inputs
that cost vaderSentiment half a second each are analysed at a linear cost. Either way the
stream keeps its pace and no worker leaves HEALTHY."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from healthcheck.store import RedisHealthStore
from tests.conftest import GROUND_TRUTH, CheckerFactory, WorkerFactory
from tests.support.cli import celery, read_jsonl
from tests.support.polling import wait_until

FAST = {"HOST_WEAR_INTERVAL": "0.25"}
#: Issue 31's table: each costs vaderSentiment ~0.5 s of CPU, host's scorer a few milliseconds.
COSTLY = ["not good " * 1111, "😀" * 999, "😀 but " * 999, "no " * 3333]


def ingest_seconds(source: Path, out: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    proc = celery("ingest", str(source), "--out", str(out), env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return time.monotonic() - started


class TestExpensiveInputs:
    def test_six_huge_emoji_tweets_in_a_stream_of_300(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        """Each 9,999-emoji tweet (over HOST_MAX_EMOJI; ~19 s of vaderSentiment): rejected as
        too_expensive, the
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

    def test_issue_31s_costly_inputs_are_analysed_among_real_tweets(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        """The inputs that cost vaderSentiment ~0.5 s each (10,000 characters of "not good",
        999 emoji, "😀 but" 999 times, "no" 3,333 times) are analysed with vaderSentiment's
        exact scores, in a stream of 600 real tweets; no worker changes state. (How much they
        slow the real tweets is measured by bench/expensive_mix.py.)"""
        store = RedisHealthStore(redis_client)
        workers = [start_worker(f"cx{i}", env=FAST, concurrency=2) for i in (1, 2)]
        start_checker("--tick", "0.1")
        wait_until(lambda: all(store.get(w.name) for w in workers), 20, "both workers known")
        lines = GROUND_TRUTH.read_text(encoding="utf-8").splitlines()[:600]
        for k in range(24):
            lines.insert(25 * k, f"c{k}\t0\t{COSTLY[k % len(COSTLY)].strip()}")
        (tmp_path / "mixed.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        ingest_seconds(tmp_path / "mixed.tsv", tmp_path / "mixed.jsonl", host_env)
        records = read_jsonl(tmp_path / "mixed.jsonl")
        assert len(records) == 624 and {r["status"] for r in records} == {"analysed"}
        vader = SentimentIntensityAnalyzer()
        costly = [r for r in records if str(r["id"]).startswith("c")]
        assert len(costly) == 24
        for r in costly:
            expected = vader.polarity_scores(COSTLY[int(r["id"][1:]) % len(COSTLY)].strip())
            assert {k: r[k] for k in expected} == expected, r["id"]
        history = celery("fleet", "history", "--json", env=host_env)
        transitions = [r for r in map(json.loads, filter(None, history.stdout.splitlines()))
                       if r.get("kind") == "transition"]
        assert transitions == [], transitions
