"""Restarting the broker under load: everything reconnects, nothing queued is lost."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from broker_config.contract import envelope
from broker_config.settings import Settings
from harness.processes import WorkerProcess, node_name
from harness.rabbitmq_server import RabbitServer
from harness.redis_server import RedisServer
from healthcheck.actuator import control_reply
from healthcheck.store import RedisHealthStore
from tests.conftest import GROUND_TRUTH
from tests.support.brokers import on_both_brokers
from tests.support.cli import REPO, read_jsonl, start_celery, wait_first_result
from tests.support.polling import consumed, wait_until
from workers.app import create_app


def answers(app: Any, worker: str) -> bool:
    """Whether the worker answers a ping (the client's own stale connections may fail first)."""
    try:
        return bool(app.control.ping(destination=[worker], timeout=1))
    except Exception:
        return False


@dataclass
class Restartable:
    """A broker a test may restart: the environment of host's processes on it, where the
    store lives, and how to restart it."""

    env: dict[str, str]
    store_url: str
    restart: Callable[[], None]


@pytest.fixture
def restartable(broker: str, request: pytest.FixtureRequest) -> Iterator[Restartable]:
    """On Redis, a private server with the append-only file docs/operations.md recommends
    (broker, store and results on it, all restarted); on RabbitMQ, the session's node, killed
    and started again on the same data (the store and results stay on the session's Redis)."""
    if broker == "redis":
        server = RedisServer(appendonly=True).start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
        env.update(HOST_BROKER_URL=server.url, HOST_LOG_FORMAT="json")
        yield Restartable(env, server.url, lambda: server.restart(down_s=1.0))
        server.stop()
        return
    rabbit: RabbitServer = request.getfixturevalue("rabbit_server")
    env = dict(request.getfixturevalue("host_env"))
    yield Restartable(env, env["HOST_STORE_URL"], lambda: rabbit.restart(down_s=1.0))


@pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
@on_both_brokers
class TestBrokerRestart:
    @pytest.mark.timeout(300)
    @pytest.mark.background  # waits for a broker to come back
    def test_stream_survives_a_broker_restart(self, restartable: Restartable,
                                              tmp_path: Path) -> None:
        """Restart the broker three times mid-stream (SIGKILL): workers, checker and ingest
        reconnect; every tweet analysed; worker states and the audit log intact.

        Each Redis restart lands, now and then, between a worker's BRPOP and its unacknowledged
        record: stock kombu lost that tweet (1 in 1,000, in about one run of four with a single
        restart); host's transport takes and records a message in one atomic step, so the
        visibility sweep hands it out again. On RabbitMQ, host publishes with publisher
        confirms, so a message the broker took is on its disk before ingest counts it sent."""
        env = {**restartable.env, "HOST_WEAR_INTERVAL": "0.25"}
        app = create_app(Settings.from_env(env))
        store = RedisHealthStore.from_url(restartable.store_url)
        workers = [WorkerProcess(node_name(f"br{i}"), env, log_path=tmp_path / f"br{i}.log")
                   for i in (1, 2)]
        checker_log = (tmp_path / "checker.log").open("ab")
        checker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "healthcheck",
                                    "--metrics-port", "0", "--tick", "0.1"], env=env, cwd=REPO,
                                   stdout=checker_log, stderr=subprocess.STDOUT)
        try:
            for w in workers:
                w.start()
            for w in workers:
                w.wait_ready(app, timeout=60)
            wait_until(lambda: all(store.get(w.name) for w in workers), 30, "workers known")
            audit_before = len(store.history(limit=100_000))
            out = tmp_path / "out.jsonl"
            src = tmp_path / "1000.tsv"
            src.write_text("\n".join(GROUND_TRUTH.read_text(encoding="utf-8")
                                     .splitlines()[:1000]) + "\n")
            ingest = start_celery("ingest", str(src), "--out", str(out), "--timeout", "90",
                                  env=env, stderr=tmp_path / "ingest.err")
            # mid-stream: from its first result (a loaded machine takes seconds to start it,
            # and a restart during its start-up check is a refusal, not a stream surviving)
            wait_first_result(out, ingest, 90)
            for _ in range(3):
                restartable.restart()
                time.sleep(1.5)
            assert ingest.wait(240) == 0, (tmp_path / "ingest.err").read_text()[-3000:]
            results = read_jsonl(out)
            assert len(results) == 1000
            assert len({r["ref"] for r in results}) == 1000
            assert all(r["status"] == "analysed" for r in results)
            # States and the audit log survived, and nobody was taken out by the outage
            moves = [r for r in store.history(limit=100_000) if r["kind"] == "transition"]
            assert {store.get(w.name).state.value for w in workers} <= {  # type: ignore[union-attr]
                "HEALTHY", "SUSPECT", "OFFLINE"}, [(m["worker"], m["from"], m["to"], m.get("reason"))
                                                   for m in moves]
            assert len(store.history(limit=100_000)) >= audit_before
            for w in workers:
                assert w.alive()
                wait_until(functools.partial(answers, app, w.name), 30, f"{w.name} answering")
            assert checker.poll() is None
        finally:
            checker.terminate()
            checker.wait(15)
            for w in workers:
                w.stop()


@pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
@on_both_brokers
class TestJobAcrossARestart:
    @pytest.mark.timeout(300)
    def test_a_job_loses_nothing_across_a_broker_restart(self, restartable: Restartable,
                                                         tmp_path: Path) -> None:
        """A job mid-way, the broker SIGKILLed and started again: the job goes on by itself,
        or stops with exit 3 and the command that resumes it; resumed, every item is in the
        output exactly once and in order."""
        app = create_app(Settings.from_env(restartable.env))
        worker = WorkerProcess(node_name("jr1"), {**restartable.env, "HOST_WEAR_INJECT": "slow=0.3"},
                               concurrency=2, log_path=tmp_path / "jr1.log")
        rows = GROUND_TRUTH.read_text(encoding="utf-8").splitlines()
        src, out = tmp_path / "8k.tsv", tmp_path / "out.jsonl"
        src.write_text("".join(f"{i}\t0\t{rows[i % len(rows)].split(chr(9), 2)[2]}\n"
                               for i in range(8000)))
        try:
            worker.start().wait_ready(app, timeout=60)
            job = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "job", "run",
                                    str(src), "--out", str(out), "--chunk-cpu", "0.05"],
                                   env=restartable.env, cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
            wait_until(lambda: out.exists() and out.stat().st_size > 0, 60, "the first chunks")
            restartable.restart()
            _, err = job.communicate(timeout=240)
            if job.returncode == 3:  # the store went down with the broker: resumed by hand
                assert "job resume" in err and "Traceback" not in err, err[-2000:]
                job_id = err.split("job ", 1)[1].split()[0]
                resumed = subprocess.run([sys.executable, "-m", "celery", "-A", "host", "job",
                                          "resume", job_id], env=restartable.env, cwd=REPO,
                                         capture_output=True, text=True, timeout=240, check=False)
                assert resumed.returncode == 0, resumed.stderr[-2000:]
            else:
                assert job.returncode == 0, err[-2000:]
            records = read_jsonl(out)
            assert [r["ref"] for r in records] == [f"{src}:{i}" for i in range(1, 8001)]
            assert all(r["status"] == "analysed" for r in records)
        finally:
            worker.stop()


@on_both_brokers
class TestReconnect:
    def test_every_work_queue_is_consumed_after_a_drain_admit_cycle_and_a_restart(
            self, restartable: Restartable, tmp_path: Path) -> None:
        """host's drain and admit are a cancel_consumer and an add_consumer; Celery up to 5.6.3
        dropped a queue so re-added from the consume set at the next reconnect (celery#10352).
        After the cycle and a broker restart the worker consumes every work queue again."""
        app = create_app(Settings.from_env(restartable.env))
        worker = WorkerProcess(node_name("rc1"), restartable.env, log_path=tmp_path / "rc1.log")
        everything = sorted(["bulk", "default", "tweets", f"host.verify.{worker.name}"])
        try:
            worker.start().wait_ready(app, timeout=60)
            for command in ("host_drain", "host_admit"):
                assert control_reply(app, command, worker.name, {"reason": "cycle"}) is not None
            assert consumed(app, worker.name) == everything
            restartable.restart()
            wait_until(functools.partial(answers, app, worker.name), 60, "the worker back")
            wait_until(lambda: consumed(app, worker.name) == everything, 30,
                       f"every queue consumed again (now {consumed(app, worker.name)})")
            record = app.send_task("host.analyse", args=[envelope("rc:1", "back again :)")])
            assert record.get(timeout=30)["worker"] == worker.name
        finally:
            worker.stop()


@pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
class TestABrokerThatLostWrites:
    @pytest.mark.timeout(180)
    def test_ingest_sends_again_what_a_new_redis_lost(self, tmp_path: Path) -> None:
        """The Redis holding the queue and the results comes back without the tasks it had
        acknowledged (no persistence here; under Sentinel, a replica promoted before it had
        them: Redis replicates asynchronously). ingest sees a new server (its run id) while
        tasks are unanswered and sends them again, under their own ids: every tweet analysed,
        each once in the output."""
        server = RedisServer().start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
        env.update(HOST_BROKER_URL=server.url, HOST_LOG_FORMAT="json")
        app = create_app(Settings.from_env(env))
        src, out = tmp_path / "40.tsv", tmp_path / "out.jsonl"
        src.write_text("\n".join(GROUND_TRUTH.read_text(encoding="utf-8").splitlines()[:40]) + "\n")
        worker = WorkerProcess(node_name("lw1"), env, log_path=tmp_path / "lw1.log")
        ingest = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "ingest",
                                   str(src), "--out", str(out), "--timeout", "60", "--json"],
                                  env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=(tmp_path / "ingest.err").open("w"))
        try:
            queued = redis.Redis.from_url(server.url)
            wait_until(lambda: queued.llen("tweets") == 40, 30, "40 tasks queued, none running")
            server.restart(down_s=0.5)  # empty: the 40 tasks are gone
            assert redis.Redis.from_url(server.url).llen("tweets") == 0
            worker.start().wait_ready(app, timeout=60)
            assert ingest.wait(120) == 0, (tmp_path / "ingest.err").read_text()[-3000:]
            summary = (tmp_path / "ingest.err").read_text().strip().splitlines()[-1]
            results = read_jsonl(out)
            assert sorted(r["ref"] for r in results) == sorted({r["ref"] for r in results})
            assert len(results) == 40 and {r["status"] for r in results} == {"analysed"}
            assert json.loads(summary)["resent"] == 40
        finally:
            if ingest.poll() is None:
                ingest.kill()
            worker.stop()
            server.stop()
