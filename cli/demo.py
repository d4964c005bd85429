"""``celery -A host demo``: the whole system on one machine, started and stopped in one command."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib.resources import as_file, files
from pathlib import Path
from types import FrameType
from typing import Any

import click
from celery.bin.base import CeleryCommand
from rich.console import Console
from rich.table import Table

from broker_config.app import HostCelery, create_app
from cli.common import EXIT_INCOMPLETE, Progress, check_broker, host_app
from cli.feed import FeedReport, feed, read_lines
from cli.processes import WorkerProcess, node_name
from cli.redis_server import RedisServer
from workers.deadletter import RedisDeadLetterStore
from workers.inbound import Limits
from workers.logs import ensure_logging


@click.command(cls=CeleryCommand)
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False),
              help="Messages to feed (default: the sample that ships with host).")
@click.option("--workers", "n_workers", type=click.IntRange(1, 16), default=3, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Messages per task.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="Keep the results (JSON Lines) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def demo(ctx: click.Context, input_path: str | None, n_workers: int, batch: int,
         out_path: str | None, as_json: bool) -> None:
    """Run a small fleet on this machine and feed it real messages.

    With no HOST_BROKER_URL set, an embedded Redis is started on a free port. Everything the
    demo starts is stopped at the end, on Ctrl-C and on SIGTERM.
    """
    app = host_app(ctx)
    ensure_logging(app.host_settings.log_format, "WARNING")
    console = Console(stderr=True)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="host-demo-") as tmp:
        try:
            report = _run(stack, app, console, Path(tmp), input_path, n_workers, batch,
                          out_path, as_json)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping everything the demo started[/]")
            ctx.exit(130)
    if not report.complete:
        ctx.exit(EXIT_INCOMPLETE)


def _run(stack: ExitStack, app: HostCelery, console: Console, tmp: Path, input_path: str | None,
         n_workers: int, batch: int, out_path: str | None, as_json: bool) -> FeedReport:
    env = dict(os.environ)
    settings = app.host_settings
    if "HOST_BROKER_URL" not in os.environ:
        server = RedisServer().start()
        stack.callback(server.stop)
        console.print(f"embedded Redis on port {server.port}")
        env["HOST_BROKER_URL"] = server.url
        settings = settings.replace(broker_url=server.url)
    fleet_app = create_app(settings)
    check_broker(fleet_app)
    workers = stack.enter_context(_fleet(fleet_app, env, n_workers, tmp, console))
    console.print(f"{len(workers)} workers ready: {', '.join(w.name for w in workers)} "
                  f"(logs in {tmp})")
    store = RedisDeadLetterStore.from_url(settings.effective_store_url, settings.deadletter_keep)
    limits = Limits(settings.max_line_bytes, settings.max_text_chars)
    with (_input(input_path) as (source, name), _output(out_path) as out,
          Progress("demo").running() as progress):
        report = feed(fleet_app, read_lines(source, name, "auto", limits), out, store,
                      batch=batch, progress=progress.update)
    _print_summary(console, report, as_json)
    return report


@contextmanager
def _fleet(app: HostCelery, env: dict[str, str], n: int, tmp: Path,
           console: Console) -> Iterator[list[WorkerProcess]]:
    workers = [WorkerProcess(node_name(f"w{i}"), env, concurrency=1, log_path=tmp / f"w{i}.log")
               for i in range(1, n + 1)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready(app, timeout=60)
        yield workers
    finally:
        console.print("stopping workers")
        for w in workers:
            w.stop()


@contextmanager
def _input(input_path: str | None) -> Iterator[tuple[Any, str]]:
    if input_path:
        with open(input_path, "rb") as f:
            yield f, input_path
        return
    with as_file(files("cli") / "data" / "sample.txt") as path, open(path, "rb") as f:
        yield f, "sample.txt"


@contextmanager
def _output(out_path: str | None) -> Iterator[Any]:
    with open(out_path or os.devnull, "w", encoding="utf-8") as out:
        yield out


def _print_summary(console: Console, report: FeedReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    table = Table(title="host demo", show_header=True)
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("inputs", str(report.inputs))
    table.add_row("analysed", str(report.analysed))
    table.add_row("rejected (dead-lettered)", str(report.rejected))
    table.add_row("failed or missing", str(report.failed + len(report.missing)))
    for label, n in sorted(report.by_label.items()):
        table.add_row(f"  sentiment {label}", str(n))
    for worker, n in sorted(report.by_worker.items()):
        table.add_row(f"  by {worker}", str(n))
    for reason, n in report.by_reason.most_common():
        table.add_row(f"  rejected: {reason}", str(n))
    Console().print(table)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt

