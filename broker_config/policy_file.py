"""Reading the policy file (``HOST_POLICY_FILE``, ``--policy``): TOML into a PolicyConfig."""

from __future__ import annotations

import tomllib
from pathlib import Path

from broker_config.settings import ConfigError
from healthcheck.policy import PolicyConfig


def load_policy(path: str | Path | None) -> PolicyConfig:
    """The policy in ``path``, or the defaults when there is none.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or holds an unknown key or a bad
            value; the message names the key and the reason.
    """
    if not path:
        return PolicyConfig()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("HOST_POLICY_FILE", str(path), f"cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("HOST_POLICY_FILE", str(path), f"not valid TOML: {exc}") from None
    try:
        return PolicyConfig.from_mapping(data)
    except ValueError as exc:
        raise ConfigError("HOST_POLICY_FILE", str(path), str(exc)) from None
