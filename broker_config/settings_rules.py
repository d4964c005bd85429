"""What makes a setting valid: each field's own rule, and the rules between fields. The rules
say what is wrong (``problems``); ``broker_config.settings`` raises it as a ``ConfigError``
naming the variable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from broker_config import redis_url

ENVIRONMENTS = ("development", "production")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
BROKER_SCHEMES = ("redis", "rediss", "unix", "sentinel", "amqp", "amqps", "pyamqp", "memory")
REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
QUEUE_TYPES = ("classic", "quorum")
#: How a worker recycles at the checker's word: its pool restarted in place, or the whole
#: worker exiting with ``EX_RECYCLE`` for its platform to start again (HOST_RECYCLE).
RECYCLE_MODES = ("pool", "exit")


class Combined(Protocol):
    """What the rules between fields read of the settings (``Settings`` has it all)."""

    @property
    def task_soft_time_limit(self) -> float: ...
    @property
    def task_time_limit(self) -> float: ...
    @property
    def checker_shard(self) -> int: ...
    @property
    def checker_shards(self) -> int: ...
    @property
    def queue_type(self) -> str: ...
    @property
    def broker_consumer_timeout(self) -> float: ...
    @property
    def result_backend(self) -> str: ...
    @property
    def broker_url(self) -> str: ...
    @property
    def store_url(self) -> str: ...
    @property
    def sentinel_master(self) -> str: ...
    @property
    def sentinel_tls_ca_file(self) -> str: ...
    @property
    def signs_control(self) -> bool: ...
    @property
    def control_secret(self) -> str: ...
    @property
    def control_secret_previous(self) -> str: ...
    @property
    def env(self) -> str: ...
    @property
    def broker_is_amqp(self) -> bool: ...


def problems(s: Combined) -> Iterator[tuple[str, object, str]]:
    """What is wrong between fields: (the field, its value, why), first problem first."""
    if s.task_soft_time_limit >= s.task_time_limit:
        yield ("task_soft_time_limit", s.task_soft_time_limit,
               f"must be below HOST_TASK_TIME_LIMIT ({s.task_time_limit})")
    if not 0 <= s.checker_shard < s.checker_shards:
        yield ("checker_shard", s.checker_shard, "must be between 0 and HOST_CHECKER_SHARDS - 1 "
               f"({s.checker_shards - 1})")
    if s.queue_type != "classic" and not s.broker_is_amqp:
        yield "queue_type", s.queue_type, "quorum queues need a RabbitMQ broker (amqp://)"
    if s.broker_is_amqp and s.task_time_limit > s.broker_consumer_timeout / 2:
        yield ("task_time_limit", s.task_time_limit,
               f"must be at most half HOST_BROKER_CONSUMER_TIMEOUT ({s.broker_consumer_timeout}):"
               " RabbitMQ closes the channel of a message held longer than that")
    if not s.result_backend and not is_redis(s.broker_url):
        yield "result_backend", "", "must be set when the broker is not Redis"
    if not s.store_url and not is_redis(s.broker_url):
        yield "store_url", "", "must be set when the broker is not Redis"
    for name in ("broker_url", "result_backend", "store_url"):
        if redis_url.is_sentinel(getattr(s, name)) and not s.sentinel_master:
            yield ("sentinel_master", "",
                   f"must be set: HOST_{name.upper()} is a sentinel:// URL")
    if s.sentinel_tls_ca_file and not Path(s.sentinel_tls_ca_file).is_file():
        yield "sentinel_tls_ca_file", s.sentinel_tls_ca_file, "no such file"
    if not s.signs_control and (s.control_secret or s.control_secret_previous):
        yield ("control_secret", "<set>",
               "must not be set for the API: it never signs a control command, "
               "and the operators' channel does not ride on its door")
    if s.env == "production" and not s.control_secret and s.signs_control:
        yield ("control_secret", "",
               "required when HOST_ENV=production (control commands are signed)")


def is_redis(url: str) -> bool:
    return urlsplit(url).scheme in REDIS_SCHEMES


def _url(schemes: tuple[str, ...], empty_ok: bool) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if not value:
            return None if empty_ok else "must not be empty"
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            return f"scheme must be one of {', '.join(schemes)}"
        if parts.scheme == redis_url.SCHEME:
            return redis_url.problem(value)
        try:
            parts.port  # noqa: B018 - raises on a non-numeric port
        except ValueError:
            return "port is not a number"
        if parts.scheme in ("redis", "rediss", "amqp", "amqps", "pyamqp") and not parts.hostname:
            return "has no host"
        return None

    return check


#: Celery's remote-control built-ins that change what a worker consumes or how much it can do
#: (revoke ones only with terminate). Host workers refuse them unless signed or allowed.
GUARDED_BUILTINS = ("add_consumer", "cancel_consumer", "rate_limit", "time_limit", "autoscale",
                    "pool_grow", "pool_shrink", "objgraph", "revoke",
                    "revoke_by_stamped_headers", "shutdown", "pool_restart", "terminate")


def _builtins(value: str) -> str | None:
    unknown = [n.strip() for n in value.split(",") if n.strip()
               and n.strip() not in GUARDED_BUILTINS]
    return (f"unknown command(s) {', '.join(unknown)}; one of {', '.join(GUARDED_BUILTINS)}"
            if unknown else None)


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _one_of(options: tuple[str, ...]) -> Callable[[str], str | None]:
    return lambda value: None if value in options else f"must be one of {', '.join(options)}"


def _port(value: int) -> str | None:
    return None if 0 < value < 65536 else "must be a TCP port (1-65535)"


def _port_or_off(value: int) -> str | None:
    return None if 0 <= value < 65536 else "must be a TCP port (1-65535), or 0 for none"


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "broker_url": _url(BROKER_SCHEMES, empty_ok=False),
    "result_backend": _url(REDIS_SCHEMES, empty_ok=True),
    "store_url": _url(REDIS_SCHEMES, empty_ok=True),
    "env": _one_of(ENVIRONMENTS),
    "metrics_port": _port,
    "worker_status_port": _port_or_off,
    "checker_lease": _positive,
    "checker_shards": lambda v: None if 1 <= v <= 1024 else "must be between 1 and 1024",
    "metrics_worker_ttl": _positive,
    "wear_interval": _positive,
    "worker_memory_limit": lambda v: None if v >= 0 else "must be >= 0 (bytes; 0: the cgroup's)",
    "visibility_timeout": _positive,
    "unacked_restore_interval": _positive,
    "queue_type": _one_of(QUEUE_TYPES),
    "recycle": _one_of(RECYCLE_MODES),
    "delivery_limit": _positive,
    "broker_consumer_timeout": _positive,
    "task_soft_time_limit": _positive,
    "task_time_limit": _positive,
    "result_expires": _positive,
    "max_line_bytes": _positive,
    "max_text_chars": _positive,
    "max_batch": _positive,
    "max_message_bytes": _positive,
    "max_emoji": _positive,
    "input_cpu_budget": _positive,
    "deadletter_keep": _positive,
    "log_format": _one_of(LOG_FORMATS),
    "log_level": _one_of(LOG_LEVELS),
    "allow_control": _builtins,
    "metrics_address": lambda v: None if v.strip() else "must not be empty",
    "api_address": lambda v: None if v.strip() else "must not be empty",
    "api_port": _port,
    **{name: _positive for name in ("api_wait_max", "api_max_body", "api_max_upload",
                                    "api_max_messages", "api_backlog_max", "api_batch_window",
                                    "api_record_ttl", "api_rate", "api_body_timeout",
                                    "api_shutdown_timeout")},
}
