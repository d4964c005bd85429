"""A job's throughput against ``ingest --batch`` and Celery's own ``chunks``, same data, same run.

One worker (``-c 2``) per configuration on a private redis-server, runs interleaved; each run
sends the same tweets and waits for every result. Prints medians and each row's ratio to the
best batch rate of the run (the issue's goal: the job within 20 % of it).

    python bench/jobs.py [--tweets 50000] [--runs 5] [--batch 500] [--chunk-cpu 2.0] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.throughput import (  # noqa: E402
    PLAIN,
    Config,
    load_tweets,
    run_ingest,
    start_worker,
)
from broker_config.settings import Settings  # noqa: E402
from harness.redis_server import RedisServer  # noqa: E402
from workers.app import create_app  # noqa: E402


def run_job(chunk_cpu: float) -> Any:
    """What ``celery -A host job run`` runs (producer.job_runner.JobRunner), in this process."""
    def run(cfg: Config, tweets: list[tuple[str, str]]) -> float:
        from producer.chunks import new_job_id
        from producer.feed import read_lines
        from producer.job_runner import JobRunner
        from producer.job_store import RedisJobStore
        from producer.pacing import ChunkBudget
        from workers.inbound import Limits

        settings = cfg.app.host_settings  # type: ignore[attr-defined]
        store = RedisJobStore.from_url(settings.effective_store_url)
        with tempfile.TemporaryDirectory(prefix="host-bench-job-") as tmp:
            src, out = Path(tmp) / "in.tsv", Path(tmp) / "out.jsonl"
            src.write_text("".join(f"{i}\t0\t{t}\n" for i, (_, t) in enumerate(tweets)),
                           encoding="utf-8")
            job_id = new_job_id()
            store.create(job_id, {"state": "running", "created_at": time.time()})
            start = time.perf_counter()
            with open(src, "rb") as inp, open(out, "wb") as sink:
                runner = JobRunner(cfg.app, store, job_id, sink, ChunkBudget(cpu_s=chunk_cpu),
                                   parallel=4, fleet=lambda: (0.0, 1), total=len(tweets))
                lines = read_lines(inp, "bench", "auto", Limits(1 << 20, 10_000))
                report = runner.run(iter(lines), 0, [])
            elapsed = time.perf_counter() - start
        if report.written != len(tweets):
            raise RuntimeError(f"{cfg.name}: {report.as_dict()}")
        return len(tweets) / elapsed
    return run


def run_plain_chunks(batch: int) -> Any:
    """Celery's ``chunks`` primitive on plain Celery: ``analyse.chunks(items, batch)``."""
    def run(cfg: Config, tweets: list[tuple[str, str]]) -> float:
        start = time.perf_counter()
        task = cfg.app.tasks["plain.analyse"]
        result = task.chunks([(t,) for _, t in tweets], batch).group().apply_async()
        got = sum(len(part) for part in result.get(timeout=600))
        elapsed = time.perf_counter() - start
        if got != len(tweets):
            raise RuntimeError(f"{cfg.name}: {got} results for {len(tweets)}")
        return len(tweets) / elapsed
    return run


def configs(url: str, batch: int, chunk_cpu: float) -> list[Config]:
    from bench.plain_app import make_app

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOST_", "PLAIN_"))}
    env.update(PYTHONPATH=str(REPO), PLAIN_BROKER_URL=url, HOST_BROKER_URL=url)
    host: Celery = create_app(Settings.from_env(env))
    plain = make_app("default", url)
    return [
        Config(f"plain celery chunks({batch})", plain, PLAIN, {**env, "PLAIN_PROFILE": "default"},
               runner=run_plain_chunks(batch)),
        Config(f"host ingest --batch {batch}", host, "host", env, runner=run_ingest(batch)),
        Config(f"host job (chunk budget {chunk_cpu:g} CPU s)", host, "host", env,
               runner=run_job(chunk_cpu)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--chunk-cpu", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tweets = load_tweets(args.tweets)
    server = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="host-bench-") as logs:
            cfgs = configs(server.url, args.batch, args.chunk_cpu)
            for run in range(args.runs):
                for i, cfg in enumerate(cfgs):
                    worker = start_worker(cfg, i, Path(logs))
                    try:
                        cfg.run(tweets[:500])  # warm-up
                        cfg.rates.append(cfg.run(tweets))
                    finally:
                        worker.stop()
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        server.stop()
    med = {c.name: statistics.median(c.rates) for c in cfgs}
    best_batch = max(v for k, v in med.items() if "job" not in k)
    rows = [{"config": c.name, "median_tweets_per_s": round(med[c.name], 1),
             "runs": [round(r, 1) for r in c.rates],
             "vs_best_batch": round(med[c.name] / best_batch, 3)} for c in cfgs]
    if args.json:
        print(json.dumps({"tweets": args.tweets, "runs": args.runs, "results": rows}, indent=2))
        return 0
    print(f"\n{args.tweets} tweets per run, {args.runs} runs, medians (tweets/s):")
    print(f"{'configuration':44} {'median':>9} {'÷ best batch':>13}")
    for r in rows:
        print(f"{r['config']:44} {r['median_tweets_per_s']:9.1f} {r['vs_best_batch']:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
