"""The checker's commands ride out a broker restart: the first command on a connection the
restarted broker closed fails as ControlUnavailable (a command not carried, which the checker
handles), not as the broker client's own error, and the next one is answered."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_config.settings import Settings
from harness.processes import WorkerProcess, node_name
from harness.redis_server import RedisServer
from healthcheck.actuator import CeleryActuator
from healthcheck.errors import ControlUnavailable
from tests.support.polling import wait_until
from workers.app import create_app


@pytest.fixture
def broker() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True, args=("--appendfsync", "always")).start()
    yield server
    server.stop()


def test_a_command_after_a_broker_restart(broker: RedisServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
    env.update(HOST_BROKER_URL=broker.url, HOST_LOG_FORMAT="json")
    app = create_app(Settings.from_env(env))
    worker = WorkerProcess(node_name("ar"), env, log_path=tmp_path / "worker.log").start()
    try:
        worker.wait_ready(app, timeout=60)
        actuator = CeleryActuator(app, timeout=1.0)
        actuator.warm()
        assert actuator.admit(worker.name, "before").answered
        broker.kill()
        broker.start(timeout=30)
        with pytest.raises(ControlUnavailable):
            actuator.admit(worker.name, "on the closed connection")
        # the worker reconnects on its own; the checker's next command reaches it
        wait_until(lambda: actuator.admit(worker.name, "after").answered, 30,
                   "a command answered after the restart")
    finally:
        worker.stop()
