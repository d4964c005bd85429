"""``celery -A host api``: the HTTP API for the systems that send work; ``api keys``: its keys."""

from __future__ import annotations

import json
import os
import time

import click

from api.keys import RedisKeyStore, new_key, revoke
from broker_config import tracing
from broker_config.app import ConfigurationFailed, HostCelery
from broker_config.logs import ensure_logging
from broker_config.settings import ConfigError, Settings
from cli.common import check_broker, check_store, start_tracing


def _app(ctx: click.Context) -> HostCelery:
    """The host app with the API's settings: read as for any command, but with no control
    secret allowed (exit 78 when one is set)."""
    app = ctx.obj.app
    if not isinstance(app, HostCelery):
        raise click.UsageError("this command needs the host app: run it as `celery -A host ...`")
    try:
        app._host_settings = Settings.from_env(os.environ, api=True)
    except ConfigError as exc:
        raise ConfigurationFailed(exc) from None
    return app


@click.group(invoke_without_command=True)
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port to listen on (default HOST_API_PORT).")
@click.option("--address", default=None, help="Address to listen on (default HOST_API_ADDRESS).")
@click.pass_context
def api(ctx: click.Context, port: int | None, address: str | None) -> None:
    """Serve the HTTP API: messages, jobs and the fleet's summary for the systems that send
    work (docs/api.md). It holds no control secret: no route can drain or restore a worker."""
    if ctx.invoked_subcommand is not None:
        return
    # The web stack (uvicorn, FastAPI, pydantic) loads only when serving: `api keys` and every
    # other command start without it.
    import uvicorn

    from api.app import create_api  # the web stack, as above
    from api.service import ApiService, Stores  # the web stack, as above

    app = _app(ctx)
    settings = app.host_settings
    ensure_logging(settings.log_format, settings.log_level)
    check_broker(app)
    check_store(app)
    start_tracing(app, "host-api")
    service = ApiService(app, settings, Stores.redis(settings))
    web = create_api(service)
    tracing.instrument_asgi(web)  # a span per request, parent of its messages' (HOST_TRACING)
    config = uvicorn.Config(
        web, host=address or settings.api_address,
        port=port or settings.api_port, log_config=None, access_log=False,
        timeout_graceful_shutdown=int(settings.api_shutdown_timeout), backlog=4096,
        # a kept-alive connection idle this long is closed; clients reconnect
        timeout_keep_alive=30, server_header=False)
    uvicorn.Server(config).run()


@api.group()
def keys() -> None:
    """Add, list and revoke the API's keys (in the store; the API sees changes within a second)."""


def _key_store(ctx: click.Context) -> RedisKeyStore:
    app = _app(ctx)
    check_store(app)
    return RedisKeyStore(app.host_settings.store.client(decode_responses=True, socket_timeout=5))


@keys.command("add")
@click.argument("name")
@click.option("--scopes", default="submit,read", show_default=True,
              help="Comma-separated: submit (send messages), read (outcomes, fleet), jobs.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0,
              help="Requests per second (default: HOST_API_RATE).")
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
@click.pass_context
def add(ctx: click.Context, name: str, scopes: str, rate: float, as_json: bool) -> None:
    """Create a key called NAME; prints its token, which is shown only this once."""
    store = _key_store(ctx)
    try:
        key, token = new_key(name, tuple(s.strip() for s in scopes.split(",") if s.strip()), rate)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    store.put(key)
    if as_json:
        click.echo(json.dumps({**key.public(), "token": token}))
    else:
        click.echo(token)
        click.echo(f"key {key.id} ({key.name}): scopes {','.join(key.scopes)}; the token above "
                   "is shown only once", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON list.")
@click.pass_context
def list_keys(ctx: click.Context, as_json: bool) -> None:
    """Every key (never its secret), with what it sent."""
    store = _key_store(ctx)
    rows = [{**k.public(), "counts": store.counts(k.id)}
            for k in sorted(store.all().values(), key=lambda k: k.created_at)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        state = "revoked" if r["revoked_at"] else "live"
        sent = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items())) or "nothing sent"
        click.echo(f"{r['id']}  {r['name']:<20} {state:<8} {','.join(r['scopes']):<18} "
                   f"{r['rate'] or 'default'}/s  {sent}")


@keys.command("revoke")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
@click.pass_context
def revoke_key(ctx: click.Context, key_id: str, as_json: bool) -> None:
    """Revoke a key: its requests get 401 within a second, on every API process."""
    store = _key_store(ctx)
    try:
        key = revoke(store, key_id)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(key.public()))
    else:
        click.echo(f"key {key.id} ({key.name}) revoked at "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(key.revoked_at or 0))}Z",
                   err=True)
