"""The host Celery app: ``celery -A host ...`` finds ``host.app``."""

from __future__ import annotations

from workers.app import create_app

app = create_app()
