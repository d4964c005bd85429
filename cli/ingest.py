"""``celery -A host ingest``: queue inbound messages and write one result line per input."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from typing import IO

import click
from celery.bin.base import CeleryCommand

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
from producer.feed import feed, read_lines
from producer.inflight import FeedReport
from workers.deadletter import Aside
from workers.inbound import FORMATS, Limits

#: How long ingest waits at its end for dead-letter records the store did not take at once.
DEAD_LETTER_FLUSH_S = 30.0


@click.command(cls=CeleryCommand)
@click.argument("source", default="-", type=click.Path(allow_dash=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="Input layout; auto detects JSON, TSV or text line by line.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Where results go, one JSON line per input (default: standard output).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Messages per task.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Give up after this many seconds with no task sent and no new result.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Send at most this many inputs a second, a steady stream (default: as fast "
                   "as the fleet takes them).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def ingest(ctx: click.Context, source: str, fmt: str, out_path: str, batch: int, timeout: float,
           rate: float | None, as_json: bool) -> None:
    """Queue inbound messages from SOURCE (a file, or - for standard input) for analysis.

    Every input line ends up in the output exactly once: as a result, or as a dead-letter
    record with its reason. Exit code 0 only when every input is accounted for.
    """
    app = host_app(ctx)
    settings = app.host_settings
    ensure_logging(settings.log_format, "WARNING")
    if batch > settings.max_batch:
        raise click.BadParameter(f"at most HOST_MAX_BATCH={settings.max_batch}", param_hint="--batch")
    check_broker(app)
    if not check_store(app, optional=True):
        # Dead letters are all ingest writes there: set aside until it answers (Aside), as
        # when it goes away mid-run. A producer that refused to start would stop the inflow.
        click.echo(f"warning: host's store {settings.store} does not answer; dead letters "
                   f"wait in memory until it does (and are in the output all the same)",
                   err=True)
    start_tracing(app, "host-ingest")
    limits = Limits(settings.max_line_bytes, settings.max_text_chars)
    # Framing rejections go to the store without ever holding the feed up (Aside).
    store = Aside.from_url(settings.store, settings.deadletter_keep)
    with ExitStack() as stack:
        inp: IO[bytes] = (sys.stdin.buffer if source == "-"
                          else stack.enter_context(open(source, "rb")))
        out: IO[str] = (sys.stdout if out_path == "-"
                        else stack.enter_context(open(out_path, "w", encoding="utf-8")))
        # a file name that is not UTF-8 (surrogate-escaped bytes) is written escaped in refs
        name = "stdin" if source == "-" else source.encode("utf-8", "backslashreplace").decode()
        with Progress("ingest").running() as progress:
            report = feed(app, read_lines(inp, name, fmt, limits), out, store, fmt=fmt,
                          batch=batch, idle_timeout=timeout, progress=progress.update, rate=rate)
    unstored = store.flush(DEAD_LETTER_FLUSH_S)
    if unstored:
        click.echo(f"warning: {unstored} dead-letter record(s) could not be stored (the store "
                   f"did not answer for {DEAD_LETTER_FLUSH_S:.0f} s); they are in the output",
                   err=True)
    print_summary(report, as_json)
    if report.unreachable:
        raise BrokerUnreachable(report.unreachable)
    if not report.complete:
        ctx.exit(EXIT_INCOMPLETE)


def print_summary(report: FeedReport, as_json: bool) -> None:
    """The end-of-run summary, on standard error (standard output may carry results)."""
    if as_json:
        click.echo(json.dumps(report.as_dict()), err=True)
        return
    lines = [f"inputs {report.inputs}: analysed {report.analysed}, rejected {report.rejected}, "
             f"failed {report.failed}, missing {len(report.missing)} "
             f"in {report.elapsed_s:.1f}s"]
    if report.by_label:
        lines.append("sentiment: " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_label.items())))
    if report.by_worker:
        lines.append("workers: " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_worker.items())))
    if report.by_reason:
        lines.append("rejected: " + ", ".join(f"{k} {v}" for k, v in report.by_reason.most_common()))
    if report.resent:
        lines.append(f"sent again: {report.resent} task(s) unanswered when the Redis holding the "
                     "queues or the results changed (a failover or a restart may lose them)")
    if report.unreachable:
        lines.append(report.unreachable)
    if report.stopped:
        lines.append(f"stopped before the end of the input, after {report.inputs} inputs")
    if report.missing:
        lines.append("missing: " + ", ".join(report.missing[:10])
                     + (" …" if len(report.missing) > 10 else ""))
    click.echo("\n".join(lines), err=True)
