"""``celery -A host fleet ...``: operators' commands for the fleet."""

from __future__ import annotations

import json

import click

from cli import control
from cli.common import check_broker, host_app
from workers.inject import Injection


@click.group()
def fleet() -> None:
    """See and steer the fleet's workers."""


@fleet.command()
@click.argument("worker")
@click.argument("spec", default="")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the worker's reply as JSON.")
@click.pass_context
def inject(ctx: click.Context, worker: str, spec: str, timeout: float, as_json: bool) -> None:
    """Set WORKER's fault injection to SPEC (e.g. cpu=97,fail_rate=0.5); no SPEC clears it."""
    try:
        Injection.parse(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SPEC") from None
    app = host_app(ctx)
    check_broker(app)
    reply = control.send(app, "host_inject", worker, {"spec": spec}, timeout)
    if as_json:
        click.echo(json.dumps({"worker": worker, **reply}))
    else:
        click.echo(f"{worker}: injection {'set to ' + reply['ok'] if reply.get('ok') else 'cleared'}")
