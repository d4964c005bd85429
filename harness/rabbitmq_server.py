"""A private RabbitMQ node on free ports: the tests' and benchmarks' own AMQP broker.

Debian's ``rabbitmq-server`` wrapper switches to the rabbitmq user and drops the environment,
so the node is started from ``/usr/lib/rabbitmq/bin`` as the current user, with its node
name, AMQP and distribution ports, Erlang port mapper, cookie (``HOME``), data, logs, feature
flags and plugins all in one temporary directory. The machine's own node on 5672 is never
touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from harness.redis_server import free_port

#: Where Debian (and RabbitMQ's generic unix package) put the node's own scripts.
SBIN_CANDIDATES = (Path("/usr/lib/rabbitmq/bin"), Path("/usr/local/lib/rabbitmq/sbin"))


class RabbitServerNotFound(RuntimeError):
    """No rabbitmq-server installation to start a private node from."""


def rabbitmq_sbin() -> Path:
    """The directory holding ``rabbitmq-server`` and ``rabbitmqctl`` (not Debian's wrappers).

    Raises:
        RabbitServerNotFound: with directions to install it.
    """
    for candidate in SBIN_CANDIDATES:
        if (candidate / "rabbitmq-server").exists():
            return candidate
    raise RabbitServerNotFound("no RabbitMQ found: install it (apt-get install rabbitmq-server)")


class RabbitServer:
    """One private RabbitMQ node, stopped (and its files removed) by ``stop``.

    Args:
        consumer_timeout_ms: the node's delivery acknowledgement timeout (RabbitMQ's default
            is 30 minutes; tests shorten it to prove nothing is held that long).
    """

    def __init__(self, consumer_timeout_ms: int = 1_800_000) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.consumer_timeout_ms = consumer_timeout_ms
        self._dir = tempfile.TemporaryDirectory(prefix="host-rabbitmq-")
        self.base = Path(self._dir.name)
        self.node = f"host{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"consumer_timeout = {consumer_timeout_ms}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )

    def listen_also(self, addresses: list[str]) -> None:
        """Listen on ``addresses`` too, on the same port (a test's network namespaces);
        before ``start``."""
        conf = self.base / "rabbitmq.conf"
        extra = "".join(f"listeners.tcp.{n} = {a}:{self.port}\n"
                        for n, a in enumerate(addresses, start=2))
        conf.write_text(conf.read_text().replace(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n",
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n{extra}"))

    @property
    def url(self) -> str:
        """The broker URL of the default virtual host."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def env(self) -> dict[str, str]:
        """The environment the node's scripts (server and ctl) run with."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **keep,
            "HOME": str(self.base),  # the Erlang cookie lives here, not in the user's home
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.base / "feature_flags"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
            # Erlang's schedulers spin while idle by default: on a small shared machine that
            # is CPU taken from the workers under test. Sleep instead.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
        }

    def start(self, timeout: float = 60.0) -> RabbitServer:
        """Start the node and wait until it accepts AMQP connections."""
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([str(rabbitmq_sbin() / "rabbitmq-server")], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"rabbitmq-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.1)
        return self

    def _accepts(self) -> bool:
        """True once the node answers an AMQP handshake (the port opens a little earlier)."""
        import amqp

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
            conn = amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=2)
            conn.connect()
            conn.close()
        except (OSError, amqp.exceptions.AMQPError):
            return False
        return True

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``rabbitmqctl`` against this node; its standard output."""
        out = subprocess.run([str(rabbitmq_sbin() / "rabbitmqctl"), "-n", self.node, *args],
                             env=self.env, capture_output=True, text=True, timeout=timeout,
                             check=True)
        return out.stdout

    def kill(self) -> None:
        """Stop the node at once (SIGKILL), keeping its data (for restart tests)."""
        self._signal(signal.SIGKILL)

    def halt(self, timeout: float = 30.0) -> None:
        """Stop the node cleanly (SIGTERM), keeping its data."""
        self._signal(signal.SIGTERM, timeout)

    def restart(self, down_s: float = 0.0, timeout: float = 60.0) -> None:
        """Stop the node abruptly, stay down ``down_s`` seconds, start it again on the same
        ports and data directory: durable queues and persistent messages survive."""
        self.kill()
        time.sleep(down_s)
        self.start(timeout)

    def stop(self) -> None:
        """Stop the node and its port mapper, and remove every file."""
        self.halt()
        self._stop_epmd()
        self._dir.cleanup()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the node's log files, for error messages."""
        found = [*sorted((self.base / "log").glob("*.log")), self.base / "server.out"]
        text = "".join(p.read_text(errors="replace") for p in found if p.exists())
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, sig: int, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def _stop_epmd(self) -> None:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env,
                           capture_output=True, timeout=10)
