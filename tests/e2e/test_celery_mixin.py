"""The celery-mixin (celery-exporter's published dashboards and alerts, unchanged) against a real
Prometheus scraping a live host fleet whose checker exports celery-exporter's families: every
panel's query returns data, every alert rule loads and evaluates, and a worker quarantined on
purpose is not "down" to them while a killed one is."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from broker_config import keys
from broker_config.app import HostCelery
from broker_config.contract import envelope
from broker_config.queues import verify_queue
from cli.common import EXIT_INCOMPLETE
from tests.conftest import GROUND_TRUTH, SHARED_DATA, CheckerFactory, WorkerFactory
from tests.support.cli import REPO, celery, read_jsonl
from tests.support.polling import wait_until
from tests.support.prometheus import PrometheusServer, require

MIXIN = SHARED_DATA / "celery-mixin"
DASHBOARDS = ("celery-tasks-by-task.json", "celery-tasks-overview.json", "celery-tasks.json")
ALERTS = MIXIN / "prometheus_alerts.yaml"
#: The target labels a Kubernetes scrape would add, which the dashboards select on.
TARGET = {"cluster": "test", "namespace": "host"}
#: Grafana's variables as a person would set them: one cluster and namespace, every queue and
#: task; the job is named as celery-exporter's is, so that every dashboard selects it.
VARIABLES = {"$cluster": "test", "$namespace": "host", "$job": "celery", "$queue_name": ".*",
             "$task": ".*", "$__rate_interval": "1m", "$__range": "10m"}
FAST = {"HOST_WEAR_INTERVAL": "0.25"}

pytestmark = [pytest.mark.skipif(not MIXIN.exists(), reason=f"{MIXIN} is absent"),
              pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")]


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL with the variables set) for every panel target."""
    found = []

    def walk(dashboard: str, panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(dashboard, panel.get("panels", []))
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                for name, value in VARIABLES.items():
                    expr = expr.replace(name, value)
                found.append((dashboard, panel.get("title", ""), expr))

    for name in DASHBOARDS:
        walk(name, json.loads((MIXIN / name).read_text())["panels"])
    return found


def variable_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, variable, series selector, label) of every ``label_values`` variable."""
    found = []
    for name in DASHBOARDS:
        for var in json.loads((MIXIN / name).read_text())["templating"]["list"]:
            query = var.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            m = re.fullmatch(r"label_values\((.+), *(\w+)\)", text.strip())
            if m:
                selector = m.group(1)
                for key, value in VARIABLES.items():
                    selector = selector.replace(key, value)
                found.append((name, var["name"], selector, m.group(2)))
    return found


def host_row(title: str) -> list[tuple[str, str]]:
    """(title, expr) of every panel in the row of host's dashboard with that title."""
    panels = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "host.json").read_text())
    found, inside = [], False
    for panel in panels["panels"]:
        if panel["type"] == "row":
            inside = panel["title"] == title
        elif inside:
            found += [(panel["title"], t["expr"]) for t in panel["targets"]]
    return found


def ingest(tmp_path: Path, name: str, lines: list[str], env: dict[str, str]) -> None:
    """``celery -A host ingest`` of these lines; every one gets its record (some failed)."""
    src, out = tmp_path / f"{name}.tsv", tmp_path / f"{name}.jsonl"
    src.write_text("".join(lines), encoding="utf-8")
    done = celery("ingest", str(src), "--out", str(out), env=env, timeout=180)
    assert done.returncode in (0, EXIT_INCOMPLETE), done.stderr[-2000:]
    assert len(read_jsonl(out)) == len(lines)


def never_retried(expr: str) -> bool:
    """A query that keeps only retried tasks (``> 0``): no host task retries, so it has no
    data on any fleet (nor under celery-exporter); its series exist, at 0."""
    return ("celery_task_retried_total" in expr and "celery_task_succeeded_total" not in expr
            and "> 0" in expr)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[list[PrometheusServer]]:
    """Where the test puts the Prometheus it starts (stopped afterwards)."""
    started: list[PrometheusServer] = []
    yield started
    for server in started:
        server.stop()


@pytest.mark.background  # a minute of waiting for scrapes and alert rules
@pytest.mark.timeout(300)
def test_the_celery_mixin_on_a_live_fleet(
        app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
        host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path,
        prometheus: list[PrometheusServer]) -> None:
    start_worker("cm1@node-a", env=FAST)
    failing = start_worker("cm2@node-b", env={**FAST, "HOST_WEAR_INJECT": "fail_rate=0.5"})
    gated = start_worker("cm3@node-c", env=FAST)
    start_worker("cm4@node-d", env=FAST)
    checker = start_checker("--tick", "0.1", env={"HOST_CELERY_EXPORTER_METRICS": "true"})
    server = PrometheusServer(tmp_path, [f"127.0.0.1:{checker.port}"],
                              scrape={"job_name": "celery"}, labels=TARGET, rule_files=(ALERTS,))
    prometheus.append(server)
    server.start()
    wait_until(lambda: server.query('up{job="celery"} == 1'), 30, "the checker scraped")

    # Traffic: tweets through host's producer (some fail on cm2); then, once Prometheus has
    # every worker's series (a counter born above 0 shows no increase), a revoked task and
    # tasks a closed gate hands back (cm3's gate closed in the store, its checker never told)
    lines = GROUND_TRUTH.read_text(encoding="utf-8").splitlines(True)
    ingest(tmp_path, "first", lines[:150], host_env)
    for host in ("node-a", "node-b", "node-c", "node-d"):
        wait_until(partial(server.query, f'celery_task_received_total{{hostname="{host}"}}'), 30,
                   f"{host}'s series in Prometheus")
    time.sleep(2)  # two scrapes of them
    revoked_id = "celery-mixin-revoked-task"
    assert celery("control", "revoke", revoked_id, env=host_env).returncode == 0
    redis_client.set(keys.gate(gated.name), "closed by the test")
    ingest(tmp_path, "second", lines[150:300], host_env)
    app.send_task("host.analyse", args=[envelope("revoked:1", "never analysed")],
                  task_id=revoked_id, queue="tweets")
    redis_client.delete(keys.gate(gated.name))
    # Failures Prometheus can count: cm2's in the first ingest may all fall between two scrapes
    # (drained within a second at --tick 0.1), and a failure series born above 0 shows no
    # increase. So cm2 now fails every task (its probes too): one on its own verify queue, and
    # a second once Prometheus has the first
    assert celery("fleet", "inject", failing.name, "fail_rate=1.0", env=host_env).returncode == 0
    verify: Any = verify_queue(failing.name)  # a Queue: send_task takes one, its stubs say str
    app.send_task("host.analyse", args=[envelope("fails:1", "fails on cm2")], queue=verify)
    wait_until(partial(server.query, 'celery_task_failed_total{hostname="node-b",'
                                     'queue_name="verify",exception!=""} > 0'),
               30, "cm2's first failure on its verify queue in Prometheus")
    app.send_task("host.analyse", args=[envelope("fails:2", "fails on cm2")], queue=verify)
    for event in ("revoked", "rejected", "failed", "succeeded", "received", "started"):
        wait_until(partial(server.query, f"sum(increase(celery_task_{event}_total[10m])) > 0"),
                   60, f"celery_task_{event}_total counted")

    # A worker quarantined on purpose (cm2: its failures, then its failed probes), and a
    # worker killed
    wait_until(lambda: server.query(f'host_worker_state{{worker="{failing.name}",'
                                    f'state="QUARANTINED"}} == 1'), 60, "the quarantine")
    gated.signal(signal.SIGKILL)
    wait_until(lambda: server.query('celery_worker_up{hostname="node-c"} == 0'), 60,
               "the killed worker down")

    # Down is the killed worker alone: the quarantined one is up, and host says why it is out
    up = {r["metric"]["hostname"]: r["value"][1] for r in server.query("celery_worker_up")}
    assert up == {"node-a": "1", "node-b": "1", "node-c": "0", "node-d": "1"}
    joined = server.query('(host_worker_state{state="QUARANTINED"} == 1) * on(worker) '
                          'group_left(hostname) host_worker_info')
    assert [r["metric"]["hostname"] for r in joined] == ["node-b"]

    def alerts(name: str) -> list[dict[str, Any]]:
        return [a for a in server.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    down = wait_until(lambda: alerts("CeleryWorkerDown"), 30, "CeleryWorkerDown pending")
    assert [a["labels"]["hostname"] for a in down] == ["node-c"]  # not node-b
    wait_until(lambda: alerts("CeleryTaskHighFailRate"), 60, "CeleryTaskHighFailRate pending")

    # Every alert rule of the mixin loaded and evaluates without error
    rules = [r for g in server.api("rules")["groups"] for r in g["rules"]
             if g["file"].endswith(ALERTS.name)]
    names = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert {r["name"] for r in rules} == names
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), rules
    check = subprocess.run([require("promtool"), "check", "rules", str(ALERTS)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    # Every panel's query returns data; every variable has values
    empty = [(d, title, expr) for d, title, expr in panel_queries()
             if not server.query(expr) and not never_retried(expr)]
    assert not empty, empty
    for d, title, expr in panel_queries():
        if never_retried(expr):  # its series exist, at 0
            assert server.query(expr.replace("> 0", ">= 0")), (d, title)
    for d, var, selector, label in variable_queries():
        values = server.api(f"label/{label}/values", **{"match[]": selector})
        assert values, (d, var, selector)

    # host's dashboard row that sets each worker's state beside its task figures has data
    row = host_row("Workers: host's state beside their task figures")
    assert len(row) >= 4
    for title, expr in row:
        assert server.query(expr), (title, expr)

    # promtool on a live scrape finds only what celery-exporter's own names carry
    status, body = checker.get("/metrics")
    assert status == 200
    lint = subprocess.run([require("promtool"), "check", "metrics"], input=body.encode(),
                          capture_output=True, timeout=30)
    findings = sorted(lint.stdout.decode().splitlines() + lint.stderr.decode().splitlines())
    assert findings == [f'celery_active_{n}_count non-histogram and non-summary metrics should '
                        f'not have "_count" suffix' for n in ("consumer", "worker")], findings
