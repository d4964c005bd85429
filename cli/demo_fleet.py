"""The demo's processes: its workers and its health checker, each started, waited for and
stopped by a context manager."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console

from broker_config.app import HostCelery
from harness.processes import WorkerProcess, node_name, terminate
from harness.redis_server import free_port


@contextmanager
def workers_of(app: HostCelery, env: dict[str, str], n: int, tmp: Path,
               console: Console) -> Iterator[list[WorkerProcess]]:
    """``n`` workers, started and ready, stopped on the way out."""
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
def checker_of(env: dict[str, str], tmp: Path, console: Console) -> Iterator[None]:
    """The health checker, ready (its /readyz answers), stopped on the way out."""
    log = (tmp / "checker.log").open("ab")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "healthcheck",
                             "--metrics-port", str(port), "--tick", "0.1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(proc, port, tmp / "checker.log")
        console.print(f"fleet page: http://127.0.0.1:{port}/   metrics: http://127.0.0.1:{port}/metrics")
        yield
    finally:
        console.print("stopping the checker")
        terminate(proc)
        log.close()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 30) -> None:
    """Poll the checker's /readyz until it answers 200 (it then receives events)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"the checker exited; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"the checker did not become ready in {timeout:g}s; see {log}")
