"""Typed settings: read once from ``HOST_*`` variables and an optional TOML file, then frozen."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker_config import redis_url
from broker_config.settings_rules import AMQP_SCHEMES, CHECKS, is_redis, problems

PREFIX = "HOST_"
#: Names the optional TOML file; its keys are the field names below, without the prefix.
CONFIG_FILE_VAR = "HOST_CONFIG_FILE"

#: The exit code of a worker that recycles by exiting (EX_TEMPFAIL: try again).
EX_RECYCLE = 75


class ConfigError(ValueError):
    """A setting has a bad value. ``str()`` is one line naming the key and the value.

    Args:
        key: the variable or file key, as the user wrote it (``HOST_WEAR_INTERVAL``).
        value: the offending value, as given.
        reason: what is wrong with it.
    """

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key, self.value, self.reason = key, value, reason
        super().__init__(f"{key}={value!r}: {reason}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything host reads from its environment. Defaults are documented in docs/configuration.md."""

    broker_url: str = "redis://127.0.0.1:6379/0"
    #: Where task results go; empty means the broker URL (it must be Redis then).
    result_backend: str = ""
    #: Where host keeps its own records (dead letters, worker states); empty means the broker URL.
    store_url: str = ""
    #: For sentinel:// URLs: the name the sentinels know the master by (``sentinel monitor``).
    sentinel_master: str = ""
    #: For sentinel:// URLs: the sentinels' own password (the master's is in the URL).
    sentinel_password: str = ""
    #: For sentinel:// URLs: TLS to the sentinels and the master, checked against
    #: HOST_SENTINEL_TLS_CA_FILE (the system's CAs when empty).
    sentinel_tls: bool = False
    sentinel_tls_ca_file: str = ""
    control_secret: str = ""
    #: Also accepted when verifying (never used to sign): set it to the old secret while
    #: rotating, so that nodes still on the old secret keep being obeyed.
    control_secret_previous: str = ""
    env: str = "development"
    metrics_port: int = 9808
    #: Seconds a worker may be OFFLINE before the checker stops exporting its series.
    metrics_worker_ttl: float = 3600.0
    policy_file: str = ""
    #: Seconds the checker lease lives without renewal: how long a dead leading checker
    #: leaves the fleet unwatched before a standby takes over.
    checker_lease: float = 5.0
    #: How many shards the fleet is split into, each led by its own checker (and standbys):
    #: every checker, and the `fleet` commands, must be given the same number.
    checker_shards: int = 1
    #: Which shard this checker leads or stands by for (0 .. HOST_CHECKER_SHARDS - 1).
    checker_shard: int = 0
    wear_interval: float = 1.0
    wear_inject: str = ""
    #: How a worker recycles (RECYCLE_MODES): "exit" under a platform that starts it again.
    recycle: str = "pool"
    #: Workers: the resident memory (bytes) a worker and its pool may use, against which its
    #: ``rss_percent`` is reported; 0: its cgroup's limit where it has one, else not reported.
    worker_memory_limit: int = 0
    #: Seconds a message may stay unacknowledged before Redis hands it to another worker. Live
    #: workers refresh the messages they hold every third of it, so only a dead worker's wait.
    visibility_timeout: float = 10.0
    #: Seconds between kombu's sweeps for messages whose visibility timeout has expired.
    unacked_restore_interval: float = 1.0
    #: RabbitMQ only: ``quorum`` declares the work queues as quorum queues, with a delivery limit
    #: and a dead-letter exchange whose messages become host dead-letter records.
    queue_type: str = "classic"
    #: RabbitMQ quorum queues: deliveries of one message before the broker dead-letters it.
    delivery_limit: int = 20
    #: RabbitMQ: the broker's ``consumer_timeout`` in seconds (its default is 30 minutes). host
    #: never holds a message this long: tasks are limited to half of it, and a message due
    #: later than that is handed back after at most half of it.
    broker_consumer_timeout: float = 1800.0
    task_soft_time_limit: float = 30.0
    task_time_limit: float = 45.0
    result_expires: int = 3600
    max_line_bytes: int = 1_048_576
    max_text_chars: int = 10_000
    max_batch: int = 1_000
    #: Most emoji in one text (each is read as its description); more is a dead letter.
    max_emoji: int = 1_000
    #: CPU seconds one input may cost; more stops it as a dead letter (too_expensive).
    input_cpu_budget: float = 0.1
    #: The largest task message body a worker accepts; a larger one is a dead letter.
    max_message_bytes: int = 8_388_608
    deadletter_keep: int = 100_000
    log_format: str = "auto"
    log_level: str = "INFO"
    #: Let Celery's shutdown, pool_restart and terminate remote commands reach workers.
    allow_dangerous_control: bool = False
    #: Celery built-ins (of GUARDED_BUILTINS, comma-separated) that workers obey unsigned.
    allow_control: str = ""
    #: The address the checker's HTTP side (/metrics, the page) listens on.
    metrics_address: str = "0.0.0.0"
    #: A web config file in the format of Prometheus' exporters (TLS, basic auth) for it.
    web_config_file: str = ""
    #: Workers: the port of their own /readyz and /healthz (on HOST_METRICS_ADDRESS); 0: none.
    worker_status_port: int = 0
    #: Workers send Celery's task events (for Flower and other monitors that show tasks);
    #: host itself needs none, and they cost per-task throughput (docs/configuration.md).
    task_events: bool = False
    #: The checker also exports celery-exporter's families (celery_task_*_total, celery_worker_up,
    #: ...), for the celery-mixin dashboards and alerts (docs/observability.md).
    celery_exporter_metrics: bool = False
    #: OpenTelemetry traces from producers, the API and workers (the tracing extra; where
    #: they go: OTEL_EXPORTER_OTLP_ENDPOINT and the rest of OpenTelemetry's own variables).
    tracing: bool = False
    #: The HTTP API (celery -A host api): where it listens.
    api_address: str = "0.0.0.0"
    api_port: int = 8080
    #: The longest a submission may wait for its analysis (?wait=), in seconds.
    api_wait_max: float = 10.0
    #: The largest body of one submission, in bytes (a job's upload: HOST_API_MAX_UPLOAD).
    api_max_body: int = 10_485_760
    api_max_upload: int = 2_147_483_648
    #: The most messages in one submission.
    api_max_messages: int = 10_000
    #: Messages waiting in the tweets queue past which submissions get 503 and Retry-After.
    api_backlog_max: int = 100_000
    #: Seconds concurrent submissions are gathered into one batch task (up to HOST_MAX_BATCH).
    api_batch_window: float = 0.005
    #: Seconds a message's outcome stays readable by id.
    api_record_ttl: int = 86_400
    #: Where uploaded job inputs and their outputs are kept; empty: a directory under /tmp.
    api_jobs_dir: str = ""
    #: Requests per second a key may make when it names no rate of its own.
    api_rate: float = 200.0
    #: Seconds a client has to send a whole request body; a slower one gets 408.
    api_body_timeout: float = 30.0
    #: Seconds a stopping API gives in-flight requests to finish.
    api_shutdown_timeout: float = 15.0
    #: Not a setting: False for the HTTP API's process, which holds no control secret.
    signs_control: bool = dataclasses.field(default=True, metadata={"internal": True})

    @property
    def allowed_control(self) -> tuple[str, ...]:
        """HOST_ALLOW_CONTROL as a tuple of command names."""
        return tuple(n.strip() for n in self.allow_control.split(",") if n.strip())

    def __post_init__(self) -> None:
        for f in fields(self):
            check = CHECKS.get(f.name)
            if check is not None:
                reason = check(getattr(self, f.name))
                if reason:
                    raise ConfigError(env_key(f.name), getattr(self, f.name), reason)
        for name, value, reason in problems(self):
            raise ConfigError(env_key(name), value, reason)

    @property
    def effective_result_backend(self) -> str:
        """The result backend URL, defaulting to the broker's Redis."""
        return self.result_backend or self.broker_url

    @property
    def effective_store_url(self) -> str:
        """The Redis URL of host's own records, defaulting to the broker's Redis."""
        return self.store_url or self.broker_url

    @property
    def sentinel(self) -> redis_url.SentinelOptions:
        """What sentinel:// URLs need besides the sentinels' addresses."""
        return redis_url.SentinelOptions(self.sentinel_master, self.sentinel_password,
                                         self.sentinel_tls, self.sentinel_tls_ca_file)

    @property
    def store(self) -> redis_url.RedisAddress:
        """Where host keeps its own records (the store)."""
        return redis_url.RedisAddress(self.effective_store_url, self.sentinel)

    @property
    def backend(self) -> redis_url.RedisAddress:
        """Where task results are kept."""
        return redis_url.RedisAddress(self.effective_result_backend, self.sentinel)

    @property
    def broker(self) -> redis_url.RedisAddress:
        """The broker, as a Redis address (meaningful when ``broker_is_redis``)."""
        return redis_url.RedisAddress(self.broker_url, self.sentinel)

    @property
    def broker_is_redis(self) -> bool:
        """True when the broker is Redis (prefetch and visibility settings apply)."""
        return is_redis(self.broker_url)

    @property
    def broker_is_amqp(self) -> bool:
        """True when the broker is RabbitMQ (AMQP 0-9-1)."""
        return urlsplit(self.broker_url).scheme in AMQP_SCHEMES

    @property
    def hold_horizon(self) -> float:
        """The longest a worker holds a message it will not run yet (RabbitMQ)."""
        return self.broker_consumer_timeout / 2

    @classmethod
    def from_env(cls, env: Mapping[str, str], api: bool = False) -> Settings:
        """Build settings from ``HOST_*`` variables, over the TOML file named by ``HOST_CONFIG_FILE``
        (``api``: for the HTTP API's process, which must hold no control secret).

        Raises:
            ConfigError: an unknown ``HOST_*`` variable or file key, or a bad value.
        """
        values: dict[str, Any] = {}
        file_name = env.get(CONFIG_FILE_VAR, "")
        if file_name:
            values.update(_read_file(file_name))
        for name, raw in env.items():
            if not name.startswith(PREFIX) or name == CONFIG_FILE_VAR:
                continue
            field_name = name[len(PREFIX) :].lower()
            if field_name not in _TYPES:
                raise ConfigError(name, raw, "unknown setting (see docs/configuration.md)")
            values[field_name] = _coerce(name, raw, _TYPES[field_name])
        return cls(**values, signs_control=not api)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def env_key(field_name: str) -> str:
    """The environment variable for a field: ``wear_interval`` -> ``HOST_WEAR_INTERVAL``."""
    return PREFIX + field_name.upper()


def _read_file(file_name: str) -> dict[str, Any]:
    path = Path(file_name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(CONFIG_FILE_VAR, file_name, f"cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(CONFIG_FILE_VAR, file_name, f"not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _TYPES:
            raise ConfigError(f"{file_name}: {key}", value, "unknown setting")
        expected = _TYPES[key]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise ConfigError(f"{file_name}: {key}", value, f"must be {expected.__name__}")
        values[key] = value
    return values


def _coerce(key: str, raw: str, kind: type) -> Any:
    if kind is str:
        return raw
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(key, raw, "must be true or false")
    try:
        return kind(raw.strip())
    except ValueError:
        raise ConfigError(key, raw, f"must be {'an integer' if kind is int else 'a number'}") from None


_TYPES: dict[str, type] = {
    f.name: {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]
    for f in fields(Settings) if not f.metadata.get("internal")
}
