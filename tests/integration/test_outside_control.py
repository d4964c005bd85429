"""Celery's own control commands, sent by clients that are not host, change nothing a host
worker consumes or can do; no checker runs in these tests."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from broker_config.app import HostCelery
from broker_config.contract import envelope
from broker_config.signing import sign
from healthcheck.actuator import control_reply
from tests.conftest import WorkerFactory
from tests.support.brokers import on_both_brokers
from tests.support.cli import REPO
from tests.support.events import EventTap
from tests.support.polling import consumed, wait_until

SECRET = {"HOST_CONTROL_SECRET": "outside-secret", "HOST_WEAR_INTERVAL": "0.3"}


def plain_celery(broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Celery's own command line with no app of host's: ``celery -b URL control ...``."""
    return subprocess.run([sys.executable, "-m", "celery", "-b", broker, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin"})


def plain_python(broker: str, code: str) -> subprocess.CompletedProcess[str]:
    """A plain Celery app, which does not import host, run as its own program."""
    return subprocess.run([sys.executable, "-c", code, broker], cwd="/", capture_output=True,
                          text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"})


def pool_size(app: HostCelery, worker: str) -> int:
    stats = app.control.inspect(destination=[worker], timeout=2).stats() or {}
    return len(stats[worker]["pool"]["processes"])


def rate_limit_of(app: HostCelery, worker: str) -> Any:
    replies = app.control.inspect(destination=[worker], timeout=2).registered(
        "rate_limit") or {}
    return replies[worker]


@on_both_brokers
class TestCeleryBuiltins:
    def test_consumption_and_capacity_do_not_change_unsigned(
            self, app: HostCelery, start_worker: WorkerFactory, host_env: dict[str, str]) -> None:
        """cancel_consumer, add_consumer, rate_limit, time_limit, autoscale, pool_grow,
        pool_shrink, revoke --terminate, terminate, shutdown, pool_restart, objgraph: each
        refused, counted in the worker's report, and the worker serves as before."""
        broker = host_env["HOST_BROKER_URL"]
        worker = start_worker("ob1", concurrency=2, env=SECRET)
        before = consumed(app, worker.name)
        commands = [
            ("cancel_consumer", "tweets"), ("add_consumer", "celery"),
            ("rate_limit", "host.analyse", "6/m"), ("time_limit", "host.analyse", "1", "2"),
            ("autoscale", "10", "1"), ("pool_grow", "10"), ("pool_shrink", "1"),
            ("terminate", "SIGKILL", "00000000-0000-0000-0000-000000000000"),
            ("shutdown",), ("pool_restart",)]
        for command in commands:
            proc = plain_celery(broker, "control", *command, "-d", worker.name)
            assert "refused" in proc.stdout + proc.stderr or "disabled" in (
                proc.stdout + proc.stderr), (command, proc.stdout, proc.stderr)
        proc = plain_celery(broker, "inspect", "objgraph", "-d", worker.name)
        assert "refused" in proc.stdout, proc.stdout
        # revoke with terminate has no command-line flag: a plain Celery app sends it
        revoke = plain_python(broker, "import sys; from celery import Celery; "
                              "app = Celery(broker=sys.argv[1]); "
                              "print(app.control.revoke('0' * 32, terminate=True, reply=True, "
                              f"destination=['{worker.name}'], timeout=2))")
        assert "refused" in revoke.stdout, revoke.stdout + revoke.stderr
        assert worker.alive()
        assert consumed(app, worker.name) == before
        assert pool_size(app, worker.name) == 2
        with EventTap(app) as tap:
            report = tap.wait_for("worker-wear", lambda e: len(e["control_refused"]) >= 12,
                                  hostname=worker.name)
            result = app.send_task("host.analyse", args=[envelope("ob:1", "still served :)")])
            assert result.get(timeout=20)["worker"] == worker.name
        refused = report["control_refused"]
        assert refused["cancel_consumer:unsigned"] == 1 and refused["shutdown:disabled"] == 1
        assert refused["revoke:unsigned"] == 1 and refused["objgraph:unsigned"] == 1

    def test_a_plain_revoke_and_inspection_still_work(self, app: HostCelery,
                                                      start_worker: WorkerFactory,
                                                      host_env: dict[str, str]) -> None:
        """Inspection and a revoke without terminate change no capacity: Celery's as ever."""
        worker = start_worker("ob2")
        broker = host_env["HOST_BROKER_URL"]
        assert "pong" in plain_celery(broker, "inspect", "ping", "-d", worker.name).stdout
        proc = plain_celery(broker, "control", "revoke", "1234", "-d", worker.name)
        assert "revoked" in proc.stdout.lower(), proc.stdout

    def test_signed_or_allowed_builtins_run(self, app: HostCelery, start_worker: WorkerFactory,
                                            host_env: dict[str, str]) -> None:
        """A built-in signed with the secret runs; HOST_ALLOW_CONTROL lets one through unsigned."""
        worker = start_worker("ob3", env={**SECRET, "HOST_ALLOW_CONTROL": "pool_grow"})
        signed = sign(SECRET["HOST_CONTROL_SECRET"], "rate_limit",
                      {"task_name": "host.analyse", "rate_limit": "100/m"}, worker.name,
                      time.time())
        replies = app.control.broadcast("rate_limit", arguments=signed,
                                        destination=[worker.name], reply=True, timeout=2)
        assert replies and "ok" in replies[0][worker.name], replies
        assert "100/m" in str(rate_limit_of(app, worker.name))
        proc = plain_celery(host_env["HOST_BROKER_URL"], "control", "pool_grow", "1",
                            "-d", worker.name)
        assert "refused" not in proc.stdout, proc.stdout
        wait_until(lambda: pool_size(app, worker.name) == 2, 10, "the pool to grow")

    def test_an_out_of_rotation_worker_is_never_resubscribed(
            self, app: HostCelery, start_worker: WorkerFactory, host_env: dict[str, str]) -> None:
        """Even allowed, add_consumer of any queue — a work queue, Celery's default one — is
        refused while the gate is closed; extra queues it was given in rotation go too."""
        worker = start_worker("ob4", env={"HOST_ALLOW_CONTROL": "add_consumer"})
        broker = host_env["HOST_BROKER_URL"]
        proc = plain_celery(broker, "control", "add_consumer", "celery", "-d", worker.name)
        assert "celery" in consumed(app, worker.name), proc.stdout  # in rotation: allowed
        assert control_reply(app, "host_drain", worker.name, {"reason": "test"}) is not None
        assert consumed(app, worker.name) == [f"host.verify.{worker.name}"]
        for queue in ("tweets", "celery", "anything"):
            proc = plain_celery(broker, "control", "add_consumer", queue, "-d", worker.name)
            assert "out of rotation" in proc.stdout, proc.stdout
        assert consumed(app, worker.name) == [f"host.verify.{worker.name}"]
        # admitted again, it consumes the queues it was started with
        assert control_reply(app, "host_admit", worker.name, {"reason": "test"}) is not None
        assert consumed(app, worker.name) == sorted(["bulk", "default", "tweets",
                                                     f"host.verify.{worker.name}"])


class TestReplay:
    def test_a_captured_command_replayed_after_a_restart_is_refused(
            self, app: HostCelery, start_worker: WorkerFactory) -> None:
        """Nonces live in the store: the restarted worker remembers the first use."""
        worker = start_worker("rp1", env=SECRET)
        captured = sign(SECRET["HOST_CONTROL_SECRET"], "host_admit", {"reason": "captured"},
                        worker.name, time.time())
        first = app.control.broadcast("host_admit", arguments=captured,
                                      destination=[worker.name], reply=True, timeout=2)
        assert first and first[0][worker.name]["ok"] is True
        worker.stop()
        worker = start_worker("rp1", env=SECRET)
        again = app.control.broadcast("host_admit", arguments=captured,
                                      destination=[worker.name], reply=True, timeout=2)
        assert again and again[0][worker.name] == {"error": "refused: replayed"}
