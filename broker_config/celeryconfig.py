"""The Celery configuration host runs with, derived from Settings."""

from __future__ import annotations

from typing import Any

from broker_config import fastjson, queues, redis_url, results, transport
from broker_config.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for a host fleet; docs/configuration.md explains each choice."""
    fastjson.register()
    # Results are stored by host's own Redis backends: Celery's, in one round trip a task.
    results.register()
    return {"broker_url": settings.broker_url,
            "result_backend": settings.effective_result_backend,
            "broker_connection_retry_on_startup": True,
            **_wire(), **_reliability(settings), **_routing(settings), **_worker(settings),
            **_transports(settings)}


def _wire() -> dict[str, Any]:
    # Only JSON crosses the wire: nothing a producer sends can become code in a worker. host
    # writes its tasks and results with orjson (broker_config.fastjson: JSON all the same,
    # under JSON's content type); a batch's envelopes and results are most of what ingest and
    # a worker do besides VADER's own work.
    return {"task_serializer": fastjson.NAME,
            "result_serializer": fastjson.NAME,
            "event_serializer": "json",
            "accept_content": ["json"],
            "result_accept_content": ["json"]}


def _reliability(settings: Settings) -> dict[str, Any]:
    return {
        # Acknowledge after the task ran, and give the message back if the child process dies:
        # a worker that crashes or is killed loses nothing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Hold at most one message per process: a worker taken out of rotation holds little.
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": settings.broker_is_redis,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "result_expires": settings.result_expires,
        # Ride out a broker restart: publishers retry for about 30 s, and workers keep retrying
        # to store a result instead of losing it.
        "task_publish_retry_policy": {"max_retries": 30, "interval_start": 0,
                                      "interval_step": 0.5, "interval_max": 1.0},
        "result_backend_always_retry": True,
        "result_backend_max_retries": 30,
        "result_extended": False,
    }


def _routing(settings: Settings) -> dict[str, Any]:
    return {"task_queues": queues.work_queues(settings.queue_type, settings.delivery_limit),
            "task_default_queue": queues.DEFAULT,
            "task_default_exchange": queues.DEFAULT,
            "task_default_routing_key": queues.DEFAULT,
            "task_routes": queues.TASK_ROUTES,
            "task_create_missing_queues": False}


def _worker(settings: Settings) -> dict[str, Any]:
    return {
        # Off by default: the checker's task figures come from the workers' own counts in
        # their wear reports. On (HOST_TASK_EVENTS) for monitors that show tasks (Flower).
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": False,
        # Every message is checked before Celery's strategy: the gate, then dead letters for
        # anything that is not a task host can run (workers.consumer).
        "worker_consumer": "workers.consumer:HostConsumer",
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }


def _transports(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if settings.broker_is_redis:
        # kombu's Redis transport, keeping messages a broker restart would otherwise lose and
        # surviving items that are no message (broker_config.transport), under redis://.
        transport.register()
        config["broker_transport_options"] = redis_transport_options(settings)
    if settings.broker_is_amqp:
        config["broker_transport_options"] = amqp_transport_options(settings)
    # Results are in Redis whatever the broker: a write that hangs gives up after 5 s.
    config["result_backend_transport_options"] = {"retry_policy": {"timeout": 5.0}}
    sentinel = settings.sentinel
    if redis_url.is_sentinel(settings.broker_url):
        config["broker_transport_options"].update(sentinel_transport_options(sentinel))
        if sentinel.tls:
            config["broker_use_ssl"] = _ssl(sentinel)
    if redis_url.is_sentinel(settings.effective_result_backend):
        config["result_backend_transport_options"].update(sentinel_transport_options(sentinel))
        if sentinel.tls:
            config["redis_backend_use_ssl"] = _ssl(sentinel)
    return config


def sentinel_transport_options(sentinel: redis_url.SentinelOptions) -> dict[str, Any]:
    """kombu's and Celery's options for a sentinel:// URL: the master's name, and how to talk
    to the sentinels themselves (their password, TLS; a sentinel that does not answer within
    a second is skipped for the next)."""
    return {"master_name": sentinel.master,
            "sentinel_kwargs": sentinel.sentinel_kwargs(socket_timeout=1.0,
                                                        socket_connect_timeout=1.0)}


def _ssl(sentinel: redis_url.SentinelOptions) -> dict[str, Any]:
    import ssl

    return {"ssl_cert_reqs": ssl.CERT_REQUIRED,
            **({"ssl_ca_certs": sentinel.tls_ca_file} if sentinel.tls_ca_file else {})}


def amqp_transport_options(settings: Settings) -> dict[str, Any]:
    """py-amqp's options: every publish waits for the broker's confirmation, so a message a
    producer counts as sent is in the broker (on its disk, for a durable queue) and survives
    a broker crash."""
    return {"confirm_publish": True}


def redis_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's Redis options: how fast an unacknowledged message comes back.

    kombu sweeps for expired messages every ``interval * throttle`` seconds. Its defaults
    (10 s x 10) make a dead worker's messages wait ~100 s whatever the visibility timeout;
    a throttle of 1 makes ``unacked_restore_interval`` the whole period (2 s by default).

    Each sweep holds a lock key in Redis for its few milliseconds; kombu lets a lock whose
    holder vanished live 5 minutes. A Sentinel failover can carry a held lock to the new master
    without its release (the old master died between the two), and then no worker hands any
    unacknowledged message out again for 5 minutes. Ten sweep periods (at least 10 s) bound
    that; a sweep takes milliseconds, and two that overlapped would still restore each message
    once (kombu restores a message in a transaction watching the unacknowledged hash).
    """
    return {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": max(10, round(settings.unacked_restore_interval * 10)),
    }
