"""Settings: defaults, environment parsing, the TOML file, and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker_config import redis_url
from broker_config.settings import ConfigError, Settings


class TestSettingsFromEnv:
    def test_defaults_match_the_product_contract(self) -> None:
        """With no HOST_ variables the documented defaults apply."""
        s = Settings.from_env({})
        assert s.broker_url == "redis://127.0.0.1:6379/0"
        assert s.metrics_port == 9808
        assert s.wear_interval == 1.0
        assert s.effective_result_backend == s.broker_url
        assert s.effective_store_url == s.broker_url

    def test_reads_and_converts_prefixed_variables(self) -> None:
        """HOST_ variables are typed by their field."""
        s = Settings.from_env({"HOST_METRICS_PORT": "9100", "HOST_WEAR_INTERVAL": "0.5",
                               "HOST_WEAR_INJECT": "cpu=97", "PATH": "/bin"})
        assert (s.metrics_port, s.wear_interval, s.wear_inject) == (9100, 0.5, "cpu=97")

    @pytest.mark.parametrize(("key", "value", "fragment"), [
        ("HOST_WEAR_INTERVAL", "-1", "must be > 0"),
        ("HOST_WEAR_INTERVAL", "fast", "must be a number"),
        ("HOST_METRICS_PORT", "70000", "TCP port"),
        ("HOST_BROKER_URL", "http://x", "scheme must be one of"),
        ("HOST_BROKER_URL", "redis://host:port/0", "port is not a number"),
        ("HOST_BROKER_URL", "redis:///0", "has no host"),
        ("HOST_ENV", "staging", "must be one of development, production"),
        ("HOST_WORKER_MEMORY_LIMIT", "-5", "must be >= 0"),
        ("HOST_WORKER_MEMORY_LIMIT", "1.5G", "must be an integer"),
        ("HOST_NO_SUCH_THING", "1", "unknown setting"),
        ("HOST_STORE_URL", "sentinel://s1:26379;redis://s2:6379", "every part must be sentinel"),
        ("HOST_STORE_URL", "sentinel://s1:x", "port is not a number"),
        ("HOST_STORE_URL", "sentinel://:pw@;sentinel://s2", "a sentinel has no host"),
        ("HOST_RESULT_BACKEND", "sentinel://s1/zero", "database 'zero' is not a number"),
        ("HOST_BROKER_URL", "sentinel://s1:26379", "HOST_SENTINEL_MASTER"),
        ("HOST_SENTINEL_TLS_CA_FILE", "/no/such/ca.pem", "no such file"),
    ])
    def test_bad_values_name_the_key_and_the_value(self, key: str, value: str, fragment: str) -> None:
        """A bad value raises ConfigError whose one-line message names key, value and reason."""
        with pytest.raises(ConfigError) as info:
            Settings.from_env({key: value})
        message = str(info.value)
        assert key in message
        assert fragment in message
        assert "\n" not in message

    def test_soft_time_limit_must_be_below_hard(self) -> None:
        """The soft limit must leave the task time to clean up before the hard kill."""
        with pytest.raises(ConfigError, match="HOST_TASK_SOFT_TIME_LIMIT"):
            Settings(task_soft_time_limit=60, task_time_limit=30)

    def test_non_redis_broker_needs_a_result_backend(self) -> None:
        """Results and records live in Redis: an AMQP broker needs HOST_RESULT_BACKEND."""
        with pytest.raises(ConfigError, match="HOST_RESULT_BACKEND"):
            Settings(broker_url="amqp://guest@localhost//")
        s = Settings(broker_url="amqp://guest@localhost//", result_backend="redis://r/0",
                     store_url="redis://r/1")
        assert not s.broker_is_redis


AMQP: dict[str, Any] = {"broker_url": "amqp://guest@localhost//", "result_backend": "redis://r/0",
                        "store_url": "redis://r/1"}


class TestRabbitMQSettings:
    def test_quorum_queues_need_a_rabbitmq_broker(self) -> None:
        """HOST_QUEUE_TYPE=quorum on Redis is a mistake, said at start."""
        with pytest.raises(ConfigError, match="HOST_QUEUE_TYPE='quorum': quorum queues need"):
            Settings(queue_type="quorum")
        assert Settings(**AMQP, queue_type="quorum").queue_type == "quorum"
        with pytest.raises(ConfigError, match="must be one of classic, quorum"):
            Settings(**AMQP, queue_type="stream")

    def test_tasks_must_fit_in_half_the_consumer_timeout(self) -> None:
        """RabbitMQ closes the channel of a message held past its consumer timeout, so a task
        (acknowledged late) may last at most half of it; Redis has no such limit."""
        with pytest.raises(ConfigError, match=r"HOST_TASK_TIME_LIMIT=45\.0: must be at most half"):
            Settings(**AMQP, broker_consumer_timeout=60)
        s = Settings(**AMQP, broker_consumer_timeout=60, task_time_limit=30,
                     task_soft_time_limit=25)
        assert (s.hold_horizon, s.broker_is_amqp) == (30.0, True)
        assert Settings(broker_consumer_timeout=60).task_time_limit == 45.0

    def test_delivery_limit_must_be_positive(self) -> None:
        with pytest.raises(ConfigError, match="HOST_DELIVERY_LIMIT"):
            Settings.from_env({"HOST_BROKER_URL": AMQP["broker_url"],
                               "HOST_RESULT_BACKEND": "redis://r/0", "HOST_STORE_URL": "redis://r/0",
                               "HOST_DELIVERY_LIMIT": "0"})


class TestSettingsFile:
    def test_file_values_apply_and_env_overrides_them(self, tmp_path: Path) -> None:
        """The TOML file sets values; HOST_ variables win over it."""
        f = tmp_path / "host.toml"
        f.write_text('metrics_port = 9200\nwear_interval = 2\nlog_format = "json"\n')
        s = Settings.from_env({"HOST_CONFIG_FILE": str(f), "HOST_METRICS_PORT": "9300"})
        assert (s.metrics_port, s.wear_interval, s.log_format) == (9300, 2.0, "json")

    @pytest.mark.parametrize(("content", "fragment"), [
        ("bogus_key = 1\n", "bogus_key"),
        ('metrics_port = "high"\n', "must be int"),
        ("metrics_port = true\n", "must be int"),
        ("= broken", "not valid TOML"),
    ])
    def test_bad_file_is_refused_with_the_key(self, tmp_path: Path, content: str,
                                              fragment: str) -> None:
        """Unknown keys, wrong types and broken TOML are refused, naming what is wrong."""
        f = tmp_path / "host.toml"
        f.write_text(content)
        with pytest.raises(ConfigError, match=fragment):
            Settings.from_env({"HOST_CONFIG_FILE": str(f)})

    def test_missing_file_is_refused(self, tmp_path: Path) -> None:
        """A config file that cannot be read is an error, not silently ignored."""
        with pytest.raises(ConfigError, match="HOST_CONFIG_FILE"):
            Settings.from_env({"HOST_CONFIG_FILE": str(tmp_path / "absent.toml")})


class TestShardSettings:
    def test_a_shard_must_be_one_of_the_shards(self) -> None:
        assert Settings.from_env({"HOST_CHECKER_SHARDS": "4", "HOST_CHECKER_SHARD": "3"}) \
            .checker_shard == 3
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"HOST_CHECKER_SHARDS": "2", "HOST_CHECKER_SHARD": "2"})
        assert "HOST_CHECKER_SHARD" in str(info.value) and "between 0 and" in str(info.value)
        with pytest.raises(ConfigError, match="HOST_CHECKER_SHARDS"):
            Settings.from_env({"HOST_CHECKER_SHARDS": "0"})


SENTINELS = "sentinel://:secret@s1:26379;sentinel://s2:26380;sentinel://s3/2"


class TestSentinelSettings:
    def test_every_redis_setting_takes_a_sentinel_url(self) -> None:
        """Broker, result backend and store all take sentinel:// with a master name; the
        address carries the sentinels, the database and the master's password."""
        s = Settings(broker_url=SENTINELS, result_backend=SENTINELS, store_url=SENTINELS,
                     sentinel_master="prod", sentinel_password="sp")
        assert s.broker_is_redis and not s.broker_is_amqp
        where = redis_url.parse(s.store.url)
        assert where.sentinels == (("s1", 26379), ("s2", 26380), ("s3", 26379))
        assert (where.db, where.password) == (2, "secret")
        assert s.store.sentinel == redis_url.SentinelOptions("prod", "sp")
        assert "secret" not in str(s.store) and "s3" in str(s.store)

    def test_the_master_name_is_needed_for_any_of_them(self) -> None:
        for key in ("result_backend", "store_url"):
            with pytest.raises(ConfigError, match=f"HOST_SENTINEL_MASTER.*HOST_{key.upper()}"):
                Settings.from_env({f"HOST_{key.upper()}": SENTINELS})

    def test_a_plain_url_needs_no_sentinel_settings(self) -> None:
        """A redis:// address ignores the Sentinel options; a bare sentinel:// string (no
        options) cannot make a client."""
        assert redis_url.address("redis://r:6379/3").db == 3
        with pytest.raises(ValueError, match="master"):
            redis_url.client(SENTINELS)
