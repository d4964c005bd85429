"""A worker cut off from Redis for 20 s mid-stream loses nothing: a real network cut (a veth
pair into a network namespace, its link taken down), 2,000 real tweets, five times."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_config.settings import Settings
from harness.processes import WorkerProcess, node_name, terminate
from harness.redis_server import RedisServer
from tests.conftest import GROUND_TRUTH
from tests.support.cli import REPO, feed, read_jsonl
from tests.support.netns import Link
from tests.support.polling import wait_until
from workers.app import create_app

CUT_S = 20.0
TWEETS = 2000
#: A steady stream, slower than the workers: their queue runs empty between messages, so a
#: worker is often waiting at Redis for the next one — the moment a cut can swallow a message.
RATE = 80.0
SETTINGS = {"HOST_WEAR_INTERVAL": "0.5"}

pytestmark = [pytest.mark.slow, pytest.mark.background,
              pytest.mark.skipif(Link.unavailable() is not None,
                                 reason=str(Link.unavailable())),
              pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")]


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    net = Link().create()
    yield net
    net.close()


@pytest.fixture(scope="module")
def server(link: Link) -> Iterator[RedisServer]:
    redis_server = RedisServer(bind=("127.0.0.1", link.host_ip)).start()
    yield redis_server
    redis_server.stop()


def give_up_on(server: RedisServer, address: str) -> int:
    """CLIENT KILL every connection from ``address``; how many there were."""
    import redis

    client = redis.Redis.from_url(server.url)
    killed = 0
    for c in client.client_list():
        if str(c.get("addr", "")).startswith(address + ":"):
            killed += int(client.client_kill_filter(_id=c["id"]))
    return killed


def succeeded(log: Path) -> Counter[str]:
    """Task ids each worker's log says succeeded, counted (a second run is a double)."""
    ids = re.findall(r"Task host\.analyse\[([0-9a-f-]{36})\] succeeded", log.read_text(
        errors="replace"))
    return Counter(ids)


@pytest.mark.parametrize("run", range(5))
def test_a_twenty_second_cut_loses_nothing(run: int, link: Link, server: RedisServer,
                                           tmp_path: Path) -> None:
    import redis

    redis.Redis.from_url(server.url).flushall()
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
    here = {**base, **SETTINGS, "HOST_BROKER_URL": server.url, "HOST_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1"}
    there = {**here, "HOST_BROKER_URL": f"redis://{link.host_ip}:{server.port}/0"}
    cut_off = WorkerProcess(node_name(f"pc{run}"), there, log_path=tmp_path / "cut.log",
                            prefix=link.prefix)
    steady = WorkerProcess(node_name(f"ps{run}"), here, log_path=tmp_path / "steady.log")
    app = create_app(Settings(broker_url=server.url))
    out = tmp_path / "results.jsonl"
    lines = GROUND_TRUTH.read_text(encoding="utf-8").splitlines()[:TWEETS]
    ingest = None
    dropped = 0
    try:
        for w in (cut_off, steady):
            w.start().wait_ready(app)
        ingest = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "host", "ingest", "-", "--format", "tsv",
             "--out", str(out), "--json", "--timeout", "120"], env=here, cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "ingest.log").open("w"))
        feeder = threading.Thread(target=feed, args=(ingest, lines, RATE), daemon=True)
        feeder.start()
        wait_until(lambda: sum(succeeded(cut_off.log_path).values()) >= 20, 60,  # type: ignore[arg-type]
                   "the cut-off worker to be busy")
        link.cut()
        time.sleep(CUT_S / 2)
        # Half-way through, Redis gives up on the cut-off worker's connections (as its
        # `timeout` or TCP keepalive would): whatever it had sent on them is gone for good.
        dropped = give_up_on(server, link.ns_ip)
        time.sleep(CUT_S / 2)
        link.mend()
        feeder.join(120)
        assert ingest.wait(timeout=300) == 0, (tmp_path / "ingest.log").read_text()[-3000:]
    finally:
        link.mend()
        if ingest is not None and ingest.poll() is None:
            terminate(ingest)
        for w in (cut_off, steady):
            w.stop()
    records = read_jsonl(out)
    expected = TWEETS
    refs = Counter(str(r["ref"]) for r in records)
    assert len(refs) == expected and max(refs.values()) == 1
    assert {r["status"] for r in records} == {"analysed"}
    assert tmp_path.joinpath("cut.log").exists() and tmp_path.joinpath("steady.log").exists()
    runs = succeeded(tmp_path / "cut.log") + succeeded(tmp_path / "steady.log")
    doubles = sum(n - 1 for n in runs.values() if n > 1)
    summary = {"run": run, "inputs": expected, "missing": 0, "double_executions": doubles,
               "connections_dropped": dropped,
               "by_cut_off_worker": sum(succeeded(tmp_path / "cut.log").values())}
    print("partition:", json.dumps(summary))
    assert doubles <= 5, summary  # what the cut-off worker held, run again once elsewhere
