"""A ``celery -A host api`` process on a free port: for the demo, the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from harness.redis_server import free_port

REPO = Path(__file__).resolve().parents[1]
#: Variables the API must not be started with (it refuses to: exit 78).
SECRETS = ("HOST_CONTROL_SECRET", "HOST_CONTROL_SECRET_PREVIOUS")


@dataclass
class ApiServer:
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_url(self) -> str:
        return self.env.get("HOST_STORE_URL") or self.env["HOST_BROKER_URL"]

    def start(self, wait: bool = True) -> Self:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "host", "api", "--port", str(self.port),
                 "--address", "127.0.0.1"], env=self.env, cwd=REPO, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1.0) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited ({self.proc.returncode}):\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"the API was not ready in {timeout}s:\n"
                           f"{self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the API answers what it holds, then exits); SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


def api_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the control secret, which the API must not hold."""
    return {k: v for k, v in env.items() if k not in SECRETS}
