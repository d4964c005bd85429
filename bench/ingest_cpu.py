"""Where batch ingest's CPU goes: CPU seconds per tweet by process, beside VADER's own.

Starts a private redis-server and one worker (``-c 2``), runs what ``celery -A host ingest
--batch B`` runs (``producer.feed.feed``, in this process, output to /dev/null) on N tweets of the
ground truth, and reads every process's CPU time (user + system) before and after: this
process (ingest), the worker's main process, its pool children, and redis-server. VADER alone
is measured the same way, in this process. CPU time is steadier than a rate on a shared
machine: a run that waits on a busy neighbour uses no more of it. Medians of several runs.

    python bench/ingest_cpu.py [--tweets 20000] [--batch 500] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.throughput import load_tweets  # noqa: E402
from broker_config.settings import Settings  # noqa: E402
from harness.processes import WorkerProcess, node_name  # noqa: E402
from harness.redis_server import RedisServer  # noqa: E402
from producer.feed import feed, read_lines  # noqa: E402
from workers.app import create_app  # noqa: E402
from workers.deadletter import InMemoryDeadLetterStore  # noqa: E402
from workers.inbound import Limits  # noqa: E402

PARTS = ("ingest", "worker main", "pool children", "redis")


def cpu_of(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def snapshot(redis_pid: int, worker_pid: int) -> dict[str, float]:
    main = psutil.Process(worker_pid)
    return {"ingest": cpu_of(psutil.Process()), "worker main": cpu_of(main),
            "pool children": sum(cpu_of(c) for c in main.children(recursive=True)),
            "redis": cpu_of(psutil.Process(redis_pid))}


def vader_cpu_per_tweet(texts: list[str]) -> float:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    started = time.process_time()
    for text in texts:
        analyzer.polarity_scores(text)
    return (time.process_time() - started) / len(texts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tweets = load_tweets(args.tweets)
    data = "".join(f"{i}\t0\t{text}\n" for i, (_, text) in enumerate(tweets)).encode()
    server = RedisServer().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
    env.update(PYTHONPATH=str(REPO), HOST_BROKER_URL=server.url)
    app = create_app(Settings.from_env(env))
    per_run: list[dict[str, float]] = []
    vader: list[float] = []
    with tempfile.TemporaryDirectory(prefix="host-bench-") as logs:
        worker = WorkerProcess(node_name("cpu0"), env, concurrency=2,
                               log_path=Path(logs) / "worker.log", loglevel="WARNING")
        try:
            worker.start()
            worker.wait_ready(app, timeout=60)
            assert worker.proc is not None and server.proc is not None

            def run(payload: bytes) -> None:
                lines = read_lines(io.BytesIO(payload), "bench", "auto", Limits(1 << 20, 10_000))
                with open(os.devnull, "w", encoding="utf-8") as out:
                    report = feed(app, lines, out, InMemoryDeadLetterStore(), batch=args.batch,
                                  idle_timeout=120)
                if not report.complete:
                    raise RuntimeError(report.as_dict())

            run(data[:50_000])  # warm-up: lexicon, connections, pool
            for n in range(args.runs):
                before = snapshot(server.proc.pid, worker.proc.pid)
                began = time.perf_counter()
                run(data)
                elapsed = time.perf_counter() - began
                after = snapshot(server.proc.pid, worker.proc.pid)
                used = {p: (after[p] - before[p]) / len(tweets) * 1e6 for p in PARTS}
                used["rate"] = len(tweets) / elapsed
                per_run.append(used)
                vader.append(vader_cpu_per_tweet([t for _, t in tweets]) * 1e6)
                print(f"run {n + 1}/{args.runs} done", file=sys.stderr)
        finally:
            worker.stop()
            server.stop()
    med = {p: statistics.median(r[p] for r in per_run) for p in (*PARTS, "rate")}
    total = statistics.median(sum(r[p] for p in PARTS) for r in per_run)
    raw = statistics.median(vader)
    result = {"tweets": args.tweets, "batch": args.batch, "runs": args.runs,
              "cpu_us_per_tweet": {p: round(med[p], 1) for p in PARTS},
              "total_us_per_tweet": round(total, 1), "vader_alone_us_per_tweet": round(raw, 1),
              "vader_share_of_total": round(raw / total, 3), "rate_per_s": round(med["rate"])}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"\ningest --batch {args.batch}, {args.tweets} tweets, {args.runs} runs, medians:")
    print(f"{'process':16} {'CPU µs per tweet':>17}")
    for p in PARTS:
        print(f"{p:16} {med[p]:17.1f}")
    print(f"{'all':16} {total:17.1f}")
    print(f"{'VADER alone':16} {raw:17.1f}   ({raw / total:.2f} of all: the most the fleet's "
          "cores can give, as a share of raw VADER on the same cores)")
    print(f"rate {med['rate']:.0f} tweets/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
