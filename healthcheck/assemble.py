"""The checker assembled from the settings, in one place: the store, the actuator, the prober,
the lease, the broker's queue depths, the checker itself, the ear that feeds it events and the
HTTP endpoints that show it. ``celery -A host healthcheck`` (``cli.healthcheck``) reads the
command line and runs what this builds."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from broker_config.app import HostCelery
from broker_config.queues import WATCHED_QUEUES, WORK_QUEUES
from broker_config.settings import Settings
from healthcheck.actuator import CeleryActuator
from healthcheck.http import app as http_app
from healthcheck.http import serve
from healthcheck.intake import Ear, IntakeWatch, RedisEar
from healthcheck.lease import Leadership, candidate_id
from healthcheck.metrics import QueueDepths, broker_depths
from healthcheck.page import StoredStates, fleet_view
from healthcheck.policy import PolicyConfig
from healthcheck.probes import CeleryProbeTransport, Prober, known_answers
from healthcheck.service import Checker
from healthcheck.sharding import Shard, routing_keys
from healthcheck.store import RedisHealthStore
from healthcheck.webconfig import WebConfig, require_auth


@dataclass
class Assembly:
    """A checker ready to run: its loop (``checker.run``), its ear (run on a thread of its
    own), the lease to release at the end, and the HTTP server on ``port``."""

    checker: Checker
    ear: Ear | RedisEar
    leadership: Leadership
    server: Any
    port: int
    stop: threading.Event

    def run(self) -> None:
        """Hear events and run the loop until ``stop`` is set; then release the lease and
        stop serving."""
        threading.Thread(target=self.ear.run, daemon=True).start()
        try:
            self.checker.run(self.stop)
        finally:
            self.leadership.release()
            self.server.shutdown()


def assemble(app: HostCelery, settings: Settings, config: PolicyConfig, web: WebConfig,
             tick_s: float, shard: int, shards: int, metrics_port: int) -> Assembly:
    """Every part of a checker of ``shard`` (of ``shards``), built once.

    Raises:
        StoreUnavailable: the store did not answer while the checker resumed from it.
    """
    store = RedisHealthStore.from_url(settings.store, shard, shards)
    actuator = CeleryActuator(app, secret=settings.control_secret)
    actuator.warm()
    watch = IntakeWatch()
    leadership = Leadership(store, candidate_id(), settings.checker_lease)
    depths = QueueDepths(broker_depths(app, WORK_QUEUES + WATCHED_QUEUES))
    checker = Checker.from_store(
        store, actuator, config, tick_s=tick_s, secret=settings.control_secret,
        previous_secret=settings.control_secret_previous,
        prober=Prober(CeleryProbeTransport(app), known_answers(), config.probes),
        leadership=leadership, forget_after_s=settings.metrics_worker_ttl, depths=depths,
        nonces=store.nonces(), watch=watch, act_pool=ThreadPoolExecutor(4, "host-act"),
        shard=Shard(shard, shards, store.budget()))
    if settings.celery_exporter_metrics:
        checker.metrics.export_celery_families()
    stop = threading.Event()

    def subscribed() -> None:
        watch.subscribe(time.time())

    keys = routing_keys(shard, shards) if shards > 1 else None  # one shard: its own workers'
    ear = (RedisEar(settings.broker, checker.on_events, stop, subscribed, watch.lose,
                    routing_keys=keys)
           if settings.broker_is_redis else Ear(app, checker.on_event, stop, subscribed, watch.lose))
    checker.hearing.resubscribe = ear.resubscribe
    others = StoredStates(store) if shards > 1 else None  # the page shows every shard's workers
    handler = http_app(checker.metrics.registry, lambda: alive(checker),
                       lambda: checker.ready and watch.subscribed and checker.intake_trusted,
                       lambda: fleet_view(checker.fleet, checker.history, store,
                                          checker.leading(), depths, others=others))
    server, port = serve(require_auth(handler, web.users), metrics_port,
                         settings.metrics_address, tls=web.tls)
    return Assembly(checker, ear, leadership, server, port, stop)


def alive(checker: Checker) -> bool:
    """/healthz: the loop has passed within five ticks (at least five seconds)."""
    return time.time() - checker.last_loop < 5 * max(checker.tick_s, 1.0)
