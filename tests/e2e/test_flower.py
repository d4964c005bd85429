"""A real Flower 2.2 beside a host fleet: it shows host's queues, and its buttons cannot put an
out-of-rotation worker back on a work queue. No checker runs."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker_config.app import HostCelery
from broker_config.contract import envelope
from harness.processes import terminate
from harness.redis_server import free_port
from healthcheck.actuator import control_reply
from tests.conftest import WorkerFactory
from tests.support.brokers import on_both_brokers
from tests.support.cli import REPO
from tests.support.polling import consumed, wait_until


@pytest.fixture
def host_env(host_env: dict[str, str]) -> dict[str, str]:
    """Workers here send Celery's task events (HOST_TASK_EVENTS): the tests watch them."""
    return {**host_env, "HOST_TASK_EVENTS": "true"}


class Flower:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, path: str, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, OSError):
            return 0, ""


@pytest.fixture
def flower(host_env: dict[str, str], tmp_path: Path) -> Iterator[Flower]:
    port = free_port()
    log = (tmp_path / "flower.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "flower",
                             f"--port={port}", "--address=127.0.0.1"], cwd=REPO,
                            env={**host_env, "FLOWER_UNAUTHENTICATED_API": "true"},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = Flower(port)
    try:
        wait_until(lambda: client.request("/healthcheck")[0] == 200, 30, "Flower to serve")
        yield client
    finally:
        terminate(proc)


def lengths(flower: Flower) -> dict[str, Any]:
    status, body = flower.request("/api/queues/length")
    assert status == 200, body
    return {q["name"]: q["messages"] for q in json.loads(body)["active_queues"]}


class TestFlowerBesideHost:
    def test_broker_page_and_queue_lengths_show_hosts_queues(
            self, app: HostCelery, start_worker: WorkerFactory, flower: Flower) -> None:
        """Flower recognises host's broker as Redis: its Broker page and queue lengths work."""
        worker = start_worker("fw1")
        assert control_reply(app, "host_drain", worker.name, {"reason": "test"}) is not None
        for i in range(5):
            app.send_task("host.analyse", args=[envelope(f"fw:{i}", "waiting")])
        found = wait_until(lambda: (q := lengths(flower)) and "tweets" in q and q, 30,
                           "Flower to list host's queues")
        assert found["tweets"] == 5
        status, page = flower.request("/broker")
        assert status == 200 and "tweets" in page

    @on_both_brokers
    def test_flowers_add_consumer_cannot_resubscribe_an_out_of_rotation_worker(
            self, app: HostCelery, start_worker: WorkerFactory, flower: Flower) -> None:
        """Flower's "add consumer" on a drained worker is refused; nothing is handed back."""
        worker = start_worker("fw2")
        assert control_reply(app, "host_drain", worker.name, {"reason": "maintenance"})
        wait_until(lambda: worker.name in flower.request("/api/workers?refresh=1")[1], 30,
                   "Flower to know the worker")
        status, body = flower.request(
            f"/api/worker/queue/add-consumer/{worker.name}?queue=tweets", method="POST")
        assert status != 200 or "refused" in body or "out of rotation" in body, (status, body)
        results = [app.send_task("host.analyse", args=[envelope(f"fa:{i}", "x")])
                   for i in range(10)]
        assert consumed(app, worker.name) == [f"host.verify.{worker.name}"]
        assert all(r.state == "PENDING" for r in results)  # they wait for a healthy worker
        healthy = start_worker("fw3")
        assert {r.get(timeout=30)["worker"] for r in results} == {healthy.name}
