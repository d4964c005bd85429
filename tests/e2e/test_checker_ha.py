"""Two real checkers, one lease: the leader is killed or paused, the standby takes over."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import redis

from broker_config import keys
from healthcheck.store import RedisHealthStore
from tests.conftest import CheckerFactory, CheckerProcess, WorkerFactory
from tests.support.cli import celery
from tests.support.polling import wait_until

LEASE_S = 2.0
FAST = {"HOST_WEAR_INTERVAL": "0.25"}
HA_ENV = {"HOST_CHECKER_LEASE": str(LEASE_S)}
#: Two of four workers may be out at once; a quarantine lasts (well) beyond the test.
POLICY = """
[guard]
max_ejected_fraction = 0.5
[backoff]
base_s = 300.0
jitter_s = 0.0
[probes]
every_s = 1.0
"""


def leads(checker: CheckerProcess) -> bool:
    """What the checker's own /metrics says."""
    try:
        status, body = checker.get("/metrics")
    except OSError:
        return False
    match = re.search(r"^host_checker_leader (\S+)$", body, re.M)
    return status == 200 and match is not None and float(match.group(1)) == 1.0


def state(store: RedisHealthStore, worker: str) -> str | None:
    w = store.get(worker)
    return w.state.value if w else None


def start_pair(start_checker: CheckerFactory, tmp_path: Path) -> tuple[CheckerProcess, CheckerProcess]:
    """Two checkers; returns (leader, standby) once exactly one of them leads."""
    policy = tmp_path / "ha.toml"
    policy.write_text(POLICY)
    args = ("--tick", "0.1", "--policy", str(policy))
    a = start_checker(*args, env=HA_ENV, name="checker-a")
    b = start_checker(*args, env=HA_ENV, name="checker-b")
    wait_until(lambda: leads(a) != leads(b), 10, "exactly one leader")
    return (a, b) if leads(a) else (b, a)


def audit_checks(store: RedisHealthStore) -> list[dict[str, object]]:
    """Every record in stream order; epochs never go back (no two leaders interleaved)."""
    records = store.history(limit=100_000)
    epochs = [r["epoch"] for r in records if "epoch" in r]
    assert epochs == sorted(epochs), epochs
    return records


def drains_of(worker_log: Path) -> int:
    return worker_log.read_text(errors="replace").count('"event": "worker_drained"')


class TestTakeover:
    def test_sigkill_the_leader_the_standby_takes_over_and_re_drains_nobody(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        store = RedisHealthStore(redis_client)
        workers = [start_worker(f"ha{i}", env=FAST) for i in range(1, 5)]
        first, second = start_pair(start_checker, tmp_path)
        wait_until(lambda: all(state(store, w.name) == "HEALTHY" for w in workers), 20, "all known")
        # the first leader quarantines ha1
        assert celery("fleet", "inject", workers[0].name, "cpu=100", env=host_env).returncode == 0
        wait_until(lambda: state(store, workers[0].name) == "QUARANTINED" and any(
            r["kind"] == "drain_confirmed" for r in store.history(workers[0].name, limit=100)),
            30, "ha1 quarantined, its drain confirmed")  # a record the leader's death would lose
        first_epoch = int(redis_client.get(keys.EPOCH) or 0)

        first.proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        first.proc.wait(10)
        wait_until(lambda: leads(second), LEASE_S + 5, "the standby to lead")
        [taken] = [r for r in store.history(limit=1000)
                   if r["kind"] == "leader" and r["epoch"] > first_epoch]
        takeover_s = float(taken["at"]) - killed_at
        print(f"takeover after SIGKILL: {takeover_s:.2f} s (lease {LEASE_S} s)")
        # The lease outlives the kill by up to its TTL (it may just have been renewed); the
        # standby asks every 0.25 s, and its loop turns every 0.1 s on a busy machine.
        assert 0 < takeover_s <= LEASE_S + 1.0

        # The new leader acts: ha2 worn out is drained by it...
        assert celery("fleet", "inject", workers[1].name, "cpu=100", env=host_env).returncode == 0
        wait_until(lambda: state(store, workers[1].name) == "QUARANTINED", 30, "ha2 quarantined")
        # ...while ha1 stays out, untouched: no second drain, no second transition.
        time.sleep(2)
        records = audit_checks(store)
        ha1 = [r for r in records if r.get("worker") == workers[0].name and r["kind"] != "joined"]
        assert {r["epoch"] for r in ha1} == {first_epoch}, ha1
        assert [r["kind"] for r in ha1].count("drain_confirmed") == 1
        assert state(store, workers[0].name) == "QUARANTINED"
        assert drains_of(workers[0].log_path) == 1  # type: ignore[arg-type]
        ha2 = [r for r in records if r.get("worker") == workers[1].name and r["kind"] != "joined"]
        assert ha2 and {r["epoch"] for r in ha2} == {taken["epoch"]}
        assert drains_of(workers[1].log_path) == 1  # type: ignore[arg-type]

    def test_a_paused_leader_wakes_up_as_a_standby(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        """SIGSTOP the leader past its lease; meanwhile the other drains a worker. On SIGCONT
        the old leader, whose view still has that worker HEALTHY, does nothing at all."""
        store = RedisHealthStore(redis_client)
        workers = [start_worker(f"hp{i}", env=FAST) for i in range(1, 5)]
        first, second = start_pair(start_checker, tmp_path)
        wait_until(lambda: all(state(store, w.name) == "HEALTHY" for w in workers), 20, "all known")
        first_epoch = int(redis_client.get(keys.EPOCH) or 0)
        os.kill(first.proc.pid, signal.SIGSTOP)
        paused_at = time.time()
        try:
            wait_until(lambda: leads(second), LEASE_S + 5, "the standby to lead")
            assert celery("fleet", "inject", workers[0].name, "cpu=100",
                          env=host_env).returncode == 0
            wait_until(lambda: state(store, workers[0].name) == "QUARANTINED", 30, "quarantined")
        finally:
            os.kill(first.proc.pid, signal.SIGCONT)
        log = first.log_path
        wait_until(lambda: "checker_standing_by" in log.read_text(errors="replace"), 10,
                   "the old leader to stand by")
        time.sleep(2)  # time to act, if it were going to
        assert not leads(first) and leads(second)
        records = audit_checks(store)
        assert [r for r in records if r.get("epoch") == first_epoch
                and float(r["at"]) > paused_at] == []  # type: ignore[arg-type]
        assert drains_of(workers[0].log_path) == 1  # type: ignore[arg-type]
        assert state(store, workers[0].name) == "QUARANTINED"
