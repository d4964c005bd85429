"""The wear reporter and fault injection in a real worker, observed through Celery events."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from celery.result import AsyncResult
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from broker_config.app import HostCelery
from broker_config.contract import envelope
from broker_config.queues import verify_queue
from broker_config.shards import shard_of
from harness.processes import node_name, wait_until
from healthcheck.intake import RedisEar
from healthcheck.sharding import routing_keys
from tests.conftest import WorkerFactory
from tests.support.cli import celery
from tests.support.events import EventTap

FAST = {"HOST_WEAR_INTERVAL": "0.3"}


def to_verify_queue(app: HostCelery, worker: str, env: dict[str, Any]) -> AsyncResult[Any]:
    """Send an analysis to one worker's private queue (a Queue object: it is not in task_queues)."""
    queue: Any = verify_queue(worker)  # Celery accepts a Queue here; its stubs say str only
    return app.send_task("host.analyse", args=[env], queue=queue)


class TestWearReporter:
    def test_reports_every_metric_with_sequence_numbers(self, app: HostCelery,
                                                        start_worker: WorkerFactory) -> None:
        """worker-wear events carry hostname, rising seq, readings with peaks, task figures."""
        with EventTap(app) as tap:
            worker = start_worker("wr1", env=FAST)
            tap.wait_for("worker-wear", lambda e: e["seq"] >= 3, hostname=worker.name)
            events = tap.of("worker-wear", worker.name)
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        last = events[-1]
        for metric in ("cpu_percent", "machine_cpu_percent", "memory_percent", "rss_bytes",
                       "load_per_core",
                       "open_files", "open_files_percent"):
            value, peak = last["wear"][metric]
            assert peak >= 0 and value >= 0, metric
        assert last["wear"]["rss_bytes"][0] > 1_000_000
        for key in ("completed", "failed", "failure_rate", "consecutive_failures",
                    "runtime_p50", "runtime_p95", "queue_wait_p95"):
            assert key in last["tasks"]
        assert last["queues"] == ["bulk", "default", "tweets"]
        assert last["inject"] is None
        assert 0 < last["interval"] < 1

    def test_task_statistics_follow_real_tasks(self, app: HostCelery,
                                               start_worker: WorkerFactory,
                                               host_env: dict[str, str], tmp_path: Path) -> None:
        """After 30 tasks the report counts them, with runtimes and queue wait."""
        src = tmp_path / "t.txt"
        src.write_text("".join(f"tweet number {i} is lovely\n" for i in range(30)))
        with EventTap(app) as tap:
            worker = start_worker("wr2", env=FAST)
            proc = celery("ingest", str(src), "--out", str(tmp_path / "o.jsonl"), env=host_env)
            assert proc.returncode == 0, proc.stderr
            event = tap.wait_for("worker-wear", lambda e: e["tasks"]["completed"] >= 30,
                                 hostname=worker.name)
        assert event["tasks"]["failed"] == 0
        assert event["tasks"]["runtime_p95"] > 0
        assert event["tasks"]["queue_wait_p95"] is not None


class TestFaultInjection:
    def test_injection_at_start_is_reported_and_logged_loudly(self, app: HostCelery,
                                                              start_worker: WorkerFactory) -> None:
        """HOST_WEAR_INJECT=cpu=97 makes the worker report 97% CPU and warn in its log."""
        with EventTap(app) as tap:
            worker = start_worker("wi1", env={**FAST, "HOST_WEAR_INJECT": "cpu=97"})
            event = tap.wait_for("worker-wear", lambda e: e["seq"] >= 2, hostname=worker.name)
        assert event["inject"] == "cpu=97"
        assert event["wear"]["cpu_percent"][1] == 97
        assert worker.log_path is not None
        assert "wear_injection_active" in worker.log_path.read_text()

    def test_fleet_inject_changes_a_running_worker(self, app: HostCelery,
                                                   start_worker: WorkerFactory,
                                                   host_env: dict[str, str]) -> None:
        """`fleet inject` reaches one worker mid-stream; an empty spec clears it."""
        with EventTap(app) as tap:
            w1, w2 = start_worker("wi2", env=FAST), start_worker("wi3", env=FAST)
            proc = celery("fleet", "inject", w1.name, "memory=96,fail_rate=1", env=host_env)
            assert proc.returncode == 0, proc.stderr
            tap.wait_for("worker-wear", lambda e: e["inject"] == "memory=96,fail_rate=1",
                         hostname=w1.name)
            assert all(e["inject"] is None for e in tap.of("worker-wear", w2.name))
            # fail_rate=1: every task on w1 fails, and its report says so
            result = to_verify_queue(app, w1.name, envelope("x:1", "hello"))
            failed = tap.wait_for("worker-wear", lambda e: e["tasks"]["failed"] >= 1,
                                  hostname=w1.name)
            assert failed["tasks"]["consecutive_failures"] >= 1
            assert result.failed()
            proc = celery("fleet", "inject", w1.name, env=host_env)
            assert proc.returncode == 0 and "cleared" in proc.stdout
            tap.wait_for("worker-wear", lambda e: e["inject"] is None and e["seq"] > failed["seq"],
                         hostname=w1.name)

    def test_wrong_answers_change_the_scores(self, app: HostCelery,
                                             start_worker: WorkerFactory) -> None:
        """wrong_answers=1 returns scores that differ from VADER's own."""
        worker = start_worker("wi4", env={"HOST_WEAR_INJECT": "wrong_answers=1"})
        text = "The food was good but the service was terribly slow"
        record = to_verify_queue(app, worker.name, envelope("x:1", text)).get(timeout=20)
        direct = SentimentIntensityAnalyzer().polarity_scores(text)
        assert abs(record["compound"] - direct["compound"]) >= 0.09

    def test_inject_refuses_unknown_worker_and_bad_spec(self, host_env: dict[str, str],
                                                        redis_client: object) -> None:
        """An unknown worker is exit 4, a bad spec exit 2; neither prints a traceback."""
        proc = celery("fleet", "inject", "nobody@nowhere", "cpu=90", "--timeout", "1",
                      env=host_env)
        assert proc.returncode == 4 and "no reply" in proc.stderr
        proc = celery("fleet", "inject", "nobody@nowhere", "gpu=3", env=host_env)
        assert proc.returncode == 2 and "gpu" in proc.stderr
        assert "Traceback" not in proc.stderr


class TestWearChannels:
    def test_a_shards_ear_hears_its_own_workers_reports_only(
            self, app: HostCelery, start_worker: WorkerFactory) -> None:
        """Wear reports go out per bucket: an ear on shard 0's routing keys hears a shard-0
        worker and never a shard-1 one, while Celery's own receiver hears both as ever."""
        shorts = [f"wc{i}" for i in range(1, 100)]
        mine = next(s for s in shorts if shard_of(node_name(s), 2) == 0)
        other = next(s for s in shorts if shard_of(node_name(s), 2) == 1)
        heard: list[dict[str, Any]] = []
        stop = threading.Event()
        ear = RedisEar(app.host_settings.broker_url, heard.extend, stop,
                       routing_keys=routing_keys(0, 2))
        threading.Thread(target=ear.run, daemon=True).start()
        try:
            with EventTap(app) as tap:
                a, b = start_worker(mine, env=FAST), start_worker(other, env=FAST)
                tap.wait_for("worker-wear", lambda e: e["seq"] >= 3, hostname=b.name)
                tap.wait_for("worker-wear", lambda e: e["seq"] >= 3, hostname=a.name)
            wait_until(lambda: any(e.get("hostname") == a.name for e in heard), 5, "shard 0")
        finally:
            stop.set()
        wear = {e["hostname"] for e in heard if e.get("type") == "worker-wear"}
        assert wear == {a.name}
        assert not any(e.get("type") == "worker-heartbeat" for e in heard)
