"""Queue depths read from a real broker, as the checker exports them (host_queue_messages)."""

from __future__ import annotations

from broker_config.app import HostCelery
from healthcheck.metrics import QueueDepths, broker_depths
from tests.support.brokers import on_every_queue_type


@on_every_queue_type
class TestQueueDepths:
    def test_depths_of_the_work_queues(self, app: HostCelery) -> None:
        read = broker_depths(app)
        assert read() == {"tweets": 0, "default": 0, "bulk": 0}  # never declared: zero
        for i in range(3):
            app.send_task("host.analyse", args=[{"text": f"t{i}"}], queue="tweets")
        app.send_task("host.analyse", args=[{"text": "b"}], queue="bulk")
        assert read() == {"tweets": 3, "default": 0, "bulk": 1}
        assert QueueDepths(read, wait_s=5.0)() == {"tweets": 3, "default": 0, "bulk": 1}
