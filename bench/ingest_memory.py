"""Peak memory of ``celery -A host ingest`` on a large file, as ``/usr/bin/time -v`` sees it.

Writes a file of N lines (the ground truth repeated, unique ids), starts a private
redis-server and one worker (``-c 2``), runs ``ingest --batch B FILE --out /dev/null`` under
``/usr/bin/time -v``, and samples the ingest process's RSS while it runs, so that growth
shows as a curve and not only as a peak. Prints one line per run and the median.

    python bench/ingest_memory.py [--lines 2000000] [--batch 500] [--runs 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from broker_config.settings import Settings  # noqa: E402
from harness.processes import WorkerProcess, node_name  # noqa: E402
from harness.redis_server import RedisServer  # noqa: E402
from workers.app import create_app  # noqa: E402

GROUND_TRUTH = REPO.parent / "shared" / "data" / "tweets_groundtruth.tsv"


def write_input(path: Path, lines: int) -> None:
    rows = [line.split("\t", 2) for line in GROUND_TRUTH.read_text(encoding="utf-8").splitlines()]
    with path.open("w", encoding="utf-8") as f:
        for i in range(lines):
            row = rows[i % len(rows)]
            f.write(f"{i}\t{row[1]}\t{row[2]}\n")


def sample_rss(pid: int, samples: list[tuple[float, int]], stop: threading.Event) -> None:
    """RSS of the ingest process (the child of /usr/bin/time) every 0.5 s."""
    started = time.monotonic()
    try:
        timer = psutil.Process(pid)
        while not stop.is_set():
            children = timer.children()
            if children:
                samples.append((time.monotonic() - started, children[0].memory_info().rss))
            stop.wait(0.5)
    except psutil.Error:
        return


def run_once(env: dict[str, str], path: Path, batch: int, lines: int) -> dict[str, Any]:
    cmd = ["/usr/bin/time", "-v", str(REPO / ".venv" / "bin" / "celery"), "-A", "host", "ingest",
           "--batch", str(batch), "--out", os.devnull, "--json", str(path)]
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    sampler = threading.Thread(target=sample_rss, args=(proc.pid, samples, stop), daemon=True)
    sampler.start()
    _, err = proc.communicate()
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join()
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    summary: dict[str, Any] = next((json.loads(ln) for ln in err.splitlines() if ln.startswith("{")), {})
    curve = [(round(t, 1), rss // 2**20) for t, rss in samples[:: max(1, len(samples) // 12)]]
    return {"exit": proc.returncode, "peak_rss_mb": int(peak.group(1)) // 1024 if peak else None,
            "rate": round(lines / elapsed), "analysed": summary.get("analysed"), "curve_mb": curve}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = RedisServer().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
    env.update(PYTHONPATH=str(REPO), HOST_BROKER_URL=server.url)
    app = create_app(Settings.from_env(env))
    results = []
    with tempfile.TemporaryDirectory(prefix="host-bench-") as tmp:
        path = Path(tmp) / "input.tsv"
        write_input(path, args.lines)
        worker = WorkerProcess(node_name("membench"), env, concurrency=2,
                               log_path=Path(tmp) / "worker.log", loglevel="WARNING")
        try:
            worker.start()
            worker.wait_ready(app, timeout=60)
            for run in range(args.runs):
                result = run_once(env, path, args.batch, args.lines)
                results.append(result)
                if not args.json:
                    print(f"run {run + 1}: {result}", file=sys.stderr)
        finally:
            worker.stop()
            server.stop()
    peaks = [r["peak_rss_mb"] for r in results if r["peak_rss_mb"] is not None]
    out = {"lines": args.lines, "batch": args.batch, "runs": results,
           "median_peak_rss_mb": statistics.median(peaks) if peaks else None,
           "median_rate": statistics.median(r["rate"] for r in results)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"ingest --batch {args.batch}, {args.lines:,} lines: median peak RSS "
              f"{out['median_peak_rss_mb']} MB, median {out['median_rate']:,} lines/s "
              f"over {len(results)} run(s)")
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
