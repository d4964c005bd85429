"""``celery -A host fleet ...``: see the fleet, drain a worker for maintenance, quarantine, restore.

State changes go through the checker (the authority on states): the command line puts a signed
request in the store and waits for the checker's answer. Reading (status, history) goes to the
store directly, so it works while the checker is down.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from broker_config.app import HostCelery
from broker_config.signing import sign
from cli import control
from cli.common import (
    EXIT_INCOMPLETE,
    EXIT_NEEDS_YES,
    EXIT_NO_CHECKER,
    check_broker,
    host_app,
)
from cli.fleet_table import checker_now, print_status, status_of
from healthcheck.audit import Kind, parse_all
from healthcheck.errors import StoreUnavailable
from healthcheck.policy.model import CONSUMING
from healthcheck.store import RedisHealthStore
from workers.shared import Injection


class NoChecker(click.ClickException):
    """No checker answered (exit code 5)."""

    exit_code = EXIT_NO_CHECKER


class NeedsYes(click.ClickException):
    """The drain would leave a queue without a healthy consumer (exit code 6)."""

    exit_code = EXIT_NEEDS_YES


class UnknownWorker(click.ClickException):
    """The checker has never heard of that worker (exit code 4)."""

    exit_code = control.EXIT_NO_REPLY


@click.group()
def fleet() -> None:
    """See and steer the fleet's workers."""


def _store(app: HostCelery) -> RedisHealthStore:
    check_broker(app)
    settings = app.host_settings
    # Every shard count is the checkers': a request goes to its worker's shard's checker.
    return RedisHealthStore.from_url(settings.store,
                                     shards=settings.checker_shards)


# --- reading -------------------------------------------------------------------------------

@fleet.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: workers and queues.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """One row per worker: state, reason, since, wear, queues, in-flight work."""
    app = host_app(ctx)
    store = _store(app)
    try:
        workers, reports, leaders = store.load(), store.reports(), store.leaders()
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    data = status_of(workers, reports, leaders, store.shards)
    if as_json:
        click.echo(json.dumps(data))
        return
    print_status(data, checker_now(reports))


@fleet.command()
@click.argument("worker", required=False)
@click.option("--since", type=float, default=None, help="Seconds back (e.g. 3600).")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.pass_context
def history(ctx: click.Context, worker: str | None, since: float | None, limit: int,
            as_json: bool) -> None:
    """The audit log: every transition, drain and operator action, oldest first."""
    app = host_app(ctx)
    store = _store(app)
    now = checker_now(store.reports()) if since else 0.0
    records = parse_all(store.history(worker, now - since if since else None, limit))
    if as_json:
        for r in records:
            click.echo(json.dumps(r.to_dict()))
        return
    table = Table(title=f"history{' of ' + worker if worker else ''}")
    for col in ("time", "worker", "what", "reason"):
        table.add_column(col)
    for r in records:
        what = (f"{r.get('from')} → {r.to_state}" + ("" if r.get("enforced", True) else " (dry run)")
                if r.kind is Kind.TRANSITION else r.kind.value)
        table.add_row(time.strftime("%H:%M:%S", time.localtime(r.at)), r.worker or "", what,
                      str(r.get("reason", ""))[:70])
    Console().print(table)


# --- acting --------------------------------------------------------------------------------

@fleet.command()
@click.argument("worker")
@click.option("--reason", default="maintenance", show_default=True)
@click.option("--wait", is_flag=True, help="Return when the worker holds no work.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=300.0, show_default=True,
              help="With --wait: give up after this many seconds (exit 1).")
@click.option("--yes", is_flag=True, help="Drain even if a queue is left with no healthy consumer.")
@click.option("--stopping", is_flag=True,
              help="Its platform is about to stop WORKER (a preStop hook, ExecStop): the drain "
                   "ends by itself when the worker starts again, and never asks for --yes.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def drain(ctx: click.Context, worker: str, reason: str, wait: bool, timeout: float, yes: bool,
          stopping: bool, as_json: bool) -> None:
    """Take WORKER out of rotation for maintenance (MAINTENANCE until `restore`)."""
    app = host_app(ctx)
    store = _store(app)
    _known(store, worker)
    if not yes and not stopping:  # a stop happens whatever we say: drain first all the same
        _refuse_if_last_consumer(store, worker)
    answer = _ask_checker(app, store, "stop" if stopping else "drain", worker, reason)
    _say(answer, as_json)
    if wait and not _wait_empty(app, worker, timeout, as_json):
        ctx.exit(EXIT_INCOMPLETE)


@fleet.command()
@click.argument("worker")
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def quarantine(ctx: click.Context, worker: str, reason: str, as_json: bool) -> None:
    """Quarantine WORKER by hand (it comes back only through `restore`)."""
    app = host_app(ctx)
    store = _store(app)
    _known(store, worker)
    _say(_ask_checker(app, store, "quarantine", worker, reason), as_json)


@fleet.command()
@click.argument("worker")
@click.option("--force", is_flag=True, help="Straight to HEALTHY, skipping probation.")
@click.option("--reason", default="restored by an operator", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def restore(ctx: click.Context, worker: str, force: bool, reason: str, as_json: bool) -> None:
    """End WORKER's maintenance or manual quarantine: it goes through probation."""
    app = host_app(ctx)
    store = _store(app)
    _known(store, worker)
    _say(_ask_checker(app, store, "restore", worker, reason, force=force), as_json)


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


def _known(store: RedisHealthStore, worker: str) -> None:
    if store.get(worker) is None:
        raise UnknownWorker(f"unknown worker {worker!r}: the checker has never heard of it "
                            "(see `celery -A host fleet status`)")


def _refuse_if_last_consumer(store: RedisHealthStore, worker: str) -> None:
    workers = store.load()
    me = workers[worker]
    for queue in me.queues:
        others = sum(1 for w in workers.values()
                     if w.name != worker and w.state in CONSUMING and queue in w.queues)
        if me.state in CONSUMING and others == 0:
            raise NeedsYes(f"draining {worker} leaves queue {queue!r} with no healthy consumer "
                           "(its messages would wait in the broker): pass --yes to drain anyway")


def _ask_checker(app: HostCelery, store: RedisHealthStore, action: str, worker: str,
                 reason: str, force: bool = False, timeout: float = 5.0) -> dict[str, Any]:
    request_id = uuid.uuid4().hex
    body = {"id": request_id, "action": action, "worker": worker, "reason": reason,
            "force": force}
    signed = sign(app.host_settings.control_secret, f"operator:{action}", body, "checker",
                  time.time())
    answer = store.ask(signed, timeout)
    if answer is None:
        raise NoChecker(f"no answer from the checker within {timeout:g}s: is "
                        "`celery -A host healthcheck` running?")
    if not answer.get("ok"):
        if answer.get("code") == "unknown_worker":
            raise UnknownWorker(answer["error"])
        raise click.ClickException(str(answer.get("error")))
    return answer


def _say(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(answer))
    else:
        click.echo(f"{answer['worker']}: {answer['state']}")


def _wait_empty(app: HostCelery, worker: str, timeout: float, as_json: bool) -> bool:
    """Poll the worker until nothing is in flight; False on timeout."""
    began = time.monotonic()
    deadline = began + timeout
    last = None
    while time.monotonic() < deadline:
        reply = control.send(app, "host_gate", worker, {}, timeout=2.0)
        inflight = int(reply.get("inflight", 0))
        if inflight != last and not as_json:
            click.echo(f"{worker}: {inflight} task(s) in flight", err=True)
            last = inflight
        if inflight == 0 and not reply.get("consuming"):
            if not as_json:
                click.echo(f"{worker}: drained, holds no work "
                           f"(waited {time.monotonic() - began:.1f} s)")
            return True
        time.sleep(0.5)
    click.echo(f"{worker}: still {last} task(s) in flight after {timeout:g}s", err=True)
    return False

