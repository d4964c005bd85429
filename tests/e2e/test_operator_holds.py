"""What people and the guard decide is kept and shown: a manual quarantine outlasts passing
probes, a held-back worker says so everywhere, and consumption is measured and restored."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import redis

from broker_config.app import HostCelery
from healthcheck.store import RedisHealthStore
from tests.conftest import CheckerFactory, CheckerProcess, WorkerFactory
from tests.support.cli import celery
from tests.support.polling import consumed, wait_until

FAST = {"HOST_WEAR_INTERVAL": "0.25"}
#: Short back-off and quick probes: an automatic quarantine would end within ~3 s.
QUICK_READMISSION = ("[recovery]\nconfirm_breaches = 100000\nprobe_passes = 2\n"
                     "[backoff]\nbase_s = 1.0\nmax_s = 2.0\njitter_s = 0.0\n"
                     "[probes]\nevery_s = 0.5\nlate_s = 3.0\nmissing_s = 6.0\n")


def policy(tmp_path: Path, text: str = QUICK_READMISSION) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return str(path)


def metric(checker: CheckerProcess, name: str, **labels: str) -> float | None:
    body = checker.get("/metrics")[1]
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = "(?m)^" + re.escape(name + (f"{{{selector}}}" if labels else "")) + r" (\S+)"
    found = re.search(pattern, body)
    return float(found.group(1)) if found else None


def status_rows(env: dict[str, str]) -> dict[str, dict[str, object]]:
    proc = celery("fleet", "status", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return {r["worker"]: r for r in json.loads(proc.stdout)["workers"]}


class TestOperatorStatesHold:
    def test_a_manual_quarantine_outlasts_its_backoff_and_passing_probes(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        """Back-off 1 s, two passing probes would re-admit it: a person's quarantine stays."""
        store = RedisHealthStore(redis_client)
        kept = start_worker("oq1", env=FAST)
        start_worker("oq2", env=FAST)
        checker = start_checker("--policy", policy(tmp_path), "--tick", "0.1")
        wait_until(lambda: len(status_rows(host_env)) == 2, 20, "both workers known")
        proc = celery("fleet", "quarantine", kept.name, "--reason", "bad disk", env=host_env)
        assert proc.returncode == 0, proc.stderr
        quarantined = store.get(kept.name)
        assert quarantined is not None and quarantined.state.value == "QUARANTINED"
        # (probes passed while it was healthy count too: six more, after its back-off ended)
        passed_before = metric(checker, "host_probe_results_total", worker=kept.name,
                               outcome="ok") or 0
        wait_until(lambda: time.time() > quarantined.backoff_until + 0.5, 10,
                   "its back-off over")
        wait_until(lambda: (metric(checker, "host_probe_results_total", worker=kept.name,
                                   outcome="ok") or 0) >= passed_before + 6, 40,
                   "six more passing probes")
        w = store.get(kept.name)
        assert w is not None and (w.state.value, w.cause.value) == ("QUARANTINED", "operator")
        assert time.time() > w.backoff_until  # its back-off is long over
        proc = celery("fleet", "restore", kept.name, env=host_env)
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: (w := store.get(kept.name)) and w.state.value == "PROBATION", 10,
                   "restore to put it in probation")


class TestHeldWorkersAreVisible:
    @pytest.mark.background  # waits for a guard to engage and a hold to show
    def test_a_hot_worker_the_guard_keeps_says_so_everywhere(
            self, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], tmp_path: Path) -> None:
        """One of three quarantined by probes, another at 100% CPU: the guard (bound 1) holds
        it, and status, the page, the audit log and /metrics all say so with the figures."""
        wrong = start_worker("hv1", env=FAST)
        hot = start_worker("hv2", env=FAST)
        start_worker("hv3", env=FAST)
        checker = start_checker("--policy", policy(tmp_path), "--tick", "0.1")
        wait_until(lambda: len(status_rows(host_env)) == 3, 20, "three workers known")
        assert celery("fleet", "inject", wrong.name, "wrong_answers=1", env=host_env).returncode == 0
        wait_until(lambda: status_rows(host_env)[wrong.name]["state"] == "QUARANTINED", 30,
                   "the wrong answers to quarantine it")
        assert celery("fleet", "inject", hot.name, "cpu=100", env=host_env).returncode == 0
        row = wait_until(lambda: (r := status_rows(host_env)[hot.name]) and "held in rotation"
                         in str(r["reason"]) and r, 30, "the hot worker to be held")
        assert row["state"] == "SUSPECT" and "bound 1" in str(row["reason"])
        assert "bound 1" in str(row["held"]), row
        assert re.search(r"cpu_percent 9\d(\.\d+)? >= hard 97|cpu_percent 100", str(row["reason"]))
        wait_until(lambda: metric(checker, "host_guard_held_workers") == 1.0, 10,
                   "host_guard_held_workers 1")
        page = json.loads(checker.get("/fleet.json")[1])
        assert "held in rotation" in json.dumps(page)
        history = celery("fleet", "history", hot.name, "--json", env=host_env)
        assert any(json.loads(line).get("kind") == "held"
                   for line in history.stdout.splitlines() if line.strip()), history.stdout


class TestConsumptionIsMeasured:
    def test_cancel_consumer_everywhere_shows_and_the_checker_restores_it(
            self, app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], tmp_path: Path) -> None:
        """Every worker told to stop consuming tweets: the count reaches 0 at the next report
        (a dry-run checker watches); a leading checker then restores consumption."""
        allow = {**FAST, "HOST_ALLOW_CONTROL": "cancel_consumer"}
        workers = [start_worker(f"cm{i}", env=allow) for i in (1, 2)]
        # soft breaches never confirm here: the watcher leaves them SUSPECT, in rotation
        rules = policy(tmp_path)
        watcher = start_checker("--dry-run", "--policy", rules, "--tick", "0.1", name="watcher")
        wait_until(lambda: metric(watcher, "host_queue_healthy_consumers", queue="tweets") == 2,
                   20, "two tweets consumers")
        proc = celery("control", "cancel_consumer", "tweets", env=host_env)
        assert proc.returncode == 0, proc.stderr
        cancelled = time.monotonic()
        wait_until(lambda: metric(watcher, "host_queue_healthy_consumers", queue="tweets") == 0,
                   5, "the count to reach 0")
        seen_after = time.monotonic() - cancelled
        print(f"consumption: healthy consumers of tweets at 0 {seen_after:.2f}s after the cancel")
        assert seen_after < 3.0, seen_after  # one 0.25 s report, plus a busy machine's slack
        proc = celery("fleet", "status", "--json", env=host_env)
        assert json.loads(proc.stdout)["healthy_consumers"]["tweets"] == 0
        watcher.stop()
        checker = start_checker("--policy", rules, "--tick", "0.1")
        for name in (w.name for w in workers):
            wait_until(lambda name=name: "tweets" in consumed(app, name),  # type: ignore[misc]
                       20, f"{name} consuming tweets again")
        wait_until(lambda: metric(checker, "host_queue_healthy_consumers", queue="tweets") == 2,
                   20, "two tweets consumers again")
        assert "consumption_corrected" in checker.log_path.read_text()
