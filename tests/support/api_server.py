"""A real ``celery -A host api`` process on a free port, and a key to call it with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from api.keys import RedisKeyStore, new_key
from harness.redis_server import free_port
from tests.support.cli import REPO


@dataclass
class ApiServer:
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ApiServer:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "host", "api", "--port", str(self.port),
             "--address", "127.0.0.1"], env=self.env, cwd=REPO, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the API exited ({self.proc.returncode}):\n"
                                     f"{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the API was not ready in {timeout}s:\n"
                             f"{self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def key(self, scopes: tuple[str, ...] = ("submit", "read", "jobs"), rate: float = 0.0,
            name: str = "test") -> str:
        """A new key's token, written to the store as `api keys add` writes it."""
        key, token = new_key(name, scopes, rate)
        client = redis.Redis.from_url(self.store_url, decode_responses=True)
        RedisKeyStore(client).put(key)
        client.close()
        return token

    @property
    def store_url(self) -> str:
        return self.env.get("HOST_STORE_URL") or self.env["HOST_BROKER_URL"]

    def client(self, token: str, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                            timeout=kwargs.pop("timeout", 30.0), **kwargs)


def poll_messages(client: httpx.Client, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Every message's outcome, read by id until none is pending (or the deadline passes)."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(done) < len(ids):
        for message_id in ids:
            if message_id in done:
                continue
            r = client.get(f"/v1/messages/{message_id}")
            assert r.status_code == 200, r.text
            if r.json()["status"] != "pending":
                done[message_id] = r.json()
        if len(done) < len(ids):
            time.sleep(0.2)
    return done


def pieces(data: bytes, size: int = 65_536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]
