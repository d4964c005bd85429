"""What wear reporting costs: an idle host worker against an idle plain Celery worker.

Each run starts one worker (``-c 1``), lets it settle, then measures the CPU time its whole
process tree uses over ``--seconds``; host reports wear every second, plain Celery only sends
its heartbeats. The difference is the reporter's cost, as a share of one core. The reporter's
own per-sample CPU time (the ``cost_s`` field of its events) is reported too.

    python bench/wear_overhead.py [--runs 5] [--seconds 20] [--json]
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

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.plain_app import make_app  # noqa: E402
from broker_config.settings import Settings  # noqa: E402
from harness.processes import WorkerProcess, node_name  # noqa: E402
from harness.redis_server import RedisServer  # noqa: E402
from workers.app import create_app  # noqa: E402


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its children."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def measure(worker: WorkerProcess, app: object, seconds: float) -> float:
    worker.start()
    worker.wait_ready(app, timeout=60)  # type: ignore[arg-type]
    time.sleep(3)  # settle: imports and pool start are not the steady state
    assert worker.pid is not None
    before = tree_cpu(worker.pid)
    time.sleep(seconds)
    used = tree_cpu(worker.pid) - before
    worker.stop()
    return used / seconds


def sample_costs(app: object, seconds: float) -> list[float]:
    from harness.event_tap import EventTap

    with EventTap(app) as tap:  # type: ignore[arg-type]
        time.sleep(seconds)
        return [e["cost_s"] for e in tap.of("worker-wear") if e.get("cost_s")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = RedisServer().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOST_", "PLAIN_"))}
    env.update(PYTHONPATH=str(REPO), HOST_BROKER_URL=server.url, PLAIN_BROKER_URL=server.url,
               PLAIN_PROFILE="reliable")
    host_app, plain_app = create_app(Settings(broker_url=server.url)), make_app("reliable", server.url)
    host_share: list[float] = []
    plain_share: list[float] = []
    costs: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as logs:
            for run in range(args.runs):
                plain = WorkerProcess(node_name("plain"), env, log_path=Path(logs) / "p.log",
                                      app="bench.plain_app", loglevel="WARNING")
                plain_share.append(measure(plain, plain_app, args.seconds))
                host = WorkerProcess(node_name("host"), env, log_path=Path(logs) / "h.log",
                                     loglevel="WARNING")
                host.start()
                host.wait_ready(host_app, timeout=60)
                costs += sample_costs(host_app, 5)
                host.stop()
                host_share.append(measure(WorkerProcess(node_name("host"), env,
                                                        log_path=Path(logs) / "h.log",
                                                        loglevel="WARNING"),
                                          host_app, args.seconds))
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        server.stop()
    result = {
        "plain_idle_core_share": statistics.median(plain_share),
        "host_idle_core_share": statistics.median(host_share),
        "reporter_core_share": statistics.median(host_share) - statistics.median(plain_share),
        "sample_cost_s_median": statistics.median(costs) if costs else None,
        "sample_cost_s_p95": sorted(costs)[int(0.95 * (len(costs) - 1))] if costs else None,
        "runs": args.runs, "seconds": args.seconds,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"idle worker CPU, median of {args.runs} runs of {args.seconds:g}s (share of one core):")
        print(f"  plain celery          {result['plain_idle_core_share']:.4%}")
        print(f"  host (wear every 1 s) {result['host_idle_core_share']:.4%}")
        print(f"  difference            {result['reporter_core_share']:.4%}")
        if costs:
            print(f"  reporter CPU per sample: median {result['sample_cost_s_median'] * 1000:.2f} ms, "
                  f"p95 {result['sample_cost_s_p95'] * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
