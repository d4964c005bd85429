"""The host Celery app: ``celery -A host ...`` finds ``host.app``."""

from __future__ import annotations

from broker_config.app import create_app

app = create_app()
