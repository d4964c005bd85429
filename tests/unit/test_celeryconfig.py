"""The Celery configuration derived from Settings: the reliability defaults of PRODUCT.md §4."""

from __future__ import annotations

from broker_config import fastjson
from broker_config.celeryconfig import celery_config
from broker_config.queues import WORK_QUEUES, verify_queue_name
from broker_config.settings import Settings


class TestCeleryConfig:
    def test_reliability_defaults(self) -> None:
        """Late ack, reject on worker lost, prefetch 1 and JSON only are on by default."""
        c = celery_config(Settings())
        assert c["task_acks_late"] is True
        assert c["task_reject_on_worker_lost"] is True
        assert c["worker_prefetch_multiplier"] == 1
        assert c["worker_disable_prefetch"] is True
        assert c["accept_content"] == ["json"]
        assert c["task_serializer"] == c["result_serializer"] == fastjson.NAME  # JSON, by orjson

    def test_task_events_are_off_unless_asked_for(self) -> None:
        """host needs no task events (workers report their own counts); Flower may want them."""
        assert celery_config(Settings())["worker_send_task_events"] is False
        on = Settings.from_env({"HOST_TASK_EVENTS": "true"})
        assert celery_config(on)["worker_send_task_events"] is True

    def test_redis_restore_cadence_comes_from_settings(self) -> None:
        """kombu's sweep runs every unacked_restore_interval seconds (throttle 1)."""
        c = celery_config(Settings(visibility_timeout=10, unacked_restore_interval=1))
        opts = c["broker_transport_options"]
        assert opts == {"visibility_timeout": 10, "unacked_restore_interval": 1,
                        "unacked_restore_throttle": 1, "unacked_mutex_expire": 10}

    def test_sentinel_urls_get_the_master_name_and_the_sentinels_password(self) -> None:
        """kombu and Celery read the master's name and the sentinels' own connection options
        from transport options, for the broker and the result backend alike; TLS both ways."""
        url = "sentinel://:pw@s1:26379;sentinel://s2:26379/0"
        config = celery_config(Settings(broker_url=url, sentinel_master="prod",
                                        sentinel_password="sp", sentinel_tls=True))
        for key in ("broker_transport_options", "result_backend_transport_options"):
            assert config[key]["master_name"] == "prod"
            assert config[key]["sentinel_kwargs"]["password"] == "sp"
            assert config[key]["sentinel_kwargs"]["ssl"] is True
        assert config["broker_transport_options"]["visibility_timeout"] == 10.0
        assert "ssl_cert_reqs" in config["broker_use_ssl"]
        assert "ssl_cert_reqs" in config["redis_backend_use_ssl"]
        plain = celery_config(Settings())
        assert "master_name" not in plain["broker_transport_options"]
        assert "broker_use_ssl" not in plain

    def test_non_redis_broker_gets_no_redis_options(self) -> None:
        """Prefetch disabling and visibility options apply only to Redis."""
        c = celery_config(Settings(broker_url="amqp://guest@localhost//",
                                   result_backend="redis://r/0", store_url="redis://r/0"))
        assert c["broker_transport_options"] == {"confirm_publish": True}  # none of Redis'
        assert c["worker_disable_prefetch"] is False

    def test_work_queues_and_routes(self) -> None:
        """The three work queues are declared and analysis tasks route to tweets."""
        c = celery_config(Settings())
        assert tuple(q.name for q in c["task_queues"]) == WORK_QUEUES
        assert c["task_routes"]["host.analyse"] == {"queue": "tweets"}
        assert c["task_routes"]["host.analyse_batch"] == {"queue": "tweets"}

    def test_quorum_work_queues_dead_letter_past_an_explicit_limit(self) -> None:
        """Quorum work queues carry the delivery limit and dead-letter, at least once, to
        host.dead, which is declared (a quorum queue, without a limit) beside them."""
        c = celery_config(Settings(broker_url="amqp://guest@localhost//",
                                   result_backend="redis://r/0", store_url="redis://r/0",
                                   queue_type="quorum", delivery_limit=7))
        queues = {q.name: q for q in c["task_queues"]}
        assert set(queues) == {*WORK_QUEUES, "host.dead"}
        for name in WORK_QUEUES:
            assert queues[name].queue_arguments == {
                "x-queue-type": "quorum", "x-delivery-limit": 7,
                "x-dead-letter-exchange": "host.dead", "x-dead-letter-routing-key": "host.dead",
                "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        assert queues["host.dead"].queue_arguments == {"x-queue-type": "quorum"}
        classic = celery_config(Settings())["task_queues"]
        assert all(not q.queue_arguments for q in classic)

    def test_verify_queue_is_per_worker(self) -> None:
        """Each worker's private queue is named after it."""
        assert verify_queue_name("w1@node") == "host.verify.w1@node"
