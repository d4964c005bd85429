"""A private Sentinel group for failover tests: a master, its replicas and three sentinels,
each a ``redis-server`` process on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from harness.redis_server import (
    RedisServer,
    free_port,
    redis_server_binary,
    tls_client,
)


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
