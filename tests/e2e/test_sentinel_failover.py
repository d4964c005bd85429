"""The whole of host on Redis Sentinel, and the master SIGKILLed mid-stream.

The broker, the result backend and the store are one private Sentinel group (a master, two
replicas, three sentinels; down-after 2 s). Three workers and a checker run on it; the 4,200
real tweets stream in at 200 a second; an operator drains a worker; the master is killed the
moment the worker has applied it, while the checker confirms it. Nothing may be lost, nothing
restarted by hand: every tweet is answered exactly once, the drained worker starts nothing once it has
applied the drain, the checker leads again and the workers consume again on the new master.

The outage (the longest stretch without a finished task) is printed; bench/failover.py
compares it with plain Celery's on the same topology.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
from kombu.exceptions import OperationalError

from broker_config.app import HostCelery
from broker_config.settings import Settings
from harness.processes import WorkerProcess
from harness.sentinel import SentinelGroup
from healthcheck.store import RedisHealthStore
from tests.conftest import GROUND_TRUTH, CheckerFactory, WorkerFactory
from tests.support.cli import REPO, celery, feed, read_jsonl
from tests.support.polling import consumed, wait_until

RATE = 200.0
DOWN_AFTER_MS = 2000

pytestmark = [pytest.mark.background,
              pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")]


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    group = SentinelGroup(down_after_ms=DOWN_AFTER_MS).start()
    yield group
    group.stop()


@pytest.fixture
def host_env(host_env: dict[str, str], group: SentinelGroup) -> dict[str, str]:
    return {**host_env, "HOST_BROKER_URL": group.url, "HOST_RESULT_BACKEND": group.url,
            "HOST_STORE_URL": group.url, "HOST_SENTINEL_MASTER": group.master_name}


def logged(worker: WorkerProcess, event: str) -> list[dict[str, object]]:
    """The worker's JSON log lines of one event."""
    assert worker.log_path is not None
    out = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if f'"event": "{event}"' in line:
            out.append(json.loads(line[line.index("{"):]))
    return out


def queues_of(app: HostCelery, worker: str) -> list[str] | None:
    """The work queues ``worker`` consumes (None while this process reconnects)."""
    try:
        return [q for q in consumed(app, worker) if not q.startswith("host.")]
    except (OSError, redis.RedisError, OperationalError):
        return None


def seconds(stamp: object) -> float:
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def succeeded(worker: WorkerProcess) -> Counter[str]:
    """Task ids the worker's log says succeeded, counted (a second run is a double)."""
    assert worker.log_path is not None
    text = worker.log_path.read_text(errors="replace")
    return Counter(part.split("]", 1)[0] for part in text.split("Task host.analyse[")[1:]
                   if "succeeded" in part.split("\n", 1)[0])


def outage(finished: list[float], after: float) -> tuple[float, float]:
    """(the longest stretch without a finished task that ends after ``after``, when it ended)."""
    times = sorted(finished)
    gaps = [(b - a, b) for a, b in itertools.pairwise(times) if b > after]
    return max(gaps) if gaps else (0.0, after)


def test_the_master_dies_mid_stream_and_mid_drain_and_nothing_is_lost(
        app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
        host_env: dict[str, str], group: SentinelGroup, tmp_path: Path) -> None:
    store = RedisHealthStore.from_url(Settings.from_env(host_env).store)
    workers = [start_worker(f"sf{i}", concurrency=1) for i in (1, 2, 3)]
    drained = workers[2]
    checker = start_checker("--tick", "0.1")
    wait_until(lambda: all(store.get(w.name) for w in workers), 20, "all three known")
    out = tmp_path / "results.jsonl"
    ingest = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "host", "ingest", "-", "--format", "tsv",
         "--out", str(out), "--json", "--timeout", "120"], env=host_env, cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "ingest.err").open("w"))
    lines = GROUND_TRUTH.read_text(encoding="utf-8").splitlines()
    feeder = threading.Thread(target=feed, args=(ingest, lines, RATE), daemon=True)
    feeder.start()
    time.sleep(5)  # the stream at its rate, on all three
    # An operator drains sf3; the master dies the moment sf3 has applied it, while the
    # checker confirms it, stores its state and writes its audit record
    drain = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "fleet", "drain",
                              drained.name, "--reason", "maintenance", "--yes", "--json"],
                             env=host_env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_until(lambda: logged(drained, "worker_drained"), 30, "sf3 to apply the drain")
    killed_at = time.time()
    old = group.kill_master()
    new = group.wait_failover(old)
    promoted_s = time.time() - killed_at
    _, drain_err = drain.communicate(timeout=120)
    if drain.returncode != 0:  # its answer was lost with the master: it says so; ask again
        print(f"drain across the failover: exit {drain.returncode}: {drain_err.strip()[-300:]}")
        again = celery("fleet", "drain", drained.name, "--reason", "maintenance", "--yes",
                       env=host_env)
        assert again.returncode == 0, again.stderr
    feeder.join(120)
    assert ingest.wait(300) == 0, (tmp_path / "ingest.err").read_text()[-3000:]

    # Every tweet answered, exactly once
    results = read_jsonl(out)
    assert len(results) == len(lines) == 4200
    assert len({r["id"] for r in results}) == 4200
    assert all(r["status"] == "analysed" for r in results)
    runs: Counter[str] = sum((succeeded(w) for w in workers), Counter())
    stream = {str(r["task_id"]) for r in results}
    doubles = sum(1 for t in stream if runs[t] > 1)
    # Nothing started on the drained worker once it had applied the drain
    applied = logged(drained, "worker_drained")
    assert applied, "the drain never reached the worker"
    applied_at = seconds(applied[0]["timestamp"])
    late = [r for r in results if r["worker"] == drained.name
            and float(r["started_at"]) > applied_at]
    assert late == []
    wait_until(lambda: queues_of(app, drained.name) == [], 30, "sf3 out of rotation")
    wait_until(lambda: (w := store.get(drained.name)) is not None
               and w.state.value == "MAINTENANCE", 30, "sf3 in maintenance on the new master")
    # The checker leads again on the new master, and the others consume again on it
    wait_until(lambda: (store.lease("probe", 5) or "probe").split(":", 1)[1] != "probe", 30,
               "a leading checker")
    assert checker.get("/readyz")[0] == 200
    resumed = {str(r["worker"]) for r in results if float(r["finished_at"]) > killed_at + 10}
    assert resumed >= {workers[0].name, workers[1].name}, resumed
    gap, ended = outage([float(r["finished_at"]) for r in results], killed_at)
    print(f"sentinel failover (down-after {DOWN_AFTER_MS} ms) at {RATE:.0f} tweets/s: "
          f"master {old} -> {new} promoted {promoted_s:.1f} s after the kill; longest stretch "
          f"without a finished task {gap:.1f} s, completing again {ended - killed_at:.1f} s "
          f"after the kill; {doubles} of 4200 ran twice; drain applied "
          f"{applied_at - killed_at:+.1f} s from the kill")
