"""A checker that stops hearing the fleet makes nobody OFFLINE for it, and hears it again.

Two ways a subscription dies: Redis kills it (CLIENT KILL: the checker gets an error at once),
and a cut that drops every packet while Redis gives the connection up (the checker, which
only ever receives on it, never learns; before it watched for silence it stayed deaf and
marked the whole fleet OFFLINE while the fleet worked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from broker_config.settings import Settings
from harness.processes import WorkerProcess, node_name, terminate
from harness.redis_server import RedisServer
from healthcheck.audit import Kind, parse_all
from healthcheck.store import RedisHealthStore
from tests.conftest import CheckerFactory, WorkerFactory
from tests.support.cli import REPO
from tests.support.netns import Link
from tests.support.polling import wait_until
from workers.app import create_app

CUT_S = 20.0


def log_events(path: Path) -> list[dict[str, object]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def went_offline(store: RedisHealthStore) -> list[str]:
    return [f"{r.worker} at {r.at}" for r in parse_all(store.history(limit=10_000))
            if r.kind is Kind.TRANSITION and r.to_state == "OFFLINE"]


def subscriptions_of(client: redis.Redis, pid: int) -> list[int]:
    """Redis client ids of the pub/sub connections a process holds."""
    ports = {c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.raddr}
    return [int(c["id"]) for c in client.client_list()
            if int(str(c["addr"]).rsplit(":", 1)[1]) in ports and int(c.get("psub", 0)) > 0]


class TestSubscriptionKilled:
    def test_a_killed_subscription_is_taken_again_and_nobody_goes_offline(
            self, host_env: dict[str, str], start_worker: WorkerFactory,
            start_checker: CheckerFactory, redis_client: redis.Redis) -> None:
        store = RedisHealthStore(redis_client)
        workers = [start_worker(f"ik{i}") for i in range(2)]
        checker = start_checker(env={"HOST_LOG_FORMAT": "json"})
        wait_until(lambda: all((w := store.get(x.name)) and w.state.value == "HEALTHY"
                               for x in workers), 30, "both workers HEALTHY")
        for _ in range(3):
            [killed] = wait_until(lambda: subscriptions_of(redis_client, checker.proc.pid), 10,
                                  "the checker's subscription")
            redis_client.client_kill_filter(_id=killed)
            wait_until(lambda gone=killed: (ids := subscriptions_of(redis_client, checker.proc.pid))  # type: ignore[misc]
                       and gone not in ids, 10, "a new subscription")
            time.sleep(2)
        status, body = checker.get("/metrics")
        assert status == 200 and "host_checker_subscribed 1.0" in body
        assert checker.get("/readyz")[0] == 200
        reconnects = [e for e in log_events(checker.log_path)
                      if e.get("event") == "event_receiver_reconnecting"]
        assert len(reconnects) >= 3
        assert went_offline(store) == []


@pytest.mark.slow
@pytest.mark.background
@pytest.mark.skipif(Link.unavailable() is not None, reason=str(Link.unavailable()))
class TestPacketDroppingCut:
    @pytest.fixture
    def link(self) -> Iterator[Link]:
        net = Link().create()
        yield net
        net.close()

    @pytest.fixture
    def server(self, link: Link) -> Iterator[RedisServer]:
        redis_server = RedisServer(bind=("127.0.0.1", link.host_ip)).start()
        yield redis_server
        redis_server.stop()

    def test_a_cut_makes_nobody_offline_and_the_checker_hears_again(
            self, link: Link, server: RedisServer, tmp_path: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
        here = {**base, "HOST_BROKER_URL": server.url, "HOST_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1"}
        there = {**here, "HOST_BROKER_URL": f"redis://{link.host_ip}:{server.port}/0"}
        client = redis.Redis.from_url(server.url)
        store = RedisHealthStore(client)
        app = create_app(Settings(broker_url=server.url))
        workers = [WorkerProcess(node_name(f"cut{i}"), here, log_path=tmp_path / f"w{i}.log")
                   for i in range(3)]
        log = tmp_path / "checker.log"
        checker = None
        try:
            for w in workers:
                w.start().wait_ready(app)
            checker = subprocess.Popen(
                [*link.prefix, sys.executable, "-m", "celery", "-A", "host", "healthcheck",
                 "--metrics-port", "0"], env=there, cwd=REPO, stdout=log.open("wb"),
                stderr=subprocess.STDOUT, start_new_session=True)
            wait_until(lambda: all((h := store.get(w.name)) and h.state.value == "HEALTHY"
                                   for w in workers), 60, "three workers HEALTHY")
            link.cut()
            time.sleep(CUT_S / 2)
            # Redis gives the checker's connections up (as its timeout or keepalive would):
            # the checker, cut off, hears nothing of it.
            for c in client.client_list():
                if str(c.get("addr", "")).startswith(link.ns_ip + ":"):
                    client.client_kill_filter(_id=c["id"])
            time.sleep(CUT_S / 2)
            link.mend()
            cut_over = time.monotonic()
            wait_until(lambda: any(e.get("event") == "intake_restored"
                                   for e in log_events(log)), 45, "the checker to hear again")
            restored_in = time.monotonic() - cut_over
            time.sleep(10)  # longer than offline_after_s: silence now would be judged
            assert checker.poll() is None
        finally:
            link.mend()
            if checker is not None:
                terminate(checker)
            for w in workers:
                w.stop()
        assert went_offline(store) == []
        assert all((h := store.get(w.name)) and h.state.value == "HEALTHY" for w in workers)
        events = [e.get("event") for e in log_events(log)]
        assert "intake_untrusted" in events and "event_subscription_renewed" in events
        print(f"intake after the cut: {{'restored_in_s': {restored_in:.1f}}}")
