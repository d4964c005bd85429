"""Control commands are signed; Celery's destructive built-ins are off; tasks cannot reach control."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from broker_config.app import HostCelery
from broker_config.signing import sign
from healthcheck.actuator import control_reply
from tests.conftest import WorkerFactory
from tests.integration.test_ingest import hostile_corpus
from tests.support.cli import celery
from tests.support.events import EventTap
from tests.support.polling import consumed

SECRET = {"HOST_CONTROL_SECRET": "integration-secret", "HOST_WEAR_INTERVAL": "0.3"}



class TestSignedCommands:
    def test_only_authentic_commands_run(self, app: HostCelery, start_worker: WorkerFactory,
                                         host_env: dict[str, str]) -> None:
        """Signed with the secret: runs. Unsigned, forged, replayed: refused and counted."""
        worker = start_worker("sc1", env=SECRET)
        env = {**host_env, **SECRET}
        # the right secret works through the command line
        assert celery("fleet", "inject", worker.name, "cpu=50", env=env).returncode == 0
        # a wrong secret is refused, with a clear message and exit code 1
        proc = celery("fleet", "inject", worker.name, "cpu=90",
                      env={**env, "HOST_CONTROL_SECRET": "wrong"})
        assert proc.returncode == 1 and "refused: forged" in proc.stderr
        # unsigned
        reply = control_reply(app, "host_drain", worker.name, {"reason": "no signature"})
        assert reply == {"error": "refused: unsigned"}
        # replayed: the same signed arguments twice
        signed = sign(SECRET["HOST_CONTROL_SECRET"], "host_gate", {}, worker.name, time.time())
        first = app.control.broadcast("host_gate", arguments=signed, destination=[worker.name],
                                      reply=True, timeout=2) or [{}]
        again = app.control.broadcast("host_gate", arguments=signed, destination=[worker.name],
                                      reply=True, timeout=2) or [{}]
        assert first[0][worker.name]["ok"] is True
        assert again[0][worker.name] == {"error": "refused: replayed"}
        assert "tweets" in consumed(app, worker.name)
        with EventTap(app) as tap:
            report = tap.wait_for("worker-wear", lambda e: len(e["control_refused"]) >= 3,
                                  hostname=worker.name)
        assert report["control_refused"] == {"host_inject:forged": 1, "host_drain:unsigned": 1,
                                             "host_gate:replayed": 1}

    def test_production_without_a_secret_refuses_to_start(self, host_env: dict[str, str]) -> None:
        """HOST_ENV=production and no secret: the worker does not start, and says why."""
        proc = celery("worker", "-c", "1", env={**host_env, "HOST_ENV": "production"}, timeout=60)
        assert proc.returncode == 78
        assert "HOST_CONTROL_SECRET" in proc.stderr and "Traceback" not in proc.stderr


class TestDangerousBuiltins:
    def test_celery_shutdown_leaves_every_worker_running(self, app: HostCelery,
                                                         start_worker: WorkerFactory,
                                                         host_env: dict[str, str]) -> None:
        """`celery -A host control shutdown` is refused by every host worker."""
        workers = [start_worker(f"db{i}") for i in (1, 2)]
        proc = celery("control", "shutdown", env=host_env)
        assert "disabled on host workers" in proc.stdout + proc.stderr
        for verb in ("pool_restart", "pool_shrink"):
            celery("control", verb, env=host_env)
        time.sleep(2)
        for w in workers:
            assert w.alive()
            assert app.control.ping(destination=[w.name], timeout=1)

    def test_allowed_when_configured(self, app: HostCelery, start_worker: WorkerFactory,
                                     host_env: dict[str, str]) -> None:
        """With HOST_ALLOW_DANGEROUS_CONTROL, Celery's shutdown works again."""
        worker = start_worker("db3", env={"HOST_ALLOW_DANGEROUS_CONTROL": "1"})
        celery("control", "shutdown", "-d", worker.name, env=host_env)
        deadline = time.monotonic() + 20
        while worker.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not worker.alive()


class TestDataPlaneIsolation:
    @pytest.mark.timeout(240)
    def test_hostile_tasks_and_inputs_cannot_reach_control(
            self, app: HostCelery, start_worker: WorkerFactory, host_env: dict[str, str],
            tmp_path: Path) -> None:
        """Hostile inputs through tweets, and a task broadcasting shutdown and an unsigned drain:
        every worker still runs and consumes its work queues afterwards."""
        extra = {**SECRET}
        workers = [start_worker(f"iso{i}", env=extra) for i in (1, 2)]
        env = {**host_env, **SECRET}
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        for name in hostile_corpus(corpus):
            proc = celery("ingest", str(corpus / name), "--out", str(tmp_path / "o.jsonl"), env=env)
            assert proc.returncode == 0, (name, proc.stderr[-1000:])
        # a task that tries to broadcast a shutdown and an unsigned drain
        from tests.support import hostile_tasks  # noqa: F401 - registers the task name

        hostile = start_worker("iso3", env=extra, extra_args=("-I", "tests.support.hostile_tasks"))
        # (sent to its own queue: the other workers do not know this test-only task)
        from broker_config.queues import verify_queue

        queue: Any = verify_queue(hostile.name)
        outcome = app.send_task("host_test.hostile", queue=queue).get(timeout=30)
        assert any("disabled" in str(r) for r in outcome["shutdown"])
        assert all("refused" in str(r) for r in outcome["drain"])
        time.sleep(1)
        for w in [*workers, hostile]:
            assert w.alive()
            assert "tweets" in consumed(app, w.name), w.name
