"""Probes, re-admission and flapping, with real workers and the real checker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from broker_config.app import HostCelery
from healthcheck.store import RedisHealthStore
from tests.conftest import CheckerFactory, WorkerFactory
from tests.support.brokers import on_both_brokers
from tests.support.cli import celery
from tests.support.events import EventTap
from tests.support.polling import wait_until

FAST = {"HOST_WEAR_INTERVAL": "0.25"}
#: Short back-offs, probes and probation, so that a whole quarantine cycle fits in seconds.
QUICK_POLICY = """
[backoff]
base_s = 2.0
max_s = 30.0
jitter_s = 0.0
[probes]
every_s = 0.5
late_s = 2.0
missing_s = 4.0
[recovery]
probation_s = 3.0
min_suspect_s = 1.0
"""


def policy(tmp_path: Path, probation_s: float = 3.0) -> str:
    path = tmp_path / "quick.toml"
    path.write_text(QUICK_POLICY.replace("probation_s = 3.0", f"probation_s = {probation_s}"))
    return str(path)



def state(store: RedisHealthStore, worker: str) -> str | None:
    w = store.get(worker)
    return w.state.value if w else None


def moves(store: RedisHealthStore, worker: str) -> list[tuple[str, str, str]]:
    return [(r["from"], r["to"], r["reason"]) for r in store.history(worker, limit=10_000)
            if r["kind"] == "transition"]


@on_both_brokers
class TestProbes:
    def test_wrong_answers_quarantine_while_wear_looks_normal(
            self, app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        """wrong_answers=1: quarantined by probes alone; its wear never crossed a limit."""
        store = RedisHealthStore(redis_client)
        bad, _ = start_worker("pr1", env=FAST), start_worker("pr2", env=FAST)
        start_checker("--tick", "0.1", "--policy", policy(tmp_path))
        with EventTap(app) as tap:
            assert celery("fleet", "inject", bad.name, "wrong_answers=1",
                          env=host_env).returncode == 0
            wait_until(lambda: state(store, bad.name) == "QUARANTINED", 20, "quarantine")
            reports = tap.of("worker-wear", bad.name)
        [(src, _, reason)] = [m for m in moves(store, bad.name) if m[1] == "QUARANTINED"]
        assert src == "HEALTHY" and "wrong probe answer" in reason
        assert store.get(bad.name).cause.value == "probe"  # type: ignore[union-attr]
        assert all(r["wear"]["cpu_percent"][0] < 85 and r["wear"]["memory_percent"][0] < 85
                   for r in reports)


class TestReadmission:
    def test_the_whole_way_back_to_healthy(
            self, app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        """Worn out, drained, quarantined; injection removed; probes pass; probation; HEALTHY."""
        store = RedisHealthStore(redis_client)
        worker, _ = start_worker("ra1", env=FAST), start_worker("ra2", env=FAST)
        start_checker("--tick", "0.1", "--policy", policy(tmp_path))
        wait_until(lambda: state(store, worker.name) == "HEALTHY", 20, "known")
        assert celery("fleet", "inject", worker.name, "cpu=100", env=host_env).returncode == 0
        wait_until(lambda: state(store, worker.name) == "QUARANTINED", 30, "quarantine")
        assert celery("fleet", "inject", worker.name, env=host_env).returncode == 0
        wait_until(lambda: state(store, worker.name) == "HEALTHY", 60, "back to HEALTHY")
        path = [(a, b) for a, b, _ in moves(store, worker.name)]
        assert path[-3:] == [("DRAINING", "QUARANTINED"), ("QUARANTINED", "PROBATION"),
                             ("PROBATION", "HEALTHY")], path
        assert all(reason for _, _, reason in moves(store, worker.name))
        kinds = [r["kind"] for r in store.history(worker.name)]
        assert "drain_confirmed" in kinds and "admit_confirmed" in kinds
        replies = app.control.inspect(destination=[worker.name], timeout=2).active_queues() or {}
        assert "tweets" in {q["name"] for q in replies.get(worker.name, [])}


@pytest.mark.background
class TestFlapping:
    def test_a_flapping_worker_ends_up_out_with_a_growing_backoff(
            self, app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        """Bad and good every 3 s for a minute: few re-admissions, each quarantine longer."""
        store = RedisHealthStore(redis_client)
        worker, _ = start_worker("fl1", env=FAST), start_worker("fl2", env=FAST)
        # Probation (10 s) outlasts a good phase (3 s), as the default (60 s) does in production
        start_checker("--tick", "0.1", "--policy", policy(tmp_path, probation_s=10.0))
        wait_until(lambda: state(store, worker.name) == "HEALTHY", 20, "known")
        flips, start = 0, time.monotonic()
        while time.monotonic() - start < 60:
            spec = "cpu=100" if flips % 2 == 0 else ""
            assert celery("fleet", "inject", worker.name, spec, env=host_env).returncode == 0
            flips += 1
            time.sleep(3)
        transitions = moves(store, worker.name)
        readmissions = [m for m in transitions if m[:2] == ("QUARANTINED", "PROBATION")]
        # Following every flip would be ~2 transitions per flip and a re-admission every other
        # flip (~7 in the minute); the growing back-off (2, 4, 8, 16 s ...) holds it out
        # instead: one ejection (3 transitions) per re-admission at most, and at most 5 of them.
        assert len(transitions) <= 3 * (len(readmissions) + 1), (flips, transitions)
        assert 1 <= len(readmissions) <= min(5, flips // 2), (flips, transitions)
        assert ("PROBATION", "HEALTHY") not in {m[:2] for m in transitions}
        w = store.get(worker.name)
        assert w is not None and w.ejections >= 3
        assert w.state.value in ("QUARANTINED", "DRAINING", "PROBATION")
