"""A real Prometheus server for the observability tests: deploy/prometheus/ pointed at a test fleet."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from harness.processes import terminate
from harness.redis_server import free_port
from tests.support.cli import REPO

DEPLOY = REPO / "deploy" / "prometheus"


def require(binary: str) -> str:
    """The path of ``binary``, or a failure saying how to get it (`.ci/system-deps`)."""
    path = shutil.which(binary)
    if path is None:
        raise AssertionError(f"{binary} is not installed: run .ci/system-deps (Debian's "
                             f"prometheus package), as `make test` does")
    return path


class PrometheusServer:
    """deploy/prometheus/prometheus.yml, its targets swapped for ``targets`` (with target
    ``labels``), scraping and evaluating rules (its own and ``rule_files``) every second, in a
    directory of its own; ``scrape`` overrides the scrape job's settings (its name, TLS)."""

    def __init__(self, workdir: Path, targets: list[str],
                 scrape: dict[str, Any] | None = None, labels: dict[str, str] | None = None,
                 rule_files: tuple[Path, ...] = ()) -> None:
        self.workdir = workdir
        self.port = free_port()
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(DEPLOY / f) for f in config["rule_files"]]
        config["rule_files"] += [str(f) for f in rule_files]
        config["scrape_configs"][0]["static_configs"] = [{"targets": targets,
                                                          "labels": labels or {}}]
        config["scrape_configs"][0].update(scrape or {})  # e.g. scheme, tls_config, basic_auth
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        self.proc = subprocess.Popen(
            [require("prometheus"), f"--config.file={self.config}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of an HTTP API answer; raises with Prometheus's error if it failed."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(self.url(f"/api/v1/{path}?{query}"), timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (or matrix/scalar as Prometheus returns it)."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result
