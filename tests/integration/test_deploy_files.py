"""deploy/ checked by the real tools of each platform, offline: hadolint and shellcheck, the
Compose parser (Debian's docker-compose), kubectl kustomize with the Kubernetes schemas
(kubernetes-validate), promtool, systemd-analyze. Each check is also shown failing on a
broken copy, so that a pass means something."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from broker_config.settings import Settings
from tests.support.cli import REPO
from tests.support.prometheus import require

DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
#: Kinds of the Prometheus Operator and KEDA: no schema ships for them (checked by hand below).
CUSTOM = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}


def run(*cmd: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=120)


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise AssertionError(f"{name} is not installed: run .ci/system-deps, as `make test` does")
    return found


# --- the image -------------------------------------------------------------------------------

class TestImage:
    def test_dockerfile_lints_clean_and_a_bad_one_does_not(self, tmp_path: Path) -> None:
        ok = run(tool("hadolint"), str(DEPLOY / "Dockerfile"))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        bad = tmp_path / "Dockerfile"
        bad.write_text((DEPLOY / "Dockerfile").read_text() + "RUN apt-get install gcc\n")
        assert run(tool("hadolint"), str(bad)).returncode != 0

    def test_final_stage_is_small_non_root_and_runs_the_entrypoint(self) -> None:
        """Two stages; the last copies the built environment, installs nothing, runs as a
        numeric non-root user, and its entrypoint is deploy/entrypoint.sh."""
        text = (DEPLOY / "Dockerfile").read_text()
        stages = re.split(r"(?m)^FROM ", text)[1:]
        assert len(stages) == 2
        final = stages[-1]
        assert "COPY --from=build /opt/host /opt/host" in final
        assert not re.search(r"(?m)^RUN .*(apt-get|pip|gcc|build-essential)", final)
        user = re.search(r"(?m)^USER (\S+)", final)
        assert user and user.group(1).split(":")[0] not in ("root", "0")
        assert "COPY deploy/entrypoint.sh /usr/local/bin/host-entrypoint" in final
        assert 'ENTRYPOINT ["host-entrypoint"]' in final
        # the environment is filled from the lock, hashes checked, by a uv that lives outside it
        # (so no installer is copied into the final stage)
        build = stages[0]
        assert "--require-hashes -r requirements/uv.txt" in build
        assert re.search(r"(?m)uv sync --locked --no-editable", build)
        assert "UV_PROJECT_ENVIRONMENT=/opt/host" in build
        assert "/opt/host/bin/pip" not in build

    def test_the_project_installs_whole_from_what_the_image_copies(self, tmp_path: Path) -> None:
        """The files the build stage COPYs, and nothing else, make a wheel that holds every
        module and data file host reads at run time."""
        build = re.split(r"(?m)^FROM ", (DEPLOY / "Dockerfile").read_text())[1]
        context = tmp_path / "context"
        for line in re.findall(r"(?m)^COPY (?!--)(.+)$", build):
            *sources, _ = line.split()
            for source in sources:
                target = context / source
                if (REPO / source).is_dir():
                    shutil.copytree(REPO / source, target,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(REPO / source, target)
        built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "wheels"), str(context))
        assert built.returncode == 0, built.stderr[-2000:]
        wheel = next((tmp_path / "wheels").glob("host-*.whl"))
        names = set(zipfile.ZipFile(wheel).namelist())
        wanted = {"host.py", "broker_config/take.lua", "healthcheck/fleet.html",
                  "healthcheck/data/probes.txt", "workers/status.py"}
        wanted |= {str(p.relative_to(REPO)) for p in (REPO / "healthcheck/store/lua").glob("*.lua")}
        wanted |= {str(p.relative_to(REPO)) for p in (REPO / "cli/data").iterdir()}
        assert wanted - names == set()
        modules = {str(p.relative_to(REPO)) for package in ("broker_config", "workers",
                                                            "healthcheck", "cli")
                   for p in (REPO / package).rglob("*.py")}
        assert modules - names == set()

    def test_entrypoint_passes_shellcheck_and_a_bad_one_does_not(self, tmp_path: Path) -> None:
        ok = run(tool("shellcheck"), str(DEPLOY / "entrypoint.sh"))
        assert ok.returncode == 0, ok.stdout
        bad = tmp_path / "entrypoint.sh"
        bad.write_text((DEPLOY / "entrypoint.sh").read_text() + "\necho $UNQUOTED_VAR\n")
        assert run(tool("shellcheck"), str(bad)).returncode != 0


# --- Compose ---------------------------------------------------------------------------------

def compose_config(directory: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("docker-compose"), "-f", str(directory / "compose.yaml"), "config",
               cwd=directory)


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    """deploy/ copied, with the env files an operator makes from the examples."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    shutil.copy(copy / "compose" / "control.env.example", copy / "compose" / "control.env")
    overlay = copy / "kubernetes" / "overlays" / "production"
    shutil.copy(overlay / "control.env.example", overlay / "control.env")
    return copy


class TestCompose:
    def test_compose_file_parses_with_the_parts_it_promises(self, deploy_copy: Path) -> None:
        proc = compose_config(deploy_copy)
        assert proc.returncode == 0, proc.stderr
        config = yaml.safe_load(proc.stdout)
        services = config["services"]
        workers = [n for n, s in services.items() if s.get("command", [None])[0] == "worker"]
        checkers = [n for n, s in services.items() if s.get("command") == ["healthcheck"]]
        assert len(workers) == 3 and len(checkers) == 2
        assert {"redis", "prometheus", "grafana"} <= set(services)
        for name in workers + checkers:
            env = services[name]["environment"]
            assert env["HOST_CONTROL_SECRET"] == "change-me"  # from the env file alone
            assert env["HOST_ENV"] == "production"
            Settings.from_env({k: str(v) for k, v in env.items()})  # valid host settings
        raw = (DEPLOY / "compose.yaml").read_text()
        assert "HOST_CONTROL_SECRET" not in raw  # never written into the compose file itself
        # Docker's 10 s default grace would cut the drain: workers get more than STOP_GRACE
        for name in workers:
            assert _seconds(services[name]["stop_grace_period"]) > 120
        # What Prometheus and Grafana mount exists
        for name in ("prometheus", "grafana"):
            for volume in services[name]["volumes"]:
                source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
                assert Path(source).exists(), source
        # the API: the same image, no control secret (it refuses one), valid API settings
        api = services["api"]
        assert api["command"] == ["api"] and "HOST_CONTROL_SECRET" not in api["environment"]
        Settings.from_env({k: str(v) for k, v in api["environment"].items()}, api=True)
        assert _seconds(api["stop_grace_period"]) > Settings().api_shutdown_timeout
        scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
        targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
        assert sorted(t.split(":")[0] for t in targets) == sorted(checkers)

    def test_a_broken_compose_file_is_refused(self, deploy_copy: Path) -> None:
        path = deploy_copy / "compose.yaml"
        path.write_text(path.read_text().replace("stop_grace_period: 130s",
                                                 "stop_grace_periodd: 130s"))
        assert compose_config(deploy_copy).returncode != 0


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(value))
    assert match, value
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


# --- Kubernetes ------------------------------------------------------------------------------

def render(deploy: Path) -> list[dict[str, Any]]:
    proc = run("kubectl", "kustomize", str(deploy / "kubernetes" / "overlays" / "production"))
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


class TestKubernetes:
    def test_renders_and_every_object_passes_its_schema(self, deploy_copy: Path) -> None:
        objects = render(deploy_copy)
        skipped = set()
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, "1.30.0", strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                skipped.add(obj["kind"])
        assert skipped == CUSTOM
        assert {o["kind"] for o in objects} >= {"Deployment", "Service", "PodDisruptionBudget",
                                                "Secret", "Namespace", *CUSTOM}

    def test_a_broken_object_fails_the_schema(self, deploy_copy: Path) -> None:
        worker = by_kind(render(deploy_copy), "Deployment", "host-worker")
        worker["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 120
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(worker, "1.30.0", strict=True)

    def test_worker_drains_before_it_stops_within_its_grace(self, deploy_copy: Path) -> None:
        """preStop drains this pod's worker; the grace period outlasts the drain's timeout
        plus one task's time limit, and the preStop's own bound plus the entrypoint's."""
        objects = render(deploy_copy)
        pod = by_kind(objects, "Deployment", "host-worker")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = env_of(container)
        settings = Settings.from_env({**{k: v for k, v in env.items() if k.startswith("HOST_")},
                                      "HOST_CONTROL_SECRET": "from the Secret"})
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["host-entrypoint", "drain"]
        grace = pod["terminationGracePeriodSeconds"]
        drain, stop = float(env["DRAIN_TIMEOUT"]), float(env["STOP_GRACE"])
        assert grace > drain + settings.task_time_limit
        assert grace >= drain + 15 + stop  # entrypoint.sh bounds its drain at DRAIN_TIMEOUT + 15
        assert stop >= settings.task_time_limit  # a warm shutdown can finish one task
        # Readiness means "in rotation", liveness "the process answers": both on the worker's
        # own status port, neither a command that broadcasts to the fleet
        port = {p["name"]: p["containerPort"] for p in container["ports"]}["status"]
        assert settings.worker_status_port == port
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "status"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "status"}
        assert "inspect" not in yaml.safe_dump(container)
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        # The secret comes from the generated Secret, never from a literal
        secret = by_kind(objects, "Secret")
        assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
        assert "HOST_CONTROL_SECRET" not in env

    def test_disruption_budget_checkers_and_monitoring_fit_together(self, deploy_copy: Path) -> None:
        objects = render(deploy_copy)
        worker = by_kind(objects, "Deployment", "host-worker")
        checker = by_kind(objects, "Deployment", "host-checker")
        pdb = by_kind(objects, "PodDisruptionBudget", "host-worker")
        worker_labels = worker["spec"]["template"]["metadata"]["labels"]
        checker_labels = checker["spec"]["template"]["metadata"]["labels"]
        assert _selects(pdb["spec"]["selector"]["matchLabels"], worker_labels)
        assert pdb["spec"]["maxUnavailable"] == 1
        assert checker["spec"]["replicas"] == 2
        services = [o for o in objects if o["kind"] == "Service"
                    and o["metadata"]["name"].startswith("host-checker")]
        assert len(services) == 2
        assert all(_selects(s["spec"]["selector"], checker_labels) for s in services)
        monitor = by_kind(objects, "ServiceMonitor", "host-checker")
        (scraped,) = [s for s in services
                      if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert scraped["spec"]["publishNotReadyAddresses"] is True  # standbys are scraped too
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
            p["name"] for p in scraped["spec"]["ports"]}
        scaled = by_kind(objects, "ScaledObject")
        assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]

    def test_the_api_holds_no_secret_answers_before_it_stops_and_scales(
            self, deploy_copy: Path) -> None:
        objects = render(deploy_copy)
        api = by_kind(objects, "Deployment", "host-api")
        pod = api["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        labels = api["spec"]["template"]["metadata"]["labels"]
        env = env_of(container)
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("HOST_")},
                                     api=True)
        assert container["args"] == ["api"] and "envFrom" not in container  # no Secret
        assert pod["terminationGracePeriodSeconds"] > settings.api_shutdown_timeout
        port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
        assert port == settings.api_port
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert settings.api_jobs_dir in mounts  # writable under a read-only root
        assert _selects(by_kind(objects, "Service", "host-api")["spec"]["selector"], labels)
        assert _selects(by_kind(objects, "PodDisruptionBudget", "host-api")["spec"]["selector"]
                        ["matchLabels"], labels)
        hpa = by_kind(objects, "HorizontalPodAutoscaler", "host-api")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "host-api"
        metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        assert metric in Path(REPO / "api" / "metrics.py").read_text()

    def test_prometheus_rule_is_alerts_yml_and_valid(self, deploy_copy: Path, tmp_path: Path) -> None:
        """One source: the PrometheusRule's groups are deploy/prometheus/alerts.yml's, the
        committed file is what the generator writes, and promtool accepts the rules and the
        autoscaler's query (which counts held work as well as waiting work)."""
        sys.path.insert(0, str(KUBE))
        try:
            import prometheusrule
        finally:
            sys.path.remove(str(KUBE))
        assert (KUBE / "base" / "prometheusrule.yaml").read_text() == prometheusrule.render()
        rule = by_kind(render(deploy_copy), "PrometheusRule")
        alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
        assert rule["spec"]["groups"] == alerts["groups"]
        query = by_kind(render(deploy_copy), "ScaledObject")["spec"]["triggers"][0]["metadata"][
            "query"]
        assert "host_worker_inflight" in query and "host_queue_messages" in query
        rules = tmp_path / "rules.yml"
        rules.write_text(yaml.safe_dump({"groups": [*rule["spec"]["groups"], {
            "name": "keda", "rules": [{"record": "host:keda_trigger", "expr": query}]}]}))
        checked = run(require("promtool"), "check", "rules", str(rules))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        rules.write_text(rules.read_text().replace("host_worker_inflight)", "host_worker_inflight"))
        assert run(require("promtool"), "check", "rules", str(rules)).returncode != 0


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- systemd ---------------------------------------------------------------------------------

UNITS = ("host-worker@.service", "host-healthcheck.service", "host.target")


def verify(units_dir: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify in a root of its own: the units, systemd's own units, and a
    stand-in for the installed /opt/host/bin/celery (verify checks that it is executable)."""
    (root / "opt/host/bin").mkdir(parents=True, exist_ok=True)
    celery = root / "opt/host/bin/celery"
    celery.write_text("#!/bin/sh\n")
    celery.chmod(0o755)
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", dirs_exist_ok=True,
                    symlinks=True)
    system = root / "etc/systemd/system"
    shutil.copytree(units_dir, system, dirs_exist_ok=True)
    names = ["/etc/systemd/system/host-worker@1.service",
             "/etc/systemd/system/host-healthcheck.service",
             "/etc/systemd/system/host-api.service", "/etc/systemd/system/host.target"]
    return run("systemd-analyze", "verify", "--man=no", f"--root={root}", *names, cwd=root)


class TestSystemd:
    def test_units_verify_clean_and_a_bad_one_does_not(self, tmp_path: Path) -> None:
        ok = verify(DEPLOY / "systemd", tmp_path / "root")
        assert (ok.returncode, ok.stdout + ok.stderr) == (0, "")
        broken = tmp_path / "broken"
        shutil.copytree(DEPLOY / "systemd", broken)
        unit = broken / "host-healthcheck.service"
        unit.write_text(unit.read_text().replace("RestartSec=2", "RestartSecs=2"))
        bad = verify(broken, tmp_path / "root2")
        assert "RestartSecs" in bad.stdout + bad.stderr

    def test_worker_unit_drains_first_within_its_stop_timeout(self) -> None:
        text = (DEPLOY / "systemd" / "host-worker@.service").read_text()
        values = dict(re.findall(r"(?m)^(\w+)=(.*)$", text))
        assert "fleet drain ${WORKER_NAME} --stopping --wait" in values["ExecStop"]
        drain = float(re.search(r"--timeout (\d+)", values["ExecStop"]).group(1))  # type: ignore[union-attr]
        assert float(values["TimeoutStopSec"]) > drain + Settings().task_time_limit
        assert values["KillMode"] == "mixed"
