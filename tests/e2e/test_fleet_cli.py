"""`celery -A host fleet ...` as an operator uses it, against real workers and the real checker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from broker_config.app import HostCelery
from harness.redis_server import free_port
from healthcheck.store import RedisHealthStore
from tests.conftest import CheckerFactory, WorkerFactory
from tests.support.brokers import on_both_brokers
from tests.support.cli import celery
from tests.support.polling import consumed, wait_until

FAST = {"HOST_WEAR_INTERVAL": "0.25"}



def fleet_json(env: dict[str, str]) -> dict[str, Any]:
    proc = celery("fleet", "status", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data



class TestFleetCommands:
    @on_both_brokers
    def test_status_drain_restore_history(self, app: HostCelery, start_worker: WorkerFactory,
                                          start_checker: CheckerFactory,
                                          host_env: dict[str, str],
                                          redis_client: redis.Redis) -> None:
        """An operator's maintenance cycle: status, drain --wait, restore, history."""
        store = RedisHealthStore(redis_client)
        w1 = start_worker("op1", env=FAST)
        w2 = start_worker("op2", env=FAST, queues=("tweets", "default"))
        start_checker("--tick", "0.1")
        status = wait_until(lambda: (lambda s: s if len(s["workers"]) == 2 and all(
            w["wear"] for w in s["workers"]) else None)(fleet_json(host_env)), 20, "two workers")
        rows = {r["worker"]: r for r in status["workers"]}
        assert rows[w1.name]["state"] == "HEALTHY"
        assert rows[w2.name]["consuming"] == ["default", "tweets"]
        assert status["healthy_consumers"] == {"tweets": 2, "default": 2, "bulk": 1}
        # The table form shows the same workers and the footer
        table = celery("fleet", "status", env=host_env)
        assert w1.name in table.stdout and "healthy consumers" in table.stdout
        # Draining w1 would leave bulk with no healthy consumer: --yes is required
        proc = celery("fleet", "drain", w1.name, "--reason", "fan swap", env=host_env)
        assert proc.returncode == 6 and "bulk" in proc.stderr
        proc = celery("fleet", "drain", w1.name, "--reason", "fan swap", "--yes", "--wait",
                      "--timeout", "30", env=host_env)
        assert proc.returncode == 0, proc.stderr
        assert "holds no work" in proc.stdout
        assert store.get(w1.name).state.value == "MAINTENANCE"  # type: ignore[union-attr]
        assert consumed(app, w1.name) == [f"host.verify.{w1.name}"]
        # The checker leaves MAINTENANCE alone
        time.sleep(2)
        assert store.get(w1.name).state.value == "MAINTENANCE"  # type: ignore[union-attr]
        # restore: through probation, consuming again
        proc = celery("fleet", "restore", w1.name, "--json", env=host_env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["state"] == "PROBATION"
        wait_until(lambda: "tweets" in consumed(app, w1.name), 10, "w1 consuming again")
        # quarantine by hand, then history has all of it
        proc = celery("fleet", "quarantine", w2.name, "--reason", "bad disk", env=host_env)
        assert proc.returncode == 0, proc.stderr
        proc = celery("fleet", "history", w1.name, "--json", env=host_env)
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        moves = [(r["from"], r["to"]) for r in records if r["kind"] == "transition"]
        assert moves == [("HEALTHY", "MAINTENANCE"), ("MAINTENANCE", "PROBATION")]
        assert any(r["kind"] == "drain_confirmed" for r in records)
        assert records[1 if records[0]["kind"] == "joined" else 0]["reason"] == "operator: fan swap"
        whole = celery("fleet", "history", env=host_env)
        assert "bad disk" in whole.stdout

    def test_clear_errors_and_exit_codes(self, start_worker: WorkerFactory,
                                         start_checker: CheckerFactory,
                                         host_env: dict[str, str]) -> None:
        """Unknown worker 4, stopped checker 5, unreachable broker 3: one line each."""
        worker = start_worker("op3", env=FAST)
        checker = start_checker("--tick", "0.1")
        wait_until(lambda: len(fleet_json(host_env)["workers"]) == 1, 20, "the worker known")
        proc = celery("fleet", "drain", "ghost@nowhere", "--yes", env=host_env)
        assert proc.returncode == 4 and "unknown worker" in proc.stderr
        checker.stop()
        proc = celery("fleet", "drain", worker.name, "--yes", env=host_env)
        assert proc.returncode == 5 and "healthcheck" in proc.stderr
        env = {**host_env, "HOST_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
        proc = celery("fleet", "status", env=env)
        assert proc.returncode == 3 and "unreachable" in proc.stderr
        for p in (proc,):
            assert "Traceback" not in p.stderr

    def test_status_reads_the_store_while_the_checker_is_down(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], tmp_path: Path) -> None:
        """`fleet status` needs only the store: it still answers when the checker is gone."""
        worker = start_worker("op4", env=FAST)
        checker = start_checker("--tick", "0.1")
        wait_until(lambda: len(fleet_json(host_env)["workers"]) == 1, 20, "the worker known")
        checker.stop()
        assert fleet_json(host_env)["workers"][0]["worker"] == worker.name

    @pytest.mark.background  # waits out a drain's --timeout
    def test_drain_wait_times_out_while_work_is_in_flight(
            self, app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str]) -> None:
        """--wait with a task still running past --timeout: exit 1, and it says so."""
        from broker_config.contract import envelope

        # op5 alone consumes tweets: the slow task is its work (a probe would not be: a drain
        # waits for work, not for the checker's probes)
        worker = start_worker("op5", queues=("tweets",), concurrency=2,  # (a probe may run too)
                              env={**FAST, "HOST_WEAR_INJECT": "slow=20"})
        start_worker("op6", queues=("default",), env=FAST)
        start_checker("--tick", "0.1")
        wait_until(lambda: len(fleet_json(host_env)["workers"]) == 2, 20, "both workers known")
        result = app.send_task("host.analyse", args=[envelope("w:1", "slow one")], queue="tweets")
        time.sleep(1)  # it is running now, for 20 s: past the command's start and its 2 s
        # wait, even where starting a command takes 5-8 s (a slow machine under the suite)
        proc = celery("fleet", "drain", worker.name, "--yes", "--wait", "--timeout", "2",
                      env=host_env)
        assert proc.returncode == 1, proc.stderr
        assert "in flight after 2s" in proc.stderr
        assert result.get(timeout=40)["worker"] == worker.name  # the task itself finished
