"""A real `celery -A host worker`: its queues, its configuration errors, its tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker_config.app import HostCelery
from broker_config.contract import SENT_AT_HEADER, envelope, headers
from broker_config.queues import verify_queue_name
from tests.conftest import WorkerFactory
from tests.support.brokers import on_both_brokers
from tests.support.cli import celery
from tests.support.events import EventTap
from tests.support.polling import consumed, wait_until


class TestWorkerQueues:
    def test_consumes_work_queues_and_its_verify_queue(self, app: HostCelery,
                                                       start_worker: WorkerFactory) -> None:
        """Without -Q a worker consumes tweets, default and bulk, plus host.verify.<name>."""
        worker = start_worker("wq1")
        assert set(consumed(app, worker.name)) == {"tweets", "default", "bulk",
                                                     verify_queue_name(worker.name)}

    def test_q_selects_work_queues_but_verify_queue_stays(self, app: HostCelery,
                                                          start_worker: WorkerFactory) -> None:
        """-Q narrows the work queues; the private verify queue is always consumed."""
        worker = start_worker("wq2", queues=("tweets",))
        assert set(consumed(app, worker.name)) == {"tweets", verify_queue_name(worker.name)}

    def test_analyses_a_tweet(self, app: HostCelery, start_worker: WorkerFactory) -> None:
        """A task sent by name runs on the worker and names it in the result."""
        worker = start_worker("wq3")
        result = app.send_task("host.analyse", args=[envelope("t:1", "what a lovely day")])
        record = result.get(timeout=20)
        assert record["status"] == "analysed"
        assert record["label"] == "positive"
        assert record["worker"] == worker.name
        assert record["queue"] == "tweets"
        assert record["queue_wait_s"] is None  # sent without the contract's headers

    def test_queue_wait_is_measured_from_the_sent_at_header(
            self, app: HostCelery, start_worker: WorkerFactory) -> None:
        """The one stamp a queue wait is measured from: the message's host_sent_at header."""
        start_worker("wq4")
        sent = headers()
        sent[SENT_AT_HEADER] -= 7.0  # as if it had waited in the queue for 7 s
        record = app.send_task("host.analyse", args=[envelope("t:2", "a fine day")],
                               headers=sent).get(timeout=20)
        assert 7.0 <= record["queue_wait_s"] < 27.0


class TestConfigurationErrors:
    @pytest.mark.parametrize(("key", "value"), [
        ("HOST_WEAR_INTERVAL", "-1"),
        ("HOST_BROKER_URL", "redis://localhost:notaport/0"),
        ("HOST_UNKNOWN_KNOB", "1"),
    ])
    def test_bad_value_stops_the_worker_with_one_line(self, host_env: dict[str, str], key: str,
                                                      value: str) -> None:
        """A bad setting exits non-zero with one line naming the key, and no traceback."""
        proc = celery("worker", "-c", "1", env={**host_env, key: value}, timeout=60)
        assert proc.returncode == 78, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, proc.stderr
        assert key in lines[0]
        assert "Traceback" not in proc.stderr + proc.stdout

    def test_bad_config_file_key_is_named(self, host_env: dict[str, str], tmp_path: Path) -> None:
        """An unknown key in the TOML file stops the process and is named."""
        f = tmp_path / "host.toml"
        f.write_text("wear_intervall = 2\n")
        proc = celery("ingest", "-", env={**host_env, "HOST_CONFIG_FILE": str(f)}, timeout=60)
        assert proc.returncode == 78
        assert "wear_intervall" in proc.stderr
        assert "Traceback" not in proc.stderr


@on_both_brokers
class TestMalformedMessages:
    def test_every_bad_message_is_a_dead_letter_and_the_worker_serves_on(
            self, app: HostCelery, start_worker: WorkerFactory, redis_client: Any,
            broker: str, broker_url: str, request: pytest.FixtureRequest) -> None:
        """Written straight to the queue, each class of bad message becomes a dead-letter record
        with its reason and queue; no worker stops, nothing stays in the queue or unacked.
        (On Redis also the items that are no kombu envelope at all.)"""
        from tests.support.raw_messages import bad_messages, malformed, publish_amqp
        from workers.deadletter import RedisDeadLetterStore

        worker = start_worker("mm1")
        if broker == "redis":
            items: dict[str, object] = dict(malformed())
            for raw in items.values():
                redis_client.lpush("tweets", raw)
        else:
            messages = bad_messages()
            items = dict(messages)
            publish_amqp(broker_url, messages.values())
        store = RedisDeadLetterStore(redis_client)
        wait_until(lambda: store.counts().get("total", 0) >= len(items), 30,
                   "a dead letter for every bad message")
        reasons = sorted(r["reason"] for r in store.latest(100))
        assert reasons == sorted(k.split(":")[0] for k in items), " | ".join(
            f'{r["reason"]}: {r["detail"][:70]}' for r in store.latest(100))
        assert {r["queue"] for r in store.latest(100)} == {"tweets"}
        assert worker.alive()
        with EventTap(app) as tap:
            report = tap.wait_for("worker-wear", lambda e: e["inbound"]["rejected"] >= len(items),
                                  hostname=worker.name)
        assert sum(report["dead_letters"].values()) == len(items)  # counted, by reason
        record = app.send_task("host.analyse", args=[envelope("mm:1", "still fine :)")]).get(
            timeout=20)
        assert record["worker"] == worker.name and record["status"] == "analysed"
        if broker == "redis":
            assert redis_client.llen("tweets") == 0
            wait_until(lambda: redis_client.hlen("unacked") == 0, 10,
                       f"every message settled ({redis_client.hvals('unacked')!r:.600})")
        else:
            rabbit = request.getfixturevalue("rabbit_server")
            vhost = broker_url.rsplit("/", 1)[1]
            wait_until(lambda: rabbit.ctl("list_queues", "-p", vhost, "-q", "--no-table-headers",
                                          "name", "messages").split("\n").count("tweets\t0") == 1,
                       10, "tweets empty: every message settled")

    def test_a_rejected_message_answers_its_caller(self, app: HostCelery,
                                                   start_worker: WorkerFactory) -> None:
        """A caller waiting on a message with bad arguments gets a rejection, not PENDING."""
        start_worker("mm2")
        result = app.send_task("host.analyse", args=[{"data": {"id": "1", "text": "x"}}, 2])
        answer = result.get(timeout=20)
        assert answer["status"] == "rejected" and answer["reason"] == "bad_arguments"
