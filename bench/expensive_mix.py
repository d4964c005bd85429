"""What costly inputs do to real traffic: the 4,200 tweets alone, and with 120 costly ones mixed in.

Three workers (one process each) and a checker on a private Redis. Each run ingests the 4,200
ground-truth tweets, alternately alone and with issue 31's costly inputs (10,000 characters of
``not good``, 999 emoji, ``😀 but`` 999 times, ``no`` 3,333 times: 30 of each, evenly spread)
mixed in, and reads from the results how fast the real tweets were analysed (4,200 over the
time from the first task's start to the last real tweet's ``finished_at``). Prints the medians and their
ratio (the promise: the real tweets' rate changes by less than 10 %), and fails if any worker
changed state (every costly input is analysed, none is charged to a worker).

    python bench/expensive_mix.py [--runs 3] [--json]
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
from healthcheck.store import RedisHealthStore  # noqa: E402
from workers.app import create_app  # noqa: E402

GROUND_TRUTH = REPO.parent / "shared" / "data" / "tweets_groundtruth.tsv"
COSTLY = ["not good " * 1111, "😀" * 999, "😀 but " * 999, "no " * 3333]


def sources(logs: Path) -> dict[str, Path]:
    """The real tweets alone, and with 120 costly inputs spread evenly through them."""
    real = GROUND_TRUTH.read_text(encoding="utf-8").splitlines()
    mixed = list(real)
    for k in range(120):
        mixed.insert(35 * k + k, f"c{k}\t0\t{COSTLY[k % len(COSTLY)].strip()}")
    paths = {"alone": logs / "alone.tsv", "mixed": logs / "mixed.tsv"}
    paths["alone"].write_text("\n".join(real) + "\n", encoding="utf-8")
    paths["mixed"].write_text("\n".join(mixed) + "\n", encoding="utf-8")
    return paths


def real_rate(source: Path, out: Path, env: dict[str, str]) -> float:
    """Ingest ``source``; the real tweets analysed per second."""
    began = time.time()
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "host", "ingest", str(source),
                           "--format", "tsv", "--out", str(out), "--timeout", "300"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    records = [json.loads(line) for line in out.open(encoding="utf-8")]
    real = [r for r in records if not str(r.get("id", "")).startswith("c")]
    costly = [r for r in records if str(r.get("id", "")).startswith("c")]
    if len(real) != 4200 or any(r["status"] != "analysed" for r in records):
        raise RuntimeError(f"{len(real)} real results; statuses "
                           f"{sorted({r['status'] for r in records})}")
    if costly and len(costly) != 120:
        raise RuntimeError(f"{len(costly)} costly results for 120")
    first = min(float(r["started_at"]) for r in records)  # ingest's own start-up left out
    return 4200 / (max(float(r["finished_at"]) for r in real) - max(first, began))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"alone": [], "mixed": []}
    with tempfile.TemporaryDirectory(prefix="host-expensive-") as tmp:
        logs = Path(tmp)
        broker = RedisServer().start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
        env.update(HOST_BROKER_URL=broker.url, PYTHONUNBUFFERED="1")
        app = create_app(Settings.from_env(env))
        workers = [WorkerProcess(node_name(f"mx{i}"), env, log_path=logs / f"mx{i}.log")
                   for i in (1, 2, 3)]
        checker = None
        try:
            for w in workers:
                w.start()
            for w in workers:
                w.wait_ready(app, timeout=60)
            checker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "host", "healthcheck", "--metrics-port",
                 str(free_port())], env=env, cwd=REPO, stdout=(logs / "checker.log").open("wb"),
                stderr=subprocess.STDOUT, start_new_session=True)
            health = RedisHealthStore.from_url(Settings.from_env(env).store)
            wait_until(lambda: all(health.get(w.name) for w in workers), 30, "the fleet known")
            paths = sources(logs)
            real_rate(paths["alone"], logs / "warm.jsonl", env)  # warm-up
            for n in range(args.runs):
                for kind in ("alone", "mixed"):
                    rates[kind].append(real_rate(paths[kind], logs / f"{kind}{n}.jsonl", env))
                print(f"run {n + 1}/{args.runs}: alone {rates['alone'][-1]:.0f}, mixed "
                      f"{rates['mixed'][-1]:.0f} real tweets/s", file=sys.stderr)
            history = subprocess.run([sys.executable, "-m", "celery", "-A", "host", "fleet",
                                      "history", "--json"], env=env, cwd=REPO,
                                     capture_output=True, text=True, timeout=60)
            moves = [r for r in map(json.loads, filter(None, history.stdout.splitlines()))
                     if r.get("kind") == "transition"]
        finally:
            if checker is not None:
                terminate(checker)
            for w in workers:
                w.stop()
            broker.stop()
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"runs": args.runs, "real_tweets_per_s": {k: round(v, 1) for k, v in med.items()},
              "ratio": round(med["mixed"] / med["alone"], 3), "state_changes": len(moves)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"4,200 real tweets, 3 workers, medians of {args.runs} runs:")
        print(f"  alone                        {med['alone']:7.1f} real tweets/s")
        print(f"  with 120 costly inputs mixed {med['mixed']:7.1f} real tweets/s")
        print(f"  ratio {result['ratio']:.3f} (promise: at least 0.9); worker state changes: "
              f"{len(moves)}")
    return 0 if not moves else 1


if __name__ == "__main__":
    raise SystemExit(main())
