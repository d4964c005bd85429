"""A real Prometheus scraping a live test fleet: the metrics, every dashboard and alert expression,
and the quarantine alert firing; promtool on a live scrape."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from broker_config.app import HostCelery
from healthcheck.store import RedisHealthStore
from tests.conftest import CheckerFactory, WorkerFactory
from tests.support.cli import REPO, celery
from tests.support.polling import wait_until
from tests.support.prometheus import DEPLOY, PrometheusServer, require

FAST = {"HOST_WEAR_INTERVAL": "0.25"}
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "host.json"


def dashboard_exprs() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def alert_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[type[PrometheusServer]]:
    started: list[PrometheusServer] = []

    class Started(PrometheusServer):
        def __init__(self, workdir: Path, targets: list[str]) -> None:
            super().__init__(workdir, targets)
            started.append(self)

    yield Started
    for p in started:
        p.stop()


class TestPrometheus:
    @pytest.mark.timeout(240)
    def test_a_quarantine_seen_through_prometheus(
            self, app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path,
            prometheus: type[PrometheusServer]) -> None:
        store = RedisHealthStore(redis_client)
        worker, _ = start_worker("ob1", env=FAST), start_worker("ob2", env=FAST)
        checker = start_checker("--tick", "0.1")
        server = prometheus(tmp_path, [f"127.0.0.1:{checker.port}"]).start()
        wait_until(lambda: server.query('up{job="host-checker"} == 1'), 30, "target up")

        # Some traffic, so that task, inbound and sentiment series exist
        src = tmp_path / "some.txt"
        src.write_text("what a lovely day\nthis is awful\n{not json\n")
        assert celery("ingest", str(src), "--out", str(tmp_path / "out.jsonl"),
                      env=host_env).returncode in (0, 2)
        assert celery("fleet", "inject", worker.name, "cpu=100", env=host_env).returncode == 0
        wait_until(lambda: store.get(worker.name) and store.get(worker.name).state.value  # type: ignore[union-attr]
                   == "QUARANTINED", 30, "quarantine")

        # The quarantine, as Prometheus stores it
        q = f'host_worker_state{{worker="{worker.name}",state="QUARANTINED"}} == 1'
        wait_until(lambda: server.query(q), 20, "the quarantine in Prometheus")
        wait_until(lambda: server.query('host_inbound_total{outcome="rejected"} >= 1'), 20,
                   "inbound counts")
        assert server.query('sum(host_tasks_total{queue="tweets",outcome="succeeded"}) >= 2')

        # Every dashboard panel and every alert expression evaluates without error
        for title, expr in dashboard_exprs() + alert_exprs():
            try:
                server.query(expr)
            except AssertionError as exc:
                raise AssertionError(f"{title}: {exc}") from None
        # The panels showing the fleet, wear and queues have data now
        for title, expr in dashboard_exprs():
            if title in ("Worker state", "Health score", "Healthy consumers per queue",
                         "Queue depth", "CPU (%) with its limits", "Task throughput"):
                assert server.query(expr), f"{title}: no data for {expr}"

        # The quarantine alert fires for that worker
        def firing() -> list[dict[str, object]]:
            alerts = server.api("alerts")["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "HostWorkerQuarantined"
                    and a["state"] == "firing"]

        [alert] = wait_until(firing, 20, "HostWorkerQuarantined firing")
        assert isinstance(alert["labels"], dict)
        assert alert["labels"]["worker"] == worker.name

        # promtool finds nothing wrong in a live scrape
        status, body = checker.get("/metrics")
        assert status == 200
        lint = subprocess.run([require("promtool"), "check", "metrics"], input=body.encode(),
                              capture_output=True, timeout=30)
        assert lint.returncode == 0 and lint.stdout == b"" and lint.stderr == b"", lint


class TestRuleFiles:
    def test_promtool_checks_and_unit_tests_the_alerts(self) -> None:
        for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"],
                     ["check", "config", "prometheus.yml"]):
            done = subprocess.run([require("promtool"), *args], cwd=DEPLOY, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr

    def test_every_alert_is_unit_tested_and_has_a_runbook_section(self) -> None:
        rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"][0]["rules"]
        tests = yaml.safe_load((DEPLOY / "alerts_test.yml").read_text())["tests"]
        tested: dict[str, set[bool]] = {}
        for t in tests:
            for case in t["alert_rule_test"]:
                tested.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
        operations = (REPO / "docs" / "operations.md").read_text().lower()
        for rule in rules:
            name = rule["alert"]
            assert tested.get(name) == {False, True}, f"{name}: tested firing and not firing"
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
            anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
            assert f"### {name.lower()}" in operations, f"no runbook section for {anchor}"
