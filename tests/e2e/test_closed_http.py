"""The checker's HTTP side closed with TLS and basic auth (an exporter web config file), and a
real Prometheus scraping it that way."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import bcrypt
import pytest

from tests.conftest import CheckerFactory
from tests.support.cli import celery
from tests.support.polling import wait_until
from tests.support.prometheus import PrometheusServer

PASSWORD = "scrape-secret"


def make_certificates(directory: Path) -> Path:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl); the CA's path."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=host test CA")
    run("req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "tls.crt", "-days", "2", "-extfile", "san.ext")
    return directory / "ca.crt"


def web_config(directory: Path) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=6)).decode()
    path = directory / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
                    f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    return path


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class TestClosedHttp:
    def test_tls_and_basic_auth_and_prometheus_scrapes_through_them(
            self, start_checker: CheckerFactory, tmp_path: Path) -> None:
        """HTTPS only; /metrics, the page and /fleet.json need the password; probes do not."""
        ca = make_certificates(tmp_path)
        checker = start_checker(env={"HOST_WEB_CONFIG_FILE": str(web_config(tmp_path)),
                                     "HOST_METRICS_ADDRESS": "127.0.0.1"}, ca=ca)
        assert checker.get("/readyz")[0] == 200
        for path in ("/metrics", "/", "/fleet.json"):
            assert checker.get(path)[0] == 401
            assert checker.get(path, basic("prometheus", "wrong"))[0] == 401
            assert checker.get(path, basic("prometheus", PASSWORD))[0] == 200
        import urllib.error
        import urllib.request

        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{checker.port}/metrics", timeout=3)
        prometheus = PrometheusServer(tmp_path, [f"127.0.0.1:{checker.port}"], scrape={
            "scheme": "https", "tls_config": {"ca_file": str(ca)},
            "basic_auth": {"username": "prometheus", "password": PASSWORD}}).start()
        try:
            wait_until(lambda: prometheus.query('up{job="host-checker"} == 1'), 30,
                       "Prometheus to scrape the checker over TLS with basic auth")
            assert prometheus.query("host_checker_leader")
        finally:
            prometheus.stop()

    def test_a_bad_web_config_is_a_configuration_error(self, host_env: dict[str, str],
                                                       tmp_path: Path) -> None:
        """An unknown key: exit 78 and one line naming the setting."""
        bad = tmp_path / "web.yml"
        bad.write_text("tls_server_cfg: {}\n")
        proc = celery("healthcheck", "--metrics-port", "0",
                      env={**host_env, "HOST_WEB_CONFIG_FILE": str(bad)}, timeout=60)
        assert proc.returncode == 78, proc.stderr
        assert "HOST_WEB_CONFIG_FILE" in proc.stderr and "tls_server_cfg" in proc.stderr
        assert "Traceback" not in proc.stderr
