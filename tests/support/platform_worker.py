"""A worker as a platform runs it: deploy/entrypoint.sh, signalled the way Docker, Kubernetes
and systemd signal a container's first process (SIGTERM to it alone), with its status port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.processes import node_name
from harness.redis_server import free_port
from tests.support.cli import REPO

ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"
CELERY = str(Path(sys.executable).parent / "celery")


class PlatformWorker:
    """``deploy/entrypoint.sh worker`` in its own session, with ``HOST_WORKER_STATUS_PORT``."""

    def __init__(self, short: str, env: Mapping[str, str], log_path: Path,
                 args: tuple[str, ...] = ("-c", "1")) -> None:
        self.name = node_name(short)
        self.port = free_port()
        self.env = {**env, "WORKER_NAME": self.name, "CELERY": CELERY,
                    "HOST_WORKER_STATUS_PORT": str(self.port)}
        self.log_path = log_path
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PlatformWorker:
        self.proc = subprocess.Popen([str(ENTRYPOINT), "worker", *self.args], env=self.env,
                                     cwd=REPO, stdout=self.log_path.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def status(self, path: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of the worker's /readyz or /healthz; (0, {}) if no answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            if self.status("/readyz")[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready within {timeout}s:\n{self.tail()}")

    def pre_stop(self, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """What a Kubernetes preStop hook runs: ``entrypoint.sh drain`` for this worker."""
        return subprocess.run([str(ENTRYPOINT), "drain"], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    def sigterm(self) -> float:
        """SIGTERM the entrypoint alone (as a platform does); the wall-clock time it was sent."""
        assert self.proc is not None
        at = time.time()
        self.proc.send_signal(signal.SIGTERM)
        return at

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Whatever is left of it (the test's own clean-up)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(line[:300] for line in text.splitlines()[-lines:])
