"""The baseline: a bare Celery app doing the same VADER work, for benchmarks to compare against.

``PLAIN_PROFILE=default`` runs Celery's defaults; ``reliable`` adds the reliability settings
host uses (late ack, reject on worker lost, prefetch 1, no prefetch, JSON only; publisher
confirms on RabbitMQ), which are host's own Celery settings; ``events`` adds Celery's task
events on top (what ``HOST_TASK_EVENTS=true`` turns on in host, for Flower).
``PLAIN_BROKER_URL`` names the broker (Redis or RabbitMQ) and ``PLAIN_RESULT_BACKEND`` the
results (a Redis; the broker by default), both may be ``sentinel://`` with
``PLAIN_SENTINEL_MASTER`` naming the master. Workers run ``-A bench.plain_app``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

_analyzer = SentimentIntensityAnalyzer()


def make_app(profile: str, broker_url: str, backend_url: str = "",
             sentinel_master: str = "") -> Celery:
    """A plain app with Celery's defaults, or with host's reliability settings."""
    app = Celery("plain", broker=broker_url, backend=backend_url or broker_url,
                 set_as_current=False)
    app.conf.task_default_queue = f"plain_{profile}"
    on_redis = broker_url.startswith(("redis", "unix", "sentinel"))
    if sentinel_master:  # Celery's own way: the master's name in the transport options
        app.conf.broker_transport_options = {"master_name": sentinel_master}
        app.conf.result_backend_transport_options = {"master_name": sentinel_master}
    if profile in ("reliable", "events"):
        app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True,
                        worker_prefetch_multiplier=1, worker_disable_prefetch=on_redis,
                        accept_content=["json"])
        if not on_redis:  # host publishes with confirms on RabbitMQ
            app.conf.broker_transport_options = {"confirm_publish": True}
    if profile == "events":
        app.conf.worker_send_task_events = True

    @app.task(name="plain.analyse", shared=False)
    def analyse(text: str) -> dict[str, Any]:
        return dict(_analyzer.polarity_scores(text))

    @app.task(name="plain.analyse_stamped", bind=True, shared=False)
    def analyse_stamped(self: Any, text: str) -> dict[str, Any]:
        started = time.time()
        return {**_analyzer.polarity_scores(text), "worker": self.request.hostname,
                "started_at": started}

    @app.task(name="plain.analyse_batch", shared=False)
    def analyse_batch(texts: list[str]) -> list[dict[str, Any]]:
        return [dict(_analyzer.polarity_scores(t)) for t in texts]

    return app


app = make_app(os.environ.get("PLAIN_PROFILE", "default"),
               os.environ.get("PLAIN_BROKER_URL", "redis://127.0.0.1:6379/0"),
               os.environ.get("PLAIN_RESULT_BACKEND", ""),
               os.environ.get("PLAIN_SENTINEL_MASTER", ""))
