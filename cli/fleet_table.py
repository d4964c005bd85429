"""What ``fleet status`` shows: one row per worker, from the stored states and the last report
each worker sent, as a table or as JSON."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from broker_config.queues import WORK_QUEUES
from broker_config.shards import shard_of
from healthcheck.policy import WorkerHealth
from healthcheck.policy.model import CONSUMING
from healthcheck.store import to_dict


def status_of(workers: dict[str, WorkerHealth], reports: dict[str, dict[str, Any]],
              leaders: dict[int, str | None], shards: int) -> dict[str, Any]:
    """The fleet's status: a row per worker, healthy consumers per queue, each shard's leader."""
    rows = [_row(to_dict(w), reports.get(name, {})) for name, w in sorted(workers.items())]
    queues = {q: sum(1 for w in workers.values() if w.consumes(q)) for q in WORK_QUEUES}
    leading = [{"shard": k, "leader": token,
                "workers": sum(1 for name in workers if shard_of(name, shards) == k)}
               for k, token in leaders.items()]
    return {"workers": rows, "healthy_consumers": queues, "shards": leading}


def print_status(data: dict[str, Any], now: float) -> None:
    """The status as a table (``now``: by the checker's clock)."""
    table = Table(title="host fleet")
    for col in ("worker", "state", "reason", "since", "cpu %", "mem %", "in flight", "consuming"):
        table.add_column(col)
    for r in data["workers"]:
        state = _color(r["state"]) + (" [magenta]busy[/]" if r["busy"] else "")
        table.add_row(r["worker"], state, r["reason"][:110],
                      _ago(now - r["since"]), _num(r["wear"].get("cpu_percent")),
                      _num(r["wear"].get("memory_percent")), str(r["inflight"] or 0),
                      ",".join(r["consuming"] or []) or "-")
    console = Console()
    console.print(table)
    console.print("healthy consumers: " + ", ".join(f"{q} {n}" for q, n in
                                                     data["healthy_consumers"].items()))
    for s in data["shards"]:
        console.print(f"shard {s['shard']}: {s['workers']} workers, "
                      f"leader {s['leader'] or '[red]none[/red]'}")


def checker_now(reports: dict[str, dict[str, Any]]) -> float:
    """"Now" by the checker's clock, which wrote every stored time: when it received the newest
    report (workers report every second). Ages are never this machine's clock minus the
    checker's; with no report stored, this machine's clock is all there is."""
    times = [r["at"] for r in reports.values() if isinstance(r.get("at"), (int, float))]
    return max(times, default=time.time())


def _row(w: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    return {"worker": w["name"], "state": w["state"], "reason": w["reason"], "since": w["since"],
            "cause": w["cause"], "queues": w["queues"], "held": w.get("held") or None,
            "wear": report.get("wear") or {},
            "consuming": report.get("consuming"), "inflight": report.get("inflight"),
            "gate": report.get("gate"), "reported_at": report.get("at"),
            # busy, not worn: over a soft CPU or load limit with its work getting done
            "busy": report.get("busy") if w["state"] in CONSUMING_STATES else None}


CONSUMING_STATES = {s.value for s in CONSUMING}


def _color(state: str) -> str:
    color = {"HEALTHY": "green", "PROBATION": "cyan", "SUSPECT": "yellow",
             "MAINTENANCE": "blue"}.get(state, "red")
    return f"[{color}]{state}[/]"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _num(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, (int, float)) else "-"
