"""Structured logs: every transition, drain, probe failure and refused command is one JSON event
with its reason and context, as the real checker and workers write them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from broker_config.app import HostCelery
from healthcheck.actuator import control_reply
from healthcheck.store import RedisHealthStore
from tests.conftest import CheckerFactory, WorkerFactory
from tests.support.cli import celery
from tests.support.polling import wait_until

SECRET = "log-test-secret"
ENV = {"HOST_WEAR_INTERVAL": "0.25", "HOST_CONTROL_SECRET": SECRET}
QUICK_PROBES = "[probes]\nevery_s = 0.5\n"


def events(path: Path) -> list[dict[str, Any]]:
    """The JSON events of a process's log (Celery's own banner lines are not JSON)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def named(path: Path, event: str) -> list[dict[str, Any]]:
    return [e for e in events(path) if e.get("event") == event]


class TestLogFields:
    def test_transitions_drains_probe_failures_and_refusals(
            self, app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        store = RedisHealthStore(redis_client)
        bad, other = start_worker("lg1", env=ENV), start_worker("lg2", env=ENV)
        policy = tmp_path / "probes.toml"
        policy.write_text(QUICK_PROBES)
        checker = start_checker("--tick", "0.1", "--policy", str(policy),
                                env={"HOST_CONTROL_SECRET": SECRET})
        env = {**host_env, "HOST_CONTROL_SECRET": SECRET}
        assert celery("fleet", "inject", bad.name, "wrong_answers=1", env=env).returncode == 0
        wait_until(lambda: (w := store.get(bad.name)) and w.state.value == "QUARANTINED", 30,
                   "quarantine")
        assert control_reply(app, "host_drain", other.name, {"reason": "unsigned"}) == {
            "error": "refused: unsigned"}
        log = checker.log_path
        wait_until(lambda: named(log, "drain_confirmed"), 10, "drain logged")

        for e in events(log) + events(bad.log_path) + events(other.log_path):  # type: ignore[arg-type]
            assert {"event", "level", "logger", "timestamp"} <= set(e), e

        moves = [e for e in named(log, "worker_transition") if e["worker"] == bad.name]
        assert moves and all(e["reason"] and e["from_state"] and e["to_state"] and e["cause"]
                             for e in moves)
        assert moves[-1]["to_state"] == "QUARANTINED" and "wrong probe answer" in moves[-1]["reason"]

        [drain] = [e for e in named(log, "drain_confirmed") if e["worker"] == bad.name]
        assert drain["reason"] and isinstance(drain["confirm_s"], float)

        [wrong, *_] = named(log, "probe_wrong")
        assert wrong["worker"] == bad.name and wrong["detail"]
        assert wrong["task_id"] and wrong["queue"] == f"host.verify.{bad.name}"

        drained = named(bad.log_path, "worker_drained")  # type: ignore[arg-type]
        assert drained and drained[0]["worker"] == bad.name and drained[0]["reason"]

        [refused] = named(other.log_path, "control_command_refused")  # type: ignore[arg-type]
        assert (refused["worker"], refused["command"], refused["reason"]) == (
            other.name, "host_drain", "unsigned")
