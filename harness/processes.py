"""Real ``celery -A host worker`` processes, started and stopped by the demo and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from celery import Celery


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM ``proc`` and wait; SIGKILL it if it has not exited after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def node_name(short: str) -> str:
    """A full worker name on this machine: ``w1`` -> ``w1@<hostname>`` (what ``-n w1@%h`` gives);
    a name with its own ``@host`` is kept (a fleet that looks like several machines)."""
    return short if "@" in short else f"{short}@{socket.gethostname()}"


class WorkerProcess:
    """One worker child process, in its own session so a terminal's Ctrl-C reaches only us.

    Args:
        name: the full node name (``w1@host``).
        env: the environment (``HOST_*`` settings) the worker runs with.
        queues: the work queues it consumes.
        concurrency: its pool size.
        log_path: where its output goes (discarded when None).
        extra_args: more ``celery worker`` options.
        app: what ``-A`` names (``host``; benchmarks name their plain baseline).
        loglevel: the worker's ``-l``.
        prefix: a command that runs it (tests: ``ip netns exec NS``).
    """

    def __init__(self, name: str, env: Mapping[str, str], queues: Sequence[str] = (),
                 concurrency: int = 1, log_path: Path | None = None,
                 extra_args: Sequence[str] = (), app: str = "host", loglevel: str = "INFO",
                 prefix: Sequence[str] = ()) -> None:
        self.prefix = tuple(prefix)
        self.name = name
        self.env = dict(env)
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.log_path = log_path
        self.extra_args = tuple(extra_args)
        self.app = app
        self.loglevel = loglevel
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        """The command line that starts this worker."""
        cmd = [*self.prefix, sys.executable, "-m", "celery", "-A", self.app, "worker", "-n", self.name,
               "-c", str(self.concurrency), "--without-mingle", "--without-gossip",
               "-l", self.loglevel]
        if self.queues:
            cmd += ["-Q", ",".join(self.queues)]
        return cmd + list(self.extra_args)

    def start(self) -> WorkerProcess:
        """Start the process (it is not ready yet: see ``wait_ready``)."""
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self._log = out = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, app: Celery, timeout: float = 30.0) -> None:
        """Poll until the worker answers a ping addressed to it alone.

        Raises:
            RuntimeError: it exited or did not answer in time (its log is named).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited early; see {self.log_path}")
            replies = app.control.ping(destination=[self.name], timeout=0.5) or []
            if any(self.name in reply for reply in replies):
                return
        raise RuntimeError(f"worker {self.name} did not answer within {timeout}s; see {self.log_path}")

    @property
    def pid(self) -> int | None:
        """The main process id while it runs."""
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """True while the main process runs."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send a signal to the worker and its pool children."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL of the whole group after ``timeout``."""
        if self.proc is not None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait()
            self._kill_leftovers()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _kill_leftovers(self) -> None:
        # Pool children that outlived their parent still belong to its process group.
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
