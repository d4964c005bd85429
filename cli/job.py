"""``celery -A host job run|status|resume|cancel``: a large input as a job of chunks sized to a
budget, resumable, written in input order exactly once (see cli/jobs.py and docs/jobs.md)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import click

from broker_config.app import HostCelery
from broker_config.logs import ensure_logging
from broker_config.policy_file import load_policy
from broker_config.queues import BULK
from cli.common import (
    EXIT_INCOMPLETE,
    BrokerUnreachable,
    Progress,
    check_broker,
    check_store,
    host_app,
)
from cli.feed import BROKEN, read_lines
from cli.jobs import Budget, JobReport, JobRunner, JobStore, fleet_pressure, new_job_id
from healthcheck.store import RedisHealthStore
from workers.inbound import FORMATS, Limits

BUDGET = Budget()


@click.group()
def job() -> None:
    """Run a large input as a job: chunks sized to a budget, on the bulk queue, resumable."""


def _store(app: HostCelery) -> JobStore:
    return JobStore.from_url(app.host_settings.store)


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
    job_id = new_job_id()
    meta = {"input": os.path.abspath(source), "out": os.path.abspath(out_path), "format": fmt,
            "chunk_cpu": chunk_cpu, "chunk_mem": chunk_mem, "parallel": parallel,
            "state": "running", "created_at": time.time(), "items_written": 0, "out_bytes": 0,
            "total": _count_lines(source), "waiting": ""}
    store.create(job_id, meta)
    click.echo(f"job {job_id}", err=True)
    Path(out_path).write_bytes(b"")
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
    meta = _meta(store, job_id)
    if meta["state"] in ("done", "cancelled"):
        raise click.ClickException(f"job {job_id} is {meta['state']}: nothing to resume")
    with open(meta["out"], "r+b") as out:
        out.truncate(int(meta["out_bytes"]))
    store.update(job_id, state="running")
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
    found = [_status(store, j) for j in ids]
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
    return app


def _meta(store: JobStore, job_id: str) -> dict[str, Any]:
    meta = store.get(job_id)
    if meta is None:
        raise click.ClickException(f"no job {job_id}")
    return meta


def _status(store: JobStore, job_id: str) -> dict[str, Any] | None:
    meta = store.get(job_id)
    if meta is None:
        return None
    costs = store.costs(job_id)
    cpus = sorted(c.get("cpu_s", 0.0) for c in costs)
    elapsed = max(1e-9, float(meta.get("updated_at", meta["created_at"])) - meta["created_at"])
    rate = meta["items_written"] / elapsed
    left = max(0, int(meta.get("total", 0)) - meta["items_written"])
    return {"job": job_id, "state": meta["state"], "input": meta["input"], "out": meta["out"],
            "items_written": meta["items_written"], "total": meta.get("total", 0),
            "chunks": len(costs), "rate_per_s": round(rate, 1),
            "eta_s": round(left / rate, 1) if rate and meta["state"] == "running" else None,
            "waiting": meta.get("waiting", ""), "chunk_cpu_budget_s": meta["chunk_cpu"],
            "chunk_cpu_median_s": cpus[len(cpus) // 2] if cpus else None,
            "chunk_cpu_max_s": cpus[-1] if cpus else None,
            "chunk_rss_max_mb": max((c.get("rss_mb", 0.0) for c in costs), default=None),
            "costs": costs}


def _go(app: HostCelery, store: JobStore, job_id: str, as_json: bool) -> None:
    meta = _meta(store, job_id)
    settings = app.host_settings
    limits = Limits(settings.max_line_bytes, settings.max_text_chars)
    budget = Budget(cpu_s=float(meta["chunk_cpu"]), mem_mb=float(meta["chunk_mem"]))
    health = RedisHealthStore.from_url(settings.store)
    soft = {m: t.soft for m, t in load_policy(settings.policy_file or None).thresholds.items()
            if t.soft}
    parallel = meta.get("parallel")
    written = int(meta["items_written"])

    def fleet() -> tuple[float, int]:
        workers = health.load()
        in_rotation = {n for n, w in workers.items() if w.consumes(BULK)}
        return fleet_pressure(health.reports(), in_rotation, soft), len(in_rotation)

    runner_parallel = parallel or max(2, 2 * fleet()[1])
    with ExitStack() as stack:
        inp: IO[bytes] = stack.enter_context(open(meta["input"], "rb"))
        out: IO[bytes] = stack.enter_context(open(meta["out"], "ab"))
        lines = itertools.islice(read_lines(inp, meta["input"], meta["format"], limits),
                                 written, None)
        with Progress("job").running() as progress:
            def on_progress(done: int, total: int, chunks: int, detail: str) -> None:
                progress.update(done, total, True, detail=f"{chunks} chunks {detail}".strip())

            runner = JobRunner(app, store, job_id, out, budget, runner_parallel, fleet,
                               on_progress, total=int(meta.get("total", 0)))
            report = runner.run(lines, written, store.plan(job_id))
    if report.state == "done":
        store.finish(job_id, "done")
    _summary(report, as_json)
    if report.state == "interrupted":
        with contextlib.suppress(*BROKEN):
            store.update(job_id, state="interrupted")
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


def _count_lines(path: str) -> int:
    """Lines in the file (items, for the progress total), counted without decoding."""
    count = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
    return count
