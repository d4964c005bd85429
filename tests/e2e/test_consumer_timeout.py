"""Nothing host does holds a message past RabbitMQ's consumer timeout.

RabbitMQ closes the channel of a consumer that has held a delivery unacknowledged for longer
than ``consumer_timeout`` (checked about once a minute); Celery then logs "Unrecoverable error:
PreconditionFailed", its late acknowledgements fail, the worker exits and what it held runs
again. On a node of this test's own with a 10 s timeout, a task due in 80 s (which stock Celery
holds, unacknowledged, until it is due) and a worker held out of rotation for as long both
leave every channel open.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_config.contract import envelope
from broker_config.settings import Settings
from harness.processes import WorkerProcess, node_name
from harness.rabbitmq_server import RabbitServer
from harness.redis_server import RedisServer
from healthcheck.actuator import control_reply
from tests.support.events import EventTap
from tests.support.handbacks import handed_back
from tests.support.polling import consumed, wait_until
from workers.app import create_app

TIMEOUT_S = 10
DUE_IN_S = 80


@pytest.fixture(scope="module")
def strict_rabbit() -> Iterator[RabbitServer]:
    """A private node whose consumer timeout is 10 s instead of 30 minutes."""
    server = RabbitServer(consumer_timeout_ms=TIMEOUT_S * 1000).start()
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.background
@pytest.mark.timeout(240)
def test_a_late_task_and_a_long_quarantine_keep_every_channel(
        strict_rabbit: RabbitServer, redis_server: RedisServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
    env.update(HOST_BROKER_URL=strict_rabbit.url, HOST_STORE_URL=redis_server.url,
               HOST_RESULT_BACKEND=redis_server.url, HOST_LOG_FORMAT="json",
               HOST_BROKER_CONSUMER_TIMEOUT=str(TIMEOUT_S), HOST_TASK_TIME_LIMIT="5",
               HOST_TASK_SOFT_TIME_LIMIT="4", HOST_WEAR_INTERVAL="0.5",
               HOST_TASK_EVENTS="true")  # the test watches task events
    app = create_app(Settings.from_env(env))
    serving = WorkerProcess(node_name("ct1"), env, log_path=tmp_path / "ct1.log")
    held = WorkerProcess(node_name("ct2"), env, log_path=tmp_path / "ct2.log")
    workers = (serving, held)
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready(app, timeout=60)
        pids = {w.name: w.pid for w in workers}
        with EventTap(app) as tap:
            # Given a task due in 80 s, eight times the hold horizon (half the timeout)
            late = app.send_task("host.analyse", args=[envelope("ct:late", "worth the wait")],
                                 countdown=DUE_IN_S)
            sent_at = time.time()
            # and a worker taken out of rotation for all that time, with work queued behind it
            assert control_reply(app, "host_drain", held.name, {"reason": "held"}) is not None
            others = [app.send_task("host.analyse", args=[envelope(f"ct:{i}", "now")])
                      for i in range(20)]
            assert {r.get(timeout=30)["worker"] for r in others} == {serving.name}
            # When it comes due, it runs once, on time, and nobody lost a channel on the way
            record = late.get(timeout=DUE_IN_S + 60)
            assert record["status"] == "analysed"
            assert time.time() - sent_at >= DUE_IN_S - 1
            time.sleep(1.0)
            runs = Counter(e["uuid"] for e in tap.of("task-succeeded"))
        assert runs[late.id] == 1
        assert all(runs[r.id] == 1 for r in others)
        for w in workers:
            assert w.alive() and w.pid == pids[w.name], f"{w.name} restarted"
            text = w.log_path.read_text(errors="replace") if w.log_path else ""
            assert "PreconditionFailed" not in text and "Unrecoverable" not in text, w.name
        assert consumed(app, held.name) == [f"host.verify.{held.name}"]
        # The late task was handed back about every 5 s while it waited: never held longer
        backs = handed_back(w.log_path for w in workers)[late.id]
        print(f"consumer timeout: the task due in {DUE_IN_S} s was handed back {backs} times")
        assert DUE_IN_S / (TIMEOUT_S / 2) - 3 <= backs <= DUE_IN_S / (TIMEOUT_S / 2) + 1
        wait_until(lambda: all(w.alive() for w in workers), 1, "workers alive")
    finally:
        for w in workers:
            w.stop()
