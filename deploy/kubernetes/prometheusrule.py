"""Writes base/prometheusrule.yaml from deploy/prometheus/alerts.yml: one source of the rules.

    python deploy/kubernetes/prometheusrule.py

tests/integration/test_deploy.py fails when the committed file is not what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
TARGET = HERE / "base" / "prometheusrule.yaml"
HEADER = ("# Generated from deploy/prometheus/alerts.yml by deploy/kubernetes/prometheusrule.py:"
          " edit those, not this.\n")


def render() -> str:
    """The PrometheusRule object, as YAML, for the alerts file's groups."""
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "host"}, "spec": {"groups": groups}}
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=100, allow_unicode=True)


if __name__ == "__main__":
    TARGET.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {TARGET}\n")
