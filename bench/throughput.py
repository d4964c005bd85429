"""Tweets per second through a fleet: host against plain Celery, same machine, same run.

Each configuration gets one worker process (``-c 2``, one child per core) on a private
redis-server, or with ``--broker amqp`` on a private RabbitMQ node (results in a private
redis-server either way); every run publishes the same tweets from ../shared/data and waits for every
result. Runs are interleaved across configurations so that machine noise spreads evenly, and
the table reports medians and the ratio to each plain baseline.

    python bench/throughput.py [--broker redis|amqp] [--tweets 2000] [--runs 5] [--batch 1000]
                               [--only NAME ...] [--json]

To compare two commits, run each one's copy from its own checkout directory: workers start as
``python -m celery``, which puts the current directory first on their import path.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from celery.result import ResultSet

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from broker_config.contract import envelope, headers  # noqa: E402
from broker_config.settings import Settings  # noqa: E402
from harness.processes import WorkerProcess, node_name  # noqa: E402
from harness.rabbitmq_server import RabbitServer  # noqa: E402
from harness.redis_server import RedisServer  # noqa: E402
from workers.app import create_app  # noqa: E402

PLAIN = "bench.plain_app"
GROUND_TRUTH = REPO.parent / "shared" / "data" / "tweets_groundtruth.tsv"


@dataclass
class Config:
    """One thing to measure: an app, the worker that serves it (none: ``worker_app`` empty),
    and how tweets become tasks (``send``), or a runner of its own that returns the rate."""

    name: str
    app: Celery
    worker_app: str
    worker_env: dict[str, str]
    send: Callable[[Celery, list[tuple[str, str]]], list[Any]] | None = None
    rates: list[float] = field(default_factory=list)
    runner: Callable[[Config, list[tuple[str, str]]], float] | None = None
    #: Measured with ``--bulk-tweets`` (batches need many tweets to say anything).
    bulk: bool = False

    def run(self, tweets: list[tuple[str, str]]) -> float:
        return (self.runner or run_once)(self, tweets)


def load_tweets(n: int) -> list[tuple[str, str]]:
    """The first ``n`` (id, text) pairs of the ground truth, repeated if n is larger."""
    rows = [line.split("\t", 2) for line in GROUND_TRUTH.read_text(encoding="utf-8").splitlines()]
    pairs = [(r[0], r[2]) for r in rows]
    return [pairs[i % len(pairs)] for i in range(n)]


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def send_plain(batch: int) -> Callable[[Celery, list[tuple[str, str]]], list[Any]]:
    def send(app: Celery, tweets: list[tuple[str, str]]) -> list[Any]:
        with app.producer_or_acquire() as producer:
            if batch == 1:
                return [app.send_task("plain.analyse", args=[text], producer=producer)
                        for _, text in tweets]
            return [app.send_task("plain.analyse_batch", args=[[t for _, t in chunk]],
                                  producer=producer) for chunk in chunks(tweets, batch)]
    return send


def send_host(batch: int) -> Callable[[Celery, list[tuple[str, str]]], list[Any]]:
    def send(app: Celery, tweets: list[tuple[str, str]]) -> list[Any]:
        envs = [envelope(f"bench:{i}", text, "text") for i, (_, text) in enumerate(tweets)]
        with app.producer_or_acquire() as producer:
            if batch == 1:
                return [app.send_task("host.analyse", args=[e], producer=producer,
                                      headers=headers()) for e in envs]
            return [app.send_task("host.analyse_batch", args=[chunk], producer=producer,
                                  headers=headers()) for chunk in chunks(envs, batch)]
    return send


def run_once(cfg: Config, tweets: list[tuple[str, str]]) -> float:
    """Publish every tweet, wait for every result; tweets per second."""
    start = time.perf_counter()
    assert cfg.send is not None
    results = cfg.send(cfg.app, tweets)
    got = 0
    for _, meta in ResultSet(results, app=cfg.app).iter_native(timeout=600):
        value = meta["result"]
        got += len(value) if isinstance(value, list) else 1
    elapsed = time.perf_counter() - start
    if got != len(tweets):
        raise RuntimeError(f"{cfg.name}: {got} results for {len(tweets)} tweets")
    return len(tweets) / elapsed


def run_ingest(batch: int) -> Callable[[Config, list[tuple[str, str]]], float]:
    """What ``celery -A host ingest --batch N`` runs (``producer.feed.feed``: framing, sending and
    collecting overlapped, output lines written), in this process, from a TSV in memory."""
    def run(cfg: Config, tweets: list[tuple[str, str]]) -> float:
        from producer.feed import feed, read_lines
        from workers.deadletter import InMemoryDeadLetterStore
        from workers.inbound import Limits

        data = "".join(f"{i}\t0\t{text}\n" for i, (_, text) in enumerate(tweets)).encode()
        limits = Limits(1 << 20, 10_000)
        start = time.perf_counter()
        with open(os.devnull, "w", encoding="utf-8") as out:  # as `--out FILE` opens it
            report = feed(cfg.app, read_lines(io.BytesIO(data), "bench", "auto", limits),
                          out, InMemoryDeadLetterStore(), batch=batch, idle_timeout=120)
        elapsed = time.perf_counter() - start
        if not report.complete:
            raise RuntimeError(f"{cfg.name}: {report.as_dict()}")
        return len(tweets) / elapsed
    return run


def _vader_share(texts: list[str], start: Any, done: Any, scorer: str) -> None:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from workers.scorer import Scorer

    analyzer = Scorer.from_package() if scorer == "host" else SentimentIntensityAnalyzer()
    analyzer.polarity_scores("warm up")
    start.wait()
    for text in texts:
        analyzer.polarity_scores(text)
    done.put(len(texts))


def run_raw(scorer: str) -> Callable[[Config, list[tuple[str, str]]], float]:
    """VADER alone (vaderSentiment's, or host's scorer), one process per core, each scoring its
    share: the machine's limit."""
    def run(cfg: Config, tweets: list[tuple[str, str]]) -> float:
        return _run_raw(scorer, tweets)
    return run


def _run_raw(scorer: str, tweets: list[tuple[str, str]]) -> float:
    import multiprocessing as mp

    cores = os.cpu_count() or 1
    texts = [t for _, t in tweets]
    ctx = mp.get_context("fork")
    start, done = ctx.Barrier(cores + 1), ctx.Queue()
    procs = [ctx.Process(target=_vader_share, args=(texts[i::cores], start, done, scorer))
             for i in range(cores)]
    for proc in procs:
        proc.start()
    start.wait()
    began = time.perf_counter()
    total: int = sum(int(done.get()) for _ in procs)
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join()
    return total / elapsed


def configs(url: str, batch: int, results_url: str) -> list[Config]:
    from bench.plain_app import make_app

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOST_", "PLAIN_"))}
    env.update(PYTHONPATH=str(REPO), PLAIN_BROKER_URL=url, HOST_BROKER_URL=url,
               PLAIN_RESULT_BACKEND=results_url)
    if results_url != url:
        env.update(HOST_RESULT_BACKEND=results_url, HOST_STORE_URL=results_url)
    host_app = create_app(Settings.from_env(env))
    events_env = {**env, "HOST_TASK_EVENTS": "true"}
    plain = {p: make_app(p, url, results_url) for p in ("default", "reliable", "events")}
    penv = {p: {**env, "PLAIN_PROFILE": p} for p in plain}
    return [
        Config("plain celery, defaults", plain["default"], PLAIN, penv["default"], send_plain(1)),
        Config("plain celery, host's reliability settings", plain["reliable"], PLAIN,
               penv["reliable"], send_plain(1)),
        Config("plain celery, reliability + task events", plain["events"], PLAIN, penv["events"],
               send_plain(1)),
        Config("host, one tweet per task", host_app, "host", env, send_host(1)),
        Config("host, one tweet per task, task events on", host_app, "host", events_env,
               send_host(1)),
        Config(f"plain celery, defaults, batch {batch}", plain["default"], PLAIN, penv["default"],
               send_plain(batch), bulk=True),
        Config(f"host, batch {batch}", host_app, "host", env, send_host(batch), bulk=True),
        Config(f"host ingest --batch {batch} (producer.feed)", host_app, "host", env,
               runner=run_ingest(batch), bulk=True),
        Config(f"raw VADER, {os.cpu_count()} processes (no Celery)", host_app, "", env,
               runner=run_raw("vaderSentiment"), bulk=True),
        Config(f"raw host scorer, {os.cpu_count()} processes (no Celery)", host_app, "", env,
               runner=run_raw("host"), bulk=True),
    ]


def start_worker(cfg: Config, index: int, logs: Path) -> WorkerProcess:
    """One worker for ``cfg``, one pool child per core."""
    worker = WorkerProcess(node_name(f"bench{index}"), cfg.worker_env, concurrency=2,
                           log_path=logs / f"bench{index}.log", app=cfg.worker_app,
                           loglevel="WARNING")
    worker.start()
    worker.wait_ready(cfg.app, timeout=60)
    return worker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=2000)
    parser.add_argument("--bulk-tweets", type=int, default=20000,
                        help="tweets per run of the batch rows and raw VADER")
    parser.add_argument("--only", action="append", default=[],
                        help="run only configurations whose name has this (repeatable: any)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000,
                        help="tweets per task of the batch rows, HOST_MAX_BATCH by default (what a "
                             "task costs whatever its size, ~4 ms of CPU over all processes, is a "
                             "quarter of a 100-tweet batch's cost, a thirteenth of a 500's: "
                             "bench/ingest_cpu.py)")
    parser.add_argument("--broker", choices=("redis", "amqp"), default="redis",
                        help="the broker every configuration runs on (results stay in Redis)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tweets = load_tweets(args.tweets)
    bulk_tweets = load_tweets(args.bulk_tweets)
    server = RedisServer().start()
    rabbit = RabbitServer().start() if args.broker == "amqp" else None
    with tempfile.TemporaryDirectory(prefix="host-bench-") as logs:
        all_cfgs = [c for c in configs(rabbit.url if rabbit else server.url, args.batch,
                                       server.url)
                   if not args.only or any(o in c.name for o in args.only)]
        workers: list[WorkerProcess] = []
        try:
            for run in range(args.runs):
                for i, cfg in enumerate(all_cfgs):
                    # One worker at a time, so configurations never share the cores.
                    worker = start_worker(cfg, i, Path(logs)) if cfg.worker_app else None
                    if worker is not None:
                        workers.append(worker)
                    cfg.run(tweets[:50])  # warm-up: lexicon, connections, pool
                    cfg.rates.append(cfg.run(bulk_tweets if cfg.bulk else tweets))
                    if worker is not None:
                        worker.stop()
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        finally:
            for w in workers:
                w.stop()
            server.stop()
            if rabbit is not None:
                rabbit.stop()
    report(all_cfgs, args)
    return 0


def report(cfgs: list[Config], args: argparse.Namespace) -> None:
    med = {c.name: statistics.median(c.rates) for c in cfgs}
    # The references: Celery's defaults, Celery with host's reliability settings, raw VADER.
    plain_default = med.get("plain celery, defaults", 0.0) or float("nan")
    plain_reliable = med.get("plain celery, host's reliability settings", 0.0) or float("nan")
    raw = next((med[c.name] for c in cfgs if c.name.startswith("raw VADER")), float("nan"))
    scorer = next((med[c.name] for c in cfgs if c.name.startswith("raw host scorer")),
                  float("nan"))
    rows = [{"config": c.name, "median_tweets_per_s": round(med[c.name], 1),
             "runs": [round(r, 1) for r in c.rates],
             "vs_plain_defaults": round(med[c.name] / plain_default, 3),
             "vs_plain_same_settings": round(med[c.name] / plain_reliable, 3),
             "vs_raw_vader": round(med[c.name] / raw, 3),
             "vs_raw_host_scorer": round(med[c.name] / scorer, 3)} for c in cfgs]
    if args.json:
        print(json.dumps({"broker": args.broker, "tweets": args.tweets, "runs": args.runs,
                          "results": rows}, indent=2))
        return
    print(f"\n{args.broker}: {args.tweets} tweets per run ({args.bulk_tweets} for batches and raw"
          f" VADER), {args.runs} runs, medians (tweets/s):")
    print(f"{'configuration':48} {'median':>9} {'÷ plain':>8} {'÷ plain same settings':>22}"
          f" {'÷ raw':>7} {'÷ raw host':>11}")
    print(f"{'':48} {'':>9} {'defaults':>8} {'(row 2)':>22} {'VADER':>7} {'scorer':>11}")
    for r in rows:
        print(f"{r['config']:48} {r['median_tweets_per_s']:9.1f} {r['vs_plain_defaults']:8.2f} "
              f"{r['vs_plain_same_settings']:22.2f} {r['vs_raw_vader']:7.2f} "
              f"{r['vs_raw_host_scorer']:11.2f}")


if __name__ == "__main__":
    sys.exit(main())
