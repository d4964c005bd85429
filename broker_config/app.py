"""host's Celery app class: configured lazily from Settings (built by ``workers.app.create_app``)."""

from __future__ import annotations

import os
from typing import Any

import click
from celery import Celery

from broker_config.celeryconfig import celery_config
from broker_config.settings import ConfigError, Settings


class ConfigurationFailed(click.ClickException):
    """Bad settings, reported by the command line as one line and exit code 78 (EX_CONFIG)."""

    exit_code = 78

    def __init__(self, error: ConfigError) -> None:
        super().__init__(f"configuration error: {error}")
        self.error = error


class HostCelery(Celery):
    """A Celery app that knows host's Settings.

    Settings are read when the configuration is first needed, not at import, so that
    ``import host`` has no side effects and a bad value fails the command that needs it.

    Args:
        settings: fixed settings (tests); None reads ``HOST_*`` from the environment.
    """

    def __init__(self, settings: Settings | None = None, **kwargs: Any) -> None:
        super().__init__("host", **kwargs)
        self._host_settings = settings
        self.add_defaults(self._celery_defaults)

    @property
    def host_settings(self) -> Settings:
        """The validated settings of this app.

        Raises:
            ConfigurationFailed: a ``HOST_*`` variable or the config file holds a bad value.
        """
        if self._host_settings is None:
            try:
                self._host_settings = Settings.from_env(os.environ)
            except ConfigError as exc:
                raise ConfigurationFailed(exc) from None
        return self._host_settings

    def _celery_defaults(self) -> dict[str, Any]:
        return celery_config(self.host_settings)


def settings_of(app: Celery) -> Settings:
    """The Settings of a host app (any other app is a programming error)."""
    if not isinstance(app, HostCelery):
        raise TypeError(f"{app!r} is not a host app; build it with create_app()")
    return app.host_settings
