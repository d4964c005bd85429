"""How long a Redis Sentinel failover stops a fleet: host against plain Celery, same run.

Each run starts a fresh private Sentinel group (a master, two replicas, three sentinels;
``--down-after`` ms), puts broker and results on it (and, for host, its store and a checker),
starts one worker of two processes, and streams one task every ``--interval`` ms. ``--kill-at``
seconds in, the master is SIGKILLed; the stream goes on for ``--after`` seconds more, then
every result is collected. Plain Celery runs with host's reliability settings (late ack,
reject on worker lost, prefetch 1) and Celery's own Sentinel support.

Per system it reports the tasks lost (sent, never answered), how long after the kill tasks
started again (the end of the longest stretch without a task starting; "inf" when nothing
started again), and that stretch: medians over ``--runs`` runs, and host's ÷ plain Celery's.
The producer never gives up: a send that fails is sent again (counted), as a producer that
loses nothing must.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.result import AsyncResult
from kombu.exceptions import OperationalError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.plain_app import make_app  # noqa: E402
from broker_config.contract import envelope  # noqa: E402
from broker_config.settings import Settings  # noqa: E402
from harness.processes import WorkerProcess, node_name, terminate  # noqa: E402
from harness.redis_server import free_port  # noqa: E402
from harness.sentinel import SentinelGroup  # noqa: E402
from workers.app import create_app  # noqa: E402

GROUND_TRUTH = REPO.parent / "shared" / "data" / "tweets_groundtruth.tsv"
MASTER = "bench"
#: What a client raises while Redis fails over.
BROKEN = (OSError, redis.RedisError, OperationalError)


@dataclass
class Outcome:
    """One run of one system."""

    sent: int
    answered: int
    send_retries: int
    resumed_s: float
    gap_s: float


@dataclass
class System:
    name: str
    runs: list[Outcome] = field(default_factory=list)


def texts() -> list[str]:
    return [line.split("\t")[-1] for line in GROUND_TRUTH.read_text(encoding="utf-8").splitlines()]


Made = tuple[Callable[[], Celery], Callable[[Celery, int, str], AsyncResult[Any]],
             list[subprocess.Popen[bytes]], dict[str, str]]


def plain(url: str, logs: Path) -> Made:
    env = {**os.environ, "PLAIN_PROFILE": "reliable", "PLAIN_BROKER_URL": url,
           "PLAIN_SENTINEL_MASTER": MASTER}
    return (lambda: make_app("reliable", url, url, MASTER),
            lambda a, i, t: a.send_task("plain.analyse_stamped", args=[t]), [], env)


def host(url: str, logs: Path) -> Made:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
    env.update(HOST_BROKER_URL=url, HOST_SENTINEL_MASTER=MASTER, HOST_LOG_FORMAT="json")
    checker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "healthcheck",
                                "--metrics-port", str(free_port())], env=env, cwd=REPO,
                               stdout=(logs / "checker.log").open("wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    return (lambda: create_app(Settings.from_env(env)), (lambda a, i, t: a.send_task(
        "host.analyse", args=[envelope(f"bench:{i}", t, "text")])), [checker], env)


def started_at(value: Any) -> float:
    record = value[0] if isinstance(value, list) else value
    return float(record["started_at"])


def run_once(make: Callable[..., Any], args: argparse.Namespace, tweets: list[str],
             logs: Path, app_name: str) -> Outcome:
    group = SentinelGroup(down_after_ms=args.down_after, master=MASTER).start()
    helpers: list[subprocess.Popen[bytes]] = []
    worker = None
    logs.mkdir(parents=True, exist_ok=True)
    try:
        fresh, send, helpers, env = make(group.url, logs)
        app = fresh()
        worker = WorkerProcess(node_name(f"fo-{app_name}"), env, concurrency=2,
                               log_path=logs / f"{app_name}.log", app=app_name, loglevel="WARNING")
        worker.start().wait_ready(app, timeout=60)
        sent: list[AsyncResult[Any]] = []
        retries = 0
        killed_at = 0.0

        def killer() -> None:
            nonlocal killed_at
            time.sleep(args.kill_at)
            killed_at = time.time()
            group.kill_master()

        threading.Thread(target=killer, daemon=True).start()
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < args.kill_at + args.after:
            due = started + i * args.interval / 1000
            time.sleep(max(0.0, due - time.monotonic()))
            while True:
                try:
                    sent.append(send(app, i, tweets[i % len(tweets)]))
                    break
                except BROKEN:  # the broker is away: send again
                    retries += 1
                    time.sleep(0.1)
            i += 1
        starts = collect([r.id for r in sent], fresh(), deadline=time.monotonic() + 90)
        times = sorted(starts)
        gaps = [(b - a, b) for a, b in itertools.pairwise(times) if b > killed_at]
        # Nothing started after the kill: it never resumed (within the collection's deadline)
        gap, ended = max(gaps) if gaps else (math.inf, math.inf)
        return Outcome(len(sent), len(starts), retries, ended - killed_at, gap)
    finally:
        if worker is not None:
            worker.stop()
        for proc in helpers:
            terminate(proc)
        group.stop()


def collect(ids: list[str], app: Celery, deadline: float) -> list[float]:
    """The start times of every answered task, read from the result backend by a client made
    after the failover (Celery's own result consumer does not survive one in the producer:
    "Retry limit exceeded ... must be restarted"), asking again while it does not answer."""
    starts: dict[str, float] = {}
    while len(starts) < len(ids) and time.monotonic() < deadline:
        for task_id in ids:
            if task_id in starts:
                continue
            try:
                meta = app.backend.get_task_meta(task_id)
            except BROKEN:  # the backend is away for a moment
                time.sleep(0.2)
                break
            if meta.get("status") == "SUCCESS":
                starts[task_id] = started_at(meta["result"])
        else:
            time.sleep(0.5)
    return list(starts.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--down-after", type=int, default=2000,
                        help="the sentinels' down-after-milliseconds")
    parser.add_argument("--interval", type=float, default=20.0, help="ms between tasks")
    parser.add_argument("--kill-at", type=float, default=8.0)
    parser.add_argument("--after", type=float, default=20.0)
    parser.add_argument("--logs", default="", help="keep the workers' logs in this directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tweets = texts()
    systems = {"plain celery, host's reliability settings": (plain, "bench.plain_app"),
               "host (worker and checker)": (host, "host")}
    measured = {name: System(name) for name in systems}
    with tempfile.TemporaryDirectory(prefix="host-failover-") as scratch:
        logs = Path(args.logs or scratch)
        logs.mkdir(parents=True, exist_ok=True)
        for run in range(args.runs):
            for name, (make, app_name) in systems.items():
                outcome = run_once(make, args, tweets, logs / f"run{run + 1}", app_name)
                measured[name].runs.append(outcome)
                print(f"run {run + 1}/{args.runs} {name}: {outcome}", file=sys.stderr)
    report(list(measured.values()), args)
    return 0


def report(systems: list[System], args: argparse.Namespace) -> None:
    rows = [{"system": s.name,
             "lost": sum(o.sent - o.answered for o in s.runs),
             "sent": sum(o.sent for o in s.runs),
             "send_retries": sum(o.send_retries for o in s.runs),
             "median_resumed_s": round(statistics.median(o.resumed_s for o in s.runs), 2),
             "median_gap_s": round(statistics.median(o.gap_s for o in s.runs), 2),
             "resumed_s": [round(o.resumed_s, 2) for o in s.runs]} for s in systems]
    resumed = [statistics.median(o.resumed_s for o in s.runs) for s in systems]
    ratio = resumed[1] / resumed[0]
    if args.json:
        print(json.dumps({"rows": rows, "host_vs_plain_resumed": round(ratio, 3)
                          if math.isfinite(ratio) else None,
                          "down_after_ms": args.down_after}, indent=2))
        return
    print(f"Sentinel failover, down-after {args.down_after} ms, one task per {args.interval:g} ms, "
          f"master SIGKILLed {args.kill_at:g} s in; {args.runs} runs")
    print(f"{'system':44} {'lost':>10} {'resumed (median)':>17} {'gap (median)':>13}  runs")
    for r in rows:
        print(f"{r['system']:44} {r['lost']:>4}/{r['sent']:<5} {r['median_resumed_s']:>15.1f} s "
              f"{r['median_gap_s']:>11.1f} s  {r['resumed_s']}")
    for s in systems:
        never = sum(1 for o in s.runs if math.isinf(o.resumed_s))
        if never:
            print(f"{s.name}: never resumed in {never} of {len(s.runs)} runs")
    if math.isfinite(ratio):
        print(f"host ÷ plain celery, time to resume: {ratio:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
