"""The data plane's rate while host's store is at fault: paused, refusing, failing over.

host's store (worker states, gate keys, the lease) lives on a Redis of its own here, apart from
the broker, as ``HOST_STORE_URL`` allows. Three workers (one process each) and a checker run;
``ingest`` streams the 4,200 real tweets three times over; ``--fault-at`` seconds in, the store
is put through a fault for ``--fault-s`` seconds:

- ``pause``: SIGSTOP (a hung or overloaded Redis, a network path that drops packets);
- ``refuse``: SIGKILL, restarted after the fault (connections refused meanwhile);
- ``failover``: the store is a Sentinel group (down-after 2 s) and its master is SIGKILLed.

Per fault it prints the tweets/s of the seconds before the fault and during it, medians of
``--runs`` runs, and their ratio (the promise: at least 0.9). Plain Celery has no store to lose;
the "before" rate is host's own normal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from broker_config.settings import Settings  # noqa: E402
from harness.processes import WorkerProcess, node_name, terminate, wait_until  # noqa: E402
from harness.redis_server import RedisServer, free_port  # noqa: E402
from harness.store_faults import STORE_FAULTS, FaultyStore  # noqa: E402
from healthcheck.store import RedisHealthStore  # noqa: E402
from workers.app import create_app  # noqa: E402

GROUND_TRUTH = REPO.parent / "shared" / "data" / "tweets_groundtruth.tsv"


def rate(finished: list[float], start: float, end: float) -> float:
    return sum(1 for t in finished if start <= t < end) / (end - start)


def run_once(fault: str, args: argparse.Namespace, logs: Path) -> tuple[float, float]:
    """(tweets/s before the fault, during it)."""
    broker = RedisServer().start()
    store = FaultyStore(fault, durable=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
    env.update(HOST_BROKER_URL=broker.url, HOST_LOG_FORMAT="json", PYTHONUNBUFFERED="1",
               **store.env)
    app = create_app(Settings.from_env(env))
    workers = [WorkerProcess(node_name(f"st{i}"), env, log_path=logs / f"st{i}.log")
               for i in (1, 2, 3)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready(app, timeout=60)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "host", "healthcheck", "--metrics-port",
             str(free_port())], env=env, cwd=REPO, stdout=(logs / "checker.log").open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True))
        health = RedisHealthStore.from_url(Settings.from_env(env).store)
        wait_until(lambda: all(health.get(w.name) for w in workers), 30, "the fleet known")
        source = logs / "tweets.tsv"
        source.write_bytes(GROUND_TRUTH.read_bytes() * 3)
        out = logs / f"results-{fault}.jsonl"
        ingest = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "ingest",
                                   str(source), "--out", str(out), "--timeout", "120"],
                                  env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=(logs / "ingest.err").open("wb"))
        procs.append(ingest)
        time.sleep(args.fault_at)
        began = time.time()
        store.begin()
        time.sleep(args.fault_s)
        store.end()
        ended = time.time()
        if ingest.wait(600) != 0:
            raise RuntimeError((logs / "ingest.err").read_text()[-2000:])
        finished = [float(json.loads(line)["finished_at"]) for line in out.open()]
        if len(finished) != 4200 * 3:
            raise RuntimeError(f"{len(finished)} results for {4200 * 3} tweets")
        return rate(finished, began - args.fault_at + 2, began), rate(finished, began + 0.5, ended)
    finally:
        for proc in procs:
            terminate(proc)
        for w in workers:
            w.stop()
        store.stop()
        broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fault", action="append", choices=STORE_FAULTS, default=[])
    parser.add_argument("--fault-at", type=float, default=8.0)
    parser.add_argument("--fault-s", type=float, default=8.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="host-store-stall-") as logs:
        for fault in args.fault or list(STORE_FAULTS):
            runs = []
            for n in range(args.runs):
                runs.append(run_once(fault, args, Path(logs)))
                print(f"{fault} run {n + 1}/{args.runs}: {runs[-1][0]:.0f} -> "
                      f"{runs[-1][1]:.0f} tweets/s", file=sys.stderr)
            before = statistics.median(r[0] for r in runs)
            during = statistics.median(r[1] for r in runs)
            rows.append({"fault": fault, "before": round(before, 1), "during": round(during, 1),
                         "ratio": round(during / before, 3),
                         "ratios": [round(r[1] / r[0], 3) for r in runs]})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"store fault for {args.fault_s:g} s, 3 workers, 12,600 tweets; medians of {args.runs}")
    print(f"{'fault':10} {'before':>8} {'during':>8} {'ratio':>6}  runs")
    for r in rows:
        print(f"{r['fault']:10} {r['before']:8.1f} {r['during']:8.1f} {r['ratio']:6.2f}  "
              f"{r['ratios']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
