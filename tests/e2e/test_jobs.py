"""`celery -A host job`: 100,000 tweets as a job of budgeted chunks over three real workers, one
SIGKILLed and one drained mid-job, and a producer killed and resumed."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from healthcheck.store import RedisHealthStore
from producer.job_store import RedisJobStore as JobStore
from tests.conftest import GROUND_TRUTH, CheckerFactory, WorkerFactory
from tests.support.cli import REPO, celery, read_jsonl
from tests.support.polling import wait_until

pytestmark = pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")

#: CPU seconds per chunk in these tests: small, so that 100,000 tweets make dozens of chunks.
BUDGET_S = 0.5


def repeated_truth(path: Path, n: int) -> list[str]:
    """The ground truth repeated to ``n`` lines with unique ids; returns the texts in order."""
    rows = [ln.split("\t", 2) for ln in GROUND_TRUTH.read_text(encoding="utf-8").splitlines()]
    texts = [rows[i % len(rows)][2] for i in range(n)]
    path.write_text("".join(f"{i}\t{rows[i % len(rows)][1]}\t{t}\n" for i, t in enumerate(texts)),
                    encoding="utf-8")
    return texts


def start_job(src: Path, out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "job", "run", str(src),
                             "--out", str(out), "--chunk-cpu", str(BUDGET_S), "--json", *extra],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def job_id_of(store: JobStore) -> str:
    jobs = wait_until(store.jobs, 30, "the job to be created")
    return str(jobs[0])


def written(store: JobStore, job_id: str) -> int:
    return int((store.get(job_id) or {}).get("items_written", 0))


def assert_exactly_once_and_vader(out: Path, src: Path, texts: list[str]) -> list[dict[str, object]]:
    records = read_jsonl(out)
    assert len(records) == len(texts)
    assert [r["ref"] for r in records] == [f"{src}:{i}" for i in range(1, len(texts) + 1)]
    analyzer = SentimentIntensityAnalyzer()
    expected = {t: analyzer.polarity_scores(t)["compound"] for t in set(texts)}
    wrong = [r["ref"] for r, t in zip(records, texts, strict=True)
             if r["status"] != "analysed" or r["compound"] != pytest.approx(expected[t], abs=1e-4)]
    assert wrong == [], wrong[:5]
    return records


class TestJob:
    def test_100k_tweets_survive_a_sigkill_and_a_drain(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        store = JobStore(redis.Redis.from_url(host_env["HOST_BROKER_URL"], decode_responses=True))
        health = RedisHealthStore(redis_client)
        # each chunk also sleeps 1 s (not CPU: the sizing is unchanged), so that the job is
        # still running when the drain returns
        killed, drained, survivor = (start_worker(f"jb{i}", env={"HOST_WEAR_INJECT": "slow=1"})
                                     for i in (1, 2, 3))
        start_checker("--tick", "0.1")
        wait_until(lambda: all(health.get(w.name) for w in (killed, drained, survivor)), 20,
                   "the checker to know the three workers")
        src, out = tmp_path / "100k.tsv", tmp_path / "out.jsonl"
        texts = repeated_truth(src, 100_000)
        job = start_job(src, out, host_env)
        job_id = job_id_of(store)
        wait_until(lambda: written(store, job_id) >= 10_000, 120, "10,000 items written")
        assert killed.pid is not None
        os.killpg(killed.pid, signal.SIGKILL)
        wait_until(lambda: written(store, job_id) >= 25_000, 120, "25,000 items written")
        proc = celery("fleet", "drain", drained.name, "--yes", "--wait", "--timeout", "60",
                      env=host_env)
        drained_at = time.time()
        assert proc.returncode == 0, proc.stderr
        # a drain waits for at most the chunk it runs (its budget times the hard multiple, plus
        # the injected second here), and the command polls every 0.5 s
        waited = re.search(r"holds no work \(waited ([0-9.]+) s\)", proc.stdout)
        assert waited, proc.stdout
        assert float(waited.group(1)) < BUDGET_S * 4 + 1 + 1, proc.stdout
        assert written(store, job_id) < 100_000, "the job ended before the drain: nothing shown"
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr[-2000:]
        summary = json.loads(stderr.strip().splitlines()[-1])
        assert summary["state"] == "done" and summary["written"] == 100_000

        records = assert_exactly_once_and_vader(out, src, texts)
        late = {r["worker"] for r in records if float(str(r["started_at"])) > drained_at + 1}
        assert late == {survivor.name}, late  # the job finished on the remaining worker
        costs = store.costs(job_id)
        print(f"drain --wait {waited.group(1)} s; {len(costs)} chunks, CPU max "
              f"{max(c['cpu_s'] for c in costs):.3f} s (budget {BUDGET_S}); job "
              f"{summary['elapsed_s']} s, resent {summary['resent']}")
        assert len(costs) >= 20
        # Sized from the chunks before it, a chunk's CPU per item can differ from theirs by up
        # to ~1.9x on this 2-core machine (what runs on the other core: a clean-clone run saw
        # 55 us against an estimate of 29): 2x the budget is what the sizing can promise here;
        # the hard multiple (4x) is the bound the chunk enforces on itself.
        over = [c for c in costs[5:] if c["cpu_s"] > 2.0 * BUDGET_S]
        assert over == [], over
        status = json.loads(celery("job", "status", job_id, "--json", env=host_env).stdout)
        assert status["state"] == "done" and status["items_written"] == 100_000
        assert status["chunk_cpu_max_s"] == max(c["cpu_s"] for c in costs)

    def test_a_killed_producer_is_resumed_exactly_once(
            self, start_worker: WorkerFactory, host_env: dict[str, str], tmp_path: Path,
            redis_client: redis.Redis) -> None:  # (an empty store: no older job)
        store = JobStore(redis.Redis.from_url(host_env["HOST_BROKER_URL"], decode_responses=True))
        start_worker("jr1", concurrency=2)
        src, out = tmp_path / "20k.tsv", tmp_path / "out.jsonl"
        texts = repeated_truth(src, 20_000)
        job = start_job(src, out, host_env, "--parallel", "4")
        job_id = job_id_of(store)
        wait_until(lambda: written(store, job_id) >= 3_000, 60, "3,000 items written")
        job.kill()
        job.wait()
        assert written(store, job_id) < 20_000
        time.sleep(1)  # the chunks it had sent finish while nobody listens
        proc = celery("job", "resume", job_id, "--json", env=host_env, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert_exactly_once_and_vader(out, src, texts)
        assert celery("job", "resume", job_id, env=host_env).returncode != 0  # done: refused

    def test_cancel_stops_the_job_and_keeps_what_is_written(
            self, start_worker: WorkerFactory, host_env: dict[str, str], tmp_path: Path,
            redis_client: redis.Redis) -> None:  # (an empty store: no older job)
        store = JobStore(redis.Redis.from_url(host_env["HOST_BROKER_URL"], decode_responses=True))
        start_worker("jc1", env={"HOST_WEAR_INJECT": "slow=1"})
        src, out = tmp_path / "5k.tsv", tmp_path / "out.jsonl"
        repeated_truth(src, 5_000)
        job = start_job(src, out, host_env)
        job_id = job_id_of(store)
        wait_until(lambda: written(store, job_id) >= 50, 60, "the first chunk written")
        assert celery("job", "cancel", job_id, env=host_env).returncode == 0
        assert job.wait(30) != 0
        status = json.loads(celery("job", "status", job_id, "--json", env=host_env).stdout)
        assert status["state"] == "cancelled"
        records = read_jsonl(out)
        assert 50 <= len(records) < 5_000
        assert [r["ref"] for r in records] == [f"{src}:{i}" for i in range(1, len(records) + 1)]

    def test_failed_chunks_are_split_down_to_single_items_never_retried_for_ever(
            self, start_worker: WorkerFactory, host_env: dict[str, str], tmp_path: Path,
            redis_client: redis.Redis) -> None:  # (an empty store: no older job)
        """Every chunk task fails (injected): each failed chunk is split in two and sent again,
        down to single items, which are written as failed; every item once, in order."""
        start_worker("jf1", concurrency=2, env={"HOST_WEAR_INJECT": "fail_rate=1"})
        src, out = tmp_path / "200.tsv", tmp_path / "out.jsonl"
        repeated_truth(src, 200)
        job = start_job(src, out, host_env)
        _, stderr = job.communicate(timeout=180)
        summary = json.loads(stderr.strip().splitlines()[-1])
        records = read_jsonl(out)
        assert [r["ref"] for r in records] == [f"{src}:{i}" for i in range(1, 201)]
        assert [r["status"] for r in records] == ["failed"] * 200
        assert all("InjectedFailure" in str(r["reason"]) for r in records), records[:3]
        # 200 single items, reached by halving: every split chunk was sent again, none whole
        assert summary["failed"] == 200 and 200 <= summary["resent"] < 400, summary
        assert job.returncode == 1  # as ingest: 0 only when every item has a result

    def test_a_job_with_nobody_to_run_it_waits_and_says_so(
            self, host_env: dict[str, str], tmp_path: Path,
            redis_client: redis.Redis) -> None:  # (an empty store: no older job)
        """No worker in rotation: the job does not fail, it waits, and `job status` says why."""
        store = JobStore(redis.Redis.from_url(host_env["HOST_BROKER_URL"], decode_responses=True))
        src, out = tmp_path / "300.tsv", tmp_path / "out.jsonl"
        repeated_truth(src, 300)
        job = start_job(src, out, host_env)
        try:
            job_id = job_id_of(store)

            def waiting() -> str:
                proc = celery("job", "status", job_id, "--json", env=host_env)
                return str(json.loads(proc.stdout)["waiting"]) if proc.returncode == 0 else ""

            assert "no worker in rotation" in wait_until(waiting, 30, "the job to say it waits")
            assert job.poll() is None and written(store, job_id) == 0
            proc = celery("job", "cancel", job_id, "--json", env=host_env)
            assert proc.returncode == 0 and json.loads(proc.stdout)["state"] == "cancelled"
            assert job.wait(30) == 1
        finally:
            if job.poll() is None:
                job.kill()

    def test_a_worn_fleet_slows_the_job_down(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], tmp_path: Path, redis_client: redis.Redis) -> None:
        """A worker at 90 % of its CPU soft limit (injected): one chunk in flight, and the job
        says it paces itself; it still finishes, every item once."""
        health = RedisHealthStore(redis_client)
        store = JobStore(redis.Redis.from_url(host_env["HOST_BROKER_URL"], decode_responses=True))
        worker = start_worker("jw1", concurrency=2, env={"HOST_WEAR_INJECT": "cpu=76.5,slow=0.2"})
        start_checker("--tick", "0.1")
        wait_until(lambda: health.reports().get(worker.name), 30, "the worker's first report")
        src, out = tmp_path / "3k.tsv", tmp_path / "out.jsonl"
        texts = repeated_truth(src, 3_000)
        job = start_job(src, out, host_env, "--parallel", "4")
        job_id = job_id_of(store)
        said = wait_until(lambda: (store.get(job_id) or {}).get("waiting"), 30, "pacing")
        assert "pacing to 1" in said, said
        _, stderr = job.communicate(timeout=180)
        assert job.returncode == 0, stderr[-2000:]
        records = assert_exactly_once_and_vader(out, src, texts)
        # one chunk at a time although two pool processes and --parallel 4 would allow more
        spans: dict[str, list[float]] = {}
        for r in records:
            span = spans.setdefault(str(r["task_id"]), [float("inf"), 0.0])
            span[0] = min(span[0], float(str(r["started_at"])))
            span[1] = max(span[1], float(str(r["finished_at"])))
        ordered = sorted(spans.values())
        assert len(ordered) >= 3
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered)), ordered
        assert health.get(worker.name).state.value == "HEALTHY"  # type: ignore[union-attr]
