"""The data plane never waits on host's store: with the store on a Redis of its own, that Redis
stopped (SIGSTOP: a hung or overloaded server, a path that drops packets) while a stream of
real tweets flows, the workers keep analysing at close to their normal rate; nothing is lost,
and a worker the checker had quarantined before the stall still starts nothing.

The rate figures here are loose (the machine is shared); bench/store_stall.py measures them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker_config.app import HostCelery
from cli.redis_server import RedisServer
from healthcheck.store import RedisHealthStore
from tests.conftest import GROUND_TRUTH, CheckerFactory, WorkerFactory
from tests.support.cli import REPO, celery, read_jsonl
from tests.support.polling import wait_until

STALL_S = 8.0


@pytest.fixture
def store_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
def host_env(host_env: dict[str, str], store_server: RedisServer) -> dict[str, str]:
    return {**host_env, "HOST_STORE_URL": store_server.url}


def rate(results: list[dict[str, object]], start: float, end: float) -> float:
    done = [r for r in results if start <= float(r["finished_at"]) < end]  # type: ignore[arg-type]
    return len(done) / (end - start)


@pytest.mark.background
@pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
def test_a_stalled_store_stalls_no_analysis(
        app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
        host_env: dict[str, str], store_server: RedisServer, tmp_path: Path) -> None:
    store = RedisHealthStore(redis.Redis.from_url(store_server.url))
    workers = [start_worker(f"ss{i}", concurrency=1) for i in (1, 2, 3)]
    start_checker("--tick", "0.1")
    held = workers[2].name
    wait_until(lambda: all(store.get(w.name) for w in workers), 20, "all three known")
    assert celery("fleet", "quarantine", held, "--reason", "held through the stall",
                  env=host_env).returncode == 0
    wait_until(lambda: (w := store.get(held)) is not None and w.state.value == "QUARANTINED",
               20, "the quarantine")
    source = tmp_path / "tweets.tsv"
    source.write_bytes(GROUND_TRUTH.read_bytes() * 3)
    out = tmp_path / "results.jsonl"
    ingest = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "ingest",
                               str(source), "--out", str(out), "--timeout", "120"],
                              env=host_env, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=(tmp_path / "ingest.err").open("w"))
    time.sleep(STALL_S)  # the stream at its normal rate
    assert store_server.proc is not None
    stalled_at = time.time()
    os.kill(store_server.proc.pid, signal.SIGSTOP)
    time.sleep(STALL_S)
    os.kill(store_server.proc.pid, signal.SIGCONT)
    resumed_at = time.time()
    assert ingest.wait(300) == 0, (tmp_path / "ingest.err").read_text()[-2000:]
    results = read_jsonl(out)
    assert len(results) == 4200 * 3 and len({r["ref"] for r in results}) == len(results)
    assert all(r["status"] == "analysed" for r in results)
    before = rate(results, stalled_at - STALL_S + 2, stalled_at)
    during = rate(results, stalled_at + 0.5, resumed_at)
    print(f"store stalled {STALL_S:.0f} s: {before:.0f} tweets/s before, {during:.0f} during "
          f"({during / before:.2f})")
    assert during >= 0.5 * before, (before, during)
    # The quarantined worker started nothing, before, during or after
    assert held not in {r["worker"] for r in results}
