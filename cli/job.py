"""``celery -A host job run|status|resume|cancel``: a large input as a job of chunks sized to a
budget, resumable, written in input order exactly once (see producer/job_runner.py and docs/jobs.md)."""

from __future__ import annotations

import json
from typing import Any

import click

from broker_config.app import HostCelery
from broker_config.logs import ensure_logging
from cli.common import (
    EXIT_INCOMPLETE,
    BrokerUnreachable,
    Progress,
    check_broker,
    check_store,
    host_app,
    start_tracing,
)
from producer import jobs
from producer.chunks import JobReport
from producer.job_store import JobStore, RedisJobStore
from workers.inbound import FORMATS

BUDGET = jobs.BUDGET


@click.group()
def job() -> None:
    """Run a large input as a job: chunks sized to a budget, on the bulk queue, resumable."""


def _store(app: HostCelery) -> JobStore:
    return RedisJobStore.from_url(app.host_settings.store)


@job.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True,
              help="Where results go, one JSON line per input item, in input order.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True)
@click.option("--chunk-cpu", type=click.FloatRange(min=0.01), default=BUDGET.cpu_s,
              show_default=True, help="CPU seconds a chunk is sized to (its budget).")
@click.option("--chunk-mem", type=click.FloatRange(min=16), default=BUDGET.mem_mb,
              show_default=True, help="MB of worker memory a chunk's records may hold.")
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="Most chunks in flight (default: two per worker in rotation).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def run(ctx: click.Context, source: str, out_path: str, fmt: str, chunk_cpu: float,
        chunk_mem: float, parallel: int | None, as_json: bool) -> None:
    """Run SOURCE (a file ingest reads) as a new job; prints its id first."""
    app = _ready(ctx)
    store = _store(app)
    job_id = jobs.new_job(store, source, out_path, fmt, chunk_cpu, chunk_mem, parallel)
    click.echo(f"job {job_id}", err=True)
    _go(app, store, job_id, as_json)


@job.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def resume(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Finish a job whose producer stopped: its output is cut back to the last chunk written,
    chunks done meanwhile are taken as they are, the others are sent again."""
    app = _ready(ctx)
    store = _store(app)
    try:
        jobs.reopen(store, job_id)
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _go(app, store, job_id, as_json)


@job.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object (a list without JOB_ID).")
@click.pass_context
def status(ctx: click.Context, job_id: str | None, as_json: bool) -> None:
    """A job's progress, what it waits for, and what its chunks cost (recent jobs without an id)."""
    app = host_app(ctx)
    store = _store(app)
    ids = [job_id] if job_id else store.jobs()
    found = [jobs.status(store, j) for j in ids]
    if job_id and found[0] is None:
        raise click.ClickException(f"no job {job_id}")
    rows = [f for f in found if f is not None]
    if as_json:
        click.echo(json.dumps(rows[0] if job_id else rows))
        return
    for row in rows:
        click.echo(f"{row['job']}  {row['state']:<9} {row['items_written']}/{row['total']} items, "
                   f"{row['chunks']} chunks, cpu/chunk median {row['chunk_cpu_median_s']} s "
                   f"(budget {row['chunk_cpu_budget_s']} s, max {row['chunk_cpu_max_s']} s)"
                   + (f"  waiting: {row['waiting']}" if row["waiting"] else ""))


@job.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job's new state as JSON.")
@click.pass_context
def cancel(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Stop a job: workers skip its chunks, its producer stops; the output keeps what is written."""
    app = host_app(ctx)
    store = _store(app)
    meta = _meta(store, job_id)
    if meta["state"] == "done":
        raise click.ClickException(f"job {job_id} is done: nothing to cancel")
    store.cancel(job_id)
    if as_json:
        click.echo(json.dumps({"job": job_id, "state": "cancelled",
                               "items_written": meta["items_written"]}))
    else:
        click.echo(f"job {job_id} cancelled after {meta['items_written']} items", err=True)


def _ready(ctx: click.Context) -> HostCelery:
    app = host_app(ctx)
    ensure_logging(app.host_settings.log_format, "WARNING")
    check_broker(app)
    check_store(app)
    start_tracing(app, "host-job")
    return app


def _meta(store: JobStore, job_id: str) -> dict[str, Any]:
    meta = store.get(job_id)
    if meta is None:
        raise click.ClickException(f"no job {job_id}")
    return meta


def _go(app: HostCelery, store: JobStore, job_id: str, as_json: bool) -> None:
    with Progress("job").running() as progress:
        def on_progress(done: int, total: int, chunks: int, detail: str) -> None:
            progress.update(done, total, True, detail=f"{chunks} chunks {detail}".strip())

        report = jobs.run_job(app, store, job_id, on_progress)
    _summary(report, as_json)
    if report.state == "interrupted":
        raise BrokerUnreachable(f"{report.error}; once it is back: celery -A host job resume {job_id}")
    if report.state != "done" or report.failed:  # as ingest: 0 only when every item has a result
        raise click.exceptions.Exit(EXIT_INCOMPLETE)


def _summary(report: JobReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.as_dict()), err=True)
        return
    cpus = sorted(c.get("cpu_s", 0.0) for c in report.costs)
    median = f"{cpus[len(cpus) // 2]:.2f}" if cpus else "-"
    click.echo(f"job {report.job_id} {report.state}: {report.written} items in {report.chunks} "
               f"chunks, {report.resent} sent again, {report.failed} failed, "
               f"{report.elapsed_s:.1f}s; chunk CPU median {median}s", err=True)
