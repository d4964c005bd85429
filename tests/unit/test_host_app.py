"""The app that `celery -A host` finds: its tasks and its lazily read settings."""

from __future__ import annotations

import pytest
from celery.app.utils import find_app

from broker_config.app import ConfigurationFailed, HostCelery
from broker_config.settings import Settings
from workers.app import create_app


class TestHostApp:
    def test_find_app_resolves_host_app(self) -> None:
        """`celery -A host` resolves the module attribute `app`."""
        import host

        assert find_app("host") is host.app
        assert isinstance(host.app, HostCelery)

    def test_analysis_tasks_are_registered(self) -> None:
        """Both analysis tasks are registered under their public names."""
        app = create_app(Settings(broker_url="memory://localhost/", result_backend="redis://x/0",
                                  store_url="redis://x/0"))
        assert {"host.analyse", "host.analyse_batch"} <= set(app.tasks)

    def test_bad_environment_fails_only_when_configuration_is_read(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Building the app reads nothing; reading its configuration reports the bad key."""
        monkeypatch.setenv("HOST_WEAR_INTERVAL", "-3")
        app = create_app()
        with pytest.raises(ConfigurationFailed, match="HOST_WEAR_INTERVAL"):
            app.conf.broker_url  # noqa: B018
