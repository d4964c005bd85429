"""``celery -A host demo``: the whole system on one machine, started and stopped in one command.

An embedded Redis (when no broker is configured), three workers, the health checker, the HTTP
API, and a stream of real messages: most go in as ``ingest`` sends them, a share through the
API (one HTTP request each, waiting for its analysis). A third of the way through, one worker's
CPU is injected to 100%: the checker drains it, the stream goes on through the healthy
workers, and the summary shows how long that took and that every message was still analysed.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path
from types import FrameType
from typing import Any

import click
from celery.bin.base import CeleryCommand
from rich.console import Console
from rich.table import Table

from broker_config.app import HostCelery
from broker_config.logs import ensure_logging
from cli.common import EXIT_INCOMPLETE, Progress, check_broker, host_app
from cli.demo_api import ApiSide, api_side
from cli.demo_fleet import checker_of, workers_of
from harness.redis_server import RedisServer
from healthcheck.actuator import control_reply
from healthcheck.audit import Kind, parse_all
from healthcheck.store import RedisHealthStore
from producer.feed import feed, read_lines
from producer.inflight import FeedReport
from workers.app import create_app
from workers.deadletter import RedisDeadLetterStore
from workers.inbound import Limits

#: Wear reports four times a second, so the demo's drain happens within seconds.
DEMO_WEAR_INTERVAL = "0.25"
#: Worn, not busy: its pool burns the CPU (reported at 100 %) with nothing done for 3 s
#: before each task. A worker at 100 % CPU that gets its work done is busy, and stays in.
WEAR = "cpu=100,spin=3"


@click.command(cls=CeleryCommand)
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False),
              help="Messages to feed (default: the sample that ships with host).")
@click.option("--workers", "n_workers", type=click.IntRange(2, 16), default=3, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Messages per task.")
@click.option("--rate", type=click.FloatRange(min=0), default=None,
              help="Messages per second (default: 20 for the sample, unlimited for --input).")
@click.option("--no-wear", is_flag=True, help="Do not wear a worker out midway.")
@click.option("--api-share", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Share of the messages sent through the HTTP API (0: no API).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False),
              help="Keep the results (JSON Lines) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def demo(ctx: click.Context, input_path: str | None, n_workers: int, batch: int,
         rate: float | None, no_wear: bool, api_share: float, out_path: str | None,
         as_json: bool) -> None:
    """Run a small fleet and its health checker on this machine, and feed it real messages.

    With no HOST_BROKER_URL set, an embedded Redis is started on a free port. Everything the
    demo starts is stopped at the end, on Ctrl-C and on SIGTERM.
    """
    app = host_app(ctx)
    ensure_logging(app.host_settings.log_format, "WARNING")
    console = Console(stderr=True)
    signal.signal(signal.SIGTERM, _interrupt)
    if rate is None:
        rate = 0.0 if input_path else 20.0
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="host-demo-") as tmp:
        try:
            run = Run(console, Path(tmp), n_workers, batch, rate or None, not no_wear, api_share)
            report, story = run.go(stack, app, input_path, out_path)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping everything the demo started[/]")
            ctx.exit(130)
    _print_summary(report, story, run.api, as_json)
    if not report.complete or (run.api is not None and not run.api.complete):
        ctx.exit(EXIT_INCOMPLETE)


@dataclass
class Story:
    """What happened to the worn worker, for the summary."""

    worker: str | None = None
    injected_at: float | None = None
    drained: dict[str, Any] = field(default_factory=dict)
    started_after_verdict: int = 0
    results_after_verdict: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"worn_worker": self.worker, "injected_at": self.injected_at, **self.drained,
                "tasks_started_on_it_after_verdict": self.started_after_verdict,
                "analysed_after_verdict_by_others": self.results_after_verdict}


@dataclass
class Run:
    """One demo run: what it starts, and when it wears a worker out."""

    console: Console
    tmp: Path
    n_workers: int
    batch: int
    rate: float | None
    wear: bool
    api_share: float = 0.0
    story: Story = field(default_factory=Story)
    api: ApiSide | None = None
    records: list[tuple[str, float]] = field(default_factory=list)

    def go(self, stack: ExitStack, app: HostCelery, input_path: str | None,
           out_path: str | None) -> tuple[FeedReport, Story]:
        env, settings = self._broker(stack, app)
        fleet_app = create_app(settings)
        check_broker(fleet_app)
        workers = stack.enter_context(workers_of(fleet_app, env, self.n_workers, self.tmp, self.console))
        stack.enter_context(checker_of(env, self.tmp, self.console))
        self.console.print(f"{len(workers)} workers ready: {', '.join(w.name for w in workers)}; "
                           f"checker running (logs in {self.tmp})")
        if self.api_share > 0:
            self.api = stack.enter_context(api_side(env, settings, self.tmp, self.console))
        store = RedisDeadLetterStore.from_url(settings.store, settings.deadletter_keep)
        limits = Limits(settings.max_line_bytes, settings.max_text_chars)
        victim = workers[0].name
        with (_input(input_path) as (source, name, total), _output(out_path) as out,
              Progress("demo").running() as progress):
            def on_progress(done: int, sent: int, final: bool) -> None:
                progress.update(done, sent, final)
                if self.wear and self.story.injected_at is None and sent >= total / 3:
                    self._wear_out(fleet_app, victim)

            lines = read_lines(source, name, "auto", limits)
            if self.api is not None:  # a share of the lines goes through the HTTP API instead
                lines = self.api.divert(lines, self.api_share)
            report = feed(fleet_app, lines, out, store, batch=self.batch, progress=on_progress,
                          rate=self.rate, on_record=self._keep)
            if self.api is not None:
                self.api.finish()
        if self.story.injected_at is not None:
            self._tell(RedisHealthStore.from_url(settings.store), victim)
        return report, self.story

    def _broker(self, stack: ExitStack, app: HostCelery) -> tuple[dict[str, str], Any]:
        env = dict(os.environ)
        env.setdefault("HOST_WEAR_INTERVAL", DEMO_WEAR_INTERVAL)
        settings = app.host_settings
        if "HOST_BROKER_URL" not in os.environ:
            server = RedisServer().start()
            stack.callback(server.stop)
            self.console.print(f"embedded Redis on port {server.port}")
            env["HOST_BROKER_URL"] = server.url
            settings = settings.replace(broker_url=server.url)
        return env, settings

    def _wear_out(self, app: HostCelery, worker: str) -> None:
        self.story.worker, self.story.injected_at = worker, time.time()
        control_reply(app, "host_inject", worker, {"spec": WEAR}, timeout=3,
                      secret=app.host_settings.control_secret)
        self.console.print(f"[bold red]wearing {worker} out ({WEAR})[/]")

    def _keep(self, record: dict[str, Any]) -> None:
        if record.get("status") == "analysed":
            self.records.append((str(record["worker"]), float(record["started_at"])))

    def _tell(self, store: RedisHealthStore, worker: str) -> None:
        history = parse_all(store.history(worker))
        drained = next((r for r in history if r.to_state == "DRAINING"), None)
        confirmed = next((r for r in history if r.kind is Kind.DRAIN_CONFIRMED), None)
        if drained is None or confirmed is None or self.story.injected_at is None:
            self.story.drained = {"drained": False}
            return
        verdict_at = confirmed.get("verdict_at")
        self.story.drained = {
            "drained": True, "reason": drained.get("reason"),
            "drained_after_injection_s": round(verdict_at - self.story.injected_at, 3),
            "confirm_s": round(confirmed.get("confirm_s", 0.0), 4),
            "state_now": (w.state.value if (w := store.get(worker)) else None),
        }
        self.story.started_after_verdict = sum(1 for w, t in self.records
                                               if w == worker and t > verdict_at)
        self.story.results_after_verdict = sum(1 for w, t in self.records
                                               if w != worker and t > verdict_at)


@contextmanager
def _input(input_path: str | None) -> Iterator[tuple[Any, str, int]]:
    if input_path:
        with open(input_path, "rb") as f:
            yield f, input_path, _count_lines(Path(input_path))
        return
    with as_file(files("cli") / "data" / "sample.txt") as path, open(path, "rb") as f:
        yield f, "sample.txt", _count_lines(path)


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


@contextmanager
def _output(out_path: str | None) -> Iterator[Any]:
    with open(out_path or os.devnull, "w", encoding="utf-8") as out:
        yield out


def _print_summary(report: FeedReport, story: Story, api: ApiSide | None,
                   as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**report.as_dict(), "drain": story.as_dict(),
                               "api": api.as_dict() if api else None}))
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
    if api is not None:
        table.add_row("through the HTTP API (one request each)", str(api.sent))
        table.add_row("  analysed", str(api.analysed))
        table.add_row("  refused at the door or dead-lettered", str(sum(api.rejected.values())))
        table.add_row("  failed or unanswered", str(api.sent - api.answered))
    console = Console()
    console.print(table)
    if story.worker:
        d = story.drained
        if d.get("drained"):
            console.print(
                f"[bold]{story.worker}[/] was worn out ({WEAR}) and drained "
                f"{d['drained_after_injection_s']:.2f} s later ({d['reason']}); it confirmed in "
                f"{d['confirm_s'] * 1000:.0f} ms and is now {d['state_now']}. It started "
                f"{story.started_after_verdict} tasks after the verdict; the healthy workers "
                f"analysed the {story.results_after_verdict} messages that came after it.")
        else:
            console.print(f"[yellow]{story.worker} was worn out but the stream ended before "
                          "it was drained: try a longer --input or a lower --rate[/]")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
