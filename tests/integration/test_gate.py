"""The health gate and the drain/admit commands in a real worker."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from broker_config.app import HostCelery
from broker_config.contract import envelope
from healthcheck.actuator import control_reply
from tests.conftest import WorkerFactory
from tests.support.brokers import consumed_in_rotation, on_every_queue_type
from tests.support.cli import celery
from tests.support.events import EventTap
from tests.support.polling import consumed


@pytest.fixture
def host_env(host_env: dict[str, str]) -> dict[str, str]:
    """Workers here send Celery's task events (HOST_TASK_EVENTS): the tests watch them."""
    return {**host_env, "HOST_TASK_EVENTS": "true"}


@on_every_queue_type
class TestDrainCommand:
    def test_drain_replies_after_it_acted_and_admit_undoes_it(self, app: HostCelery,
                                                              start_worker: WorkerFactory,
                                                              broker: str) -> None:
        """host_drain's reply already shows no work queue consumed; host_admit restores them."""
        worker = start_worker("gt1")
        reply = control_reply(app, "host_drain", worker.name, {"reason": "test"})
        assert reply is not None
        assert (reply["gate"], reply["consuming"]) == ("closed", [])
        assert consumed(app, worker.name) == [f"host.verify.{worker.name}"]
        reply = control_reply(app, "host_admit", worker.name, {"reason": "test"})
        assert reply is not None
        assert (reply["gate"], reply["consuming"]) == ("open", consumed_in_rotation(broker))
        assert consumed(app, worker.name) == sorted(
            [*consumed_in_rotation(broker), f"host.verify.{worker.name}"])

    def test_a_verdict_the_worker_never_heard_of_hands_back_once_and_stops(
            self, app: HostCelery, start_worker: WorkerFactory, redis_client: Any) -> None:
        """The checker's gate key written, its drain never sent (the checker died): the worker
        hands back what it had reserved, stops consuming on its own, and a healthy one runs it."""
        from broker_config import keys

        gated = start_worker("gt2", env={"HOST_WEAR_INTERVAL": "0.3"}, concurrency=2)
        redis_client.set(keys.gate(gated.name), "test verdict")
        with EventTap(app) as tap:
            results = [app.send_task("host.analyse", args=[envelope(f"g:{i}", f"tweet {i} ok")])
                       for i in range(20)]
            tap.wait_for("task-rejected", hostname=gated.name, timeout=20)
            report = tap.wait_for("worker-wear", lambda e: e["gate"] == "closed",
                                  hostname=gated.name)
            healthy = start_worker("gt3")
            records = [r.get(timeout=60) for r in results]
            time.sleep(1.0)
            handed_back = Counter(e["uuid"] for e in tap.of("task-rejected", hostname=gated.name))
            rejected = sum(handed_back.values())
        assert {r["worker"] for r in records} == {healthy.name}
        assert report["consuming"] == []
        assert consumed(app, gated.name) == [f"host.verify.{gated.name}"]
        # handed back at most what two processes had reserved, not in a loop
        print(f"gate: {rejected} message(s) handed back by a worker held out by the store gate")
        assert 1 <= rejected <= 4, rejected
        assert max(handed_back.values()) == 1, handed_back  # each message at most once

    def test_verify_queue_is_served_while_gated(self, app: HostCelery,
                                                start_worker: WorkerFactory) -> None:
        """Probes still run on a drained worker: the verify queue is never gated."""
        from broker_config.queues import verify_queue

        worker = start_worker("gt4")
        assert control_reply(app, "host_drain", worker.name, {"reason": "test"}) is not None
        queue: object = verify_queue(worker.name)
        record = app.send_task("host.analyse", args=[envelope("p:1", "probe text, nice")],
                               queue=queue).get(timeout=20)  # type: ignore[arg-type]
        assert record["worker"] == worker.name


class TestSelfProtection:
    def test_hard_memory_limit_closes_the_gate_without_a_checker(self, app: HostCelery,
                                                                 start_worker: WorkerFactory,
                                                                 host_env: dict[str, str]) -> None:
        """memory at 99%: the worker stops consuming on its own and says why in its report."""
        worker = start_worker("sp1", env={"HOST_WEAR_INTERVAL": "0.3"})
        with EventTap(app) as tap:
            assert celery("fleet", "inject", worker.name, "memory=99", env=host_env).returncode == 0
            report = tap.wait_for("worker-wear", lambda e: e.get("self_protected") is not None,
                                  hostname=worker.name)
        assert report["gate"] == "closed"
        assert report["consuming"] == []
        assert "memory_percent" in report["self_protected"]
        assert consumed(app, worker.name) == [f"host.verify.{worker.name}"]
