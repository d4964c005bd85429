"""``celery -A host healthcheck``: the health checker."""

from __future__ import annotations

import gc
import signal
import sys
from types import FrameType

import click
from celery.bin.base import CeleryCommand

from broker_config.app import ConfigurationFailed
from broker_config.logs import ensure_logging, get_logger
from broker_config.policy_file import load_policy
from broker_config.settings import ConfigError
from cli.common import check_broker, host_app
from healthcheck import webconfig
from healthcheck.assemble import Assembly, assemble
from healthcheck.errors import StoreUnavailable

log = get_logger(__name__)


@click.command(cls=CeleryCommand)
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port of /metrics, /healthz and /readyz (default HOST_METRICS_PORT; 0: any).")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), default=None,
              help="Policy file (default HOST_POLICY_FILE; none: built-in defaults).")
@click.option("--dry-run", is_flag=True, help="Decide and report, but act on no worker.")
@click.option("--tick", type=click.FloatRange(min=0.05), default=0.25, show_default=True,
              help="Seconds between the policy's time-based decisions.")
@click.option("--shards", type=click.IntRange(1, 1024), default=None,
              help="How many shards the fleet is split into (default HOST_CHECKER_SHARDS).")
@click.option("--shard", type=click.IntRange(min=0), default=None,
              help="The shard this checker leads or stands by for (default HOST_CHECKER_SHARD).")
@click.pass_context
def healthcheck(ctx: click.Context, metrics_port: int | None, policy_path: str | None,
                dry_run: bool, tick: float, shards: int | None, shard: int | None) -> None:
    """Run the health checker: drain and quarantine degraded workers, re-admit recovered ones."""
    app = host_app(ctx)
    settings = app.host_settings
    ensure_logging(settings.log_format, settings.log_level)
    try:
        config = load_policy(policy_path or settings.policy_file or None)
    except ConfigError as exc:
        raise click.ClickException(f"configuration error: {exc}") from None
    try:
        web = webconfig.load(settings.web_config_file)
    except ConfigError as exc:
        raise ConfigurationFailed(exc) from None
    if dry_run:
        import dataclasses

        config = dataclasses.replace(config, enforce=False)
    shards = settings.checker_shards if shards is None else shards
    shard = settings.checker_shard if shard is None else shard
    if shard >= shards:
        raise click.BadParameter(f"shard {shard} is not one of 0..{shards - 1}",
                                 param_hint="--shard")
    check_broker(app)
    try:
        checker = assemble(app, settings, config, web, tick, shard, shards,
                           settings.metrics_port if metrics_port is None else metrics_port)
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    log.info("checker_started", metrics_port=checker.port, address=settings.metrics_address,
             tls=web.tls is not None, basic_auth=bool(web.users), dry_run=dry_run, tick_s=tick,
             policy=policy_path or settings.policy_file or "defaults", shard=shard,
             shards=shards)
    _run(checker)


def _run(checker: Assembly) -> None:
    """Run until SIGTERM or SIGINT, with the interpreter tuned for one long loop."""
    stop = checker.stop

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A fleet's worth of long-lived objects (states, readings, series) makes every full
    # collection of the cyclic GC a pause of the loop: keep what exists at start out of it,
    # and collect the young generation less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    sys.setswitchinterval(0.02)  # the ear and the loop hand over less often (default 5 ms)
    try:
        checker.run()
    finally:
        log.info("checker_stopped")
