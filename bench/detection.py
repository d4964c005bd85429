"""From wear to a drained worker, against plain Celery's cancel_consumer, over repeated runs.

host: two workers, the checker, a stream of real tweets; mid-stream one worker's CPU is
injected to 100%. Measured per run: the time from that worker's first report over the hard
limit to the checker's verdict (detection), from the verdict to the worker's confirmation
(confirm), and how many tasks started on the worker after the verdict (must be 0).

plain Celery (its defaults, and again with host's reliability settings): the same stream on
two workers; at the same moment ``cancel_consumer`` is sent to one of them (the reply says
"no longer consuming"); counted: the tasks that still started on it after the reply.

    python bench/detection.py [--runs 5] [--tweets 1500] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.plain_app import make_app  # noqa: E402
from broker_config.contract import envelope  # noqa: E402
from broker_config.settings import Settings  # noqa: E402
from harness.event_tap import EventTap  # noqa: E402
from harness.processes import (  # noqa: E402
    WorkerProcess,
    node_name,
    wait_until,
)
from harness.redis_server import RedisServer, free_port  # noqa: E402
from healthcheck.audit import Kind, parse_all  # noqa: E402
from healthcheck.store import RedisHealthStore  # noqa: E402
from workers.app import create_app  # noqa: E402

GROUND_TRUTH = REPO.parent / "shared" / "data" / "tweets_groundtruth.tsv"
#: Tweets published per second: more than two workers take, so that queues hold a backlog
#: and plain Celery's workers have messages reserved (prefetched) when the drain comes.
RATE = 600


def tweets(n: int) -> list[str]:
    rows = GROUND_TRUTH.read_text(encoding="utf-8").splitlines()
    return [rows[i % len(rows)].split("\t", 2)[2] for i in range(n)]


def publish(app: Any, name: str, args_for: Any, texts: list[str], out: list[Any]) -> None:
    """Publish at a steady rate, as a stream would arrive."""
    start = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i, text in enumerate(texts):
            out.append(app.send_task(name, args=[args_for(i, text)], producer=producer))
            delay = start + (i + 1) / RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)


def run_host(url: str, env: dict[str, str], texts: list[str], logs: Path) -> dict[str, float]:
    import redis

    app = create_app(Settings(broker_url=url))
    client = redis.Redis.from_url(url)
    client.flushall()
    store = RedisHealthStore(client)
    policy = logs / "policy.toml"
    policy.write_text("[recovery]\nconfirm_breaches = 100000\n")
    wenv = {**env, "HOST_WEAR_INTERVAL": "0.25", "HOST_LOG_LEVEL": "WARNING"}
    workers = [WorkerProcess(node_name(f"hd{i}"), wenv, log_path=logs / f"hd{i}.log",
                             concurrency=2, loglevel="WARNING") for i in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.wait_ready(app, timeout=60)
    checker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "healthcheck",
                                "--metrics-port", str(free_port()), "--tick", "0.1",
                                "--policy", str(policy)], env=wenv, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bad = workers[0].name
    try:
        wait_until(lambda: store.get(bad) is not None, 30, 'the checker to know the worker')
        results: list[Any] = []
        with EventTap(app) as tap:
            feeder = threading.Thread(target=publish, args=(
                app, "host.analyse", lambda i, t: envelope(f"b:{i}", t), texts, results))
            feeder.start()
            wait_until(lambda: len(results) > len(texts) // 3, 60, 'a third of the stream')
            from healthcheck.actuator import control_reply

            # Worn, not busy (a busy worker stays in): CPU at 100 %, the pool spinning
            control_reply(app, "host_inject", bad, {"spec": "cpu=100,spin=3"}, 3)
            wait_until(lambda: (w := store.get(bad)) and w.state.value == "QUARANTINED", 60,
                       'the quarantine')
            feeder.join()
            records = [r.get(timeout=120) for r in results]
            first_hard = next(e for e in tap.of("worker-wear", bad)
                              if e["wear"]["cpu_percent"][0] >= 97)
        history = parse_all(store.history(bad))
        confirmed = next(r for r in history if r.kind is Kind.DRAIN_CONFIRMED)
        verdict_at = confirmed.get("verdict_at")  # when the verdict was recorded and took effect
        after = sum(1 for r in records if r["worker"] == bad and r["started_at"] > verdict_at)
        return {"detection_s": verdict_at - first_hard["timestamp"],
                "confirm_s": confirmed.get("confirm_s"), "started_after": after,
                "total": len(records)}
    finally:
        checker.terminate()
        checker.wait(15)
        for w in workers:
            w.stop()


def run_plain(url: str, env: dict[str, str], texts: list[str], logs: Path,
              profile: str) -> dict[str, float]:
    import redis

    redis.Redis.from_url(url).flushall()
    app = make_app(profile, url)
    penv = {**env, "PLAIN_PROFILE": profile, "PLAIN_BROKER_URL": url}
    workers = [WorkerProcess(node_name(f"pd{i}"), penv, log_path=logs / f"pd{i}.log",
                             concurrency=2, app="bench.plain_app", loglevel="WARNING")
               for i in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.wait_ready(app, timeout=60)
    bad = workers[0].name
    try:
        results: list[Any] = []
        feeder = threading.Thread(target=publish, args=(
            app, "plain.analyse_stamped", lambda i, t: t, texts, results))
        feeder.start()
        wait_until(lambda: len(results) > len(texts) // 3, 60, 'a third of the stream')
        app.control.cancel_consumer(f"plain_{profile}", destination=[bad], reply=True, timeout=2)
        replied = time.time()
        feeder.join()
        records = [r.get(timeout=120) for r in results]
        after = sum(1 for r in records if r["worker"] == bad and r["started_at"] > replied)
        return {"started_after": after, "total": len(records)}
    finally:
        for w in workers:
            w.stop()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tweets", type=int, default=1500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    texts = tweets(args.tweets)
    server = RedisServer().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOST_", "PLAIN_"))}
    env.update(PYTHONPATH=str(REPO), HOST_BROKER_URL=server.url)
    host: list[dict[str, float]] = []
    plain: dict[str, list[dict[str, float]]] = {"default": [], "reliable": []}
    try:
        with tempfile.TemporaryDirectory(prefix="host-bench-") as tmp:
            for run in range(args.runs):
                host.append(run_host(server.url, env, texts, Path(tmp)))
                for profile in plain:
                    plain[profile].append(run_plain(server.url, env, texts, Path(tmp), profile))
                print(f"run {run + 1}/{args.runs}: host {host[-1]}, plain "
                      f"{ {p: r[-1]['started_after'] for p, r in plain.items()} }", file=sys.stderr)
    finally:
        server.stop()
    det = [r["detection_s"] for r in host]
    con = [r["confirm_s"] for r in host]
    summary = {
        "runs": args.runs, "tweets": args.tweets,
        "host_detection_s": {"p50": statistics.median(det), "p99": pct(det, 99)},
        "host_confirm_s": {"p50": statistics.median(con), "p99": pct(con, 99)},
        "host_drain_s": {"p50": statistics.median(d + c for d, c in zip(det, con, strict=True)),
                         "p99": pct([d + c for d, c in zip(det, con, strict=True)], 99)},
        "host_started_after_verdict": [r["started_after"] for r in host],
        "plain_started_after_cancel_consumer": {p: [r["started_after"] for r in rs]
                                                for p, rs in plain.items()},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"\n{args.runs} runs, {args.tweets} tweets each at {RATE}/s, 2 workers (-c 2):")
    for key in ("host_detection_s", "host_confirm_s", "host_drain_s"):
        print(f"  {key:28} p50 {summary[key]['p50'] * 1000:7.1f} ms   "
              f"p99 {summary[key]['p99'] * 1000:7.1f} ms")
    print(f"  tasks started on the worker after the verdict (host): "
          f"{summary['host_started_after_verdict']}")
    for p, counts in summary["plain_started_after_cancel_consumer"].items():
        print(f"  tasks started after cancel_consumer replied (plain, {p}): {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
