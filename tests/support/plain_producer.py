"""A Celery producer that is not host: a plain ``Celery(broker=...)`` app, run as its own program
(``python plain_producer.py MODE BROKER [N]``), printing one JSON summary line.

It never imports host's app, tasks or workers (it checks), only, in the ``helper`` mode, the
producer contract module that any application may use.

Modes:
  raw      N tasks via ``send_task`` with ``queue="tweets"``, after 200 with one argument too many
  helper   N tweets through ``broker_config.contract.analyse``
  unrouted one task without a queue (it lands on Celery's default queue)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from celery import Celery

GROUND_TRUTH = Path(__file__).resolve().parents[3] / "shared" / "data" / "tweets_groundtruth.tsv"


def lines(n: int) -> list[str]:
    rows = GROUND_TRUTH.read_text(encoding="utf-8").splitlines()
    return [rows[i % len(rows)] for i in range(n)]


def main() -> None:
    mode, broker = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    app = Celery("plain", broker=broker, backend=broker)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    summary: dict[str, object] = {}
    if mode == "raw":
        bad = [app.send_task("host.analyse", args=[{"ref": f"bad:{i}", "line": "x",
                                                    "format": "text"}, "one too many"],
                             queue="tweets") for i in range(200)]
        good = [app.send_task("host.analyse", args=[{"ref": f"g:{i}", "line": line,
                                                     "format": "tsv"}], queue="tweets")
                for i, line in enumerate(lines(n))]
        summary["bad"] = [r.get(timeout=120) for r in bad]
        summary["good"] = [r.get(timeout=120) for r in good]
    elif mode == "helper":
        from broker_config.contract import analyse, rejected

        results = [analyse(app, line, ref=f"h:{i}", fmt="tsv") for i, line in enumerate(lines(n))]
        records = [r.get(timeout=120, propagate=False) for r in results]
        records = [r if isinstance(r, dict) else {"status": "failed", "error": repr(r)}
                   for r in records]
        summary["good"] = records
        summary["rejected"] = sum(rejected(r) for r in records)
    elif mode == "unrouted":
        summary["id"] = app.send_task("host.analyse", args=[{"ref": "u", "line": "lost?"}]).id
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("host", "workers", "healthcheck",
                                                                  "cli"))
    summary["imported_host"] = leaked or (["broker_config.app"] if "broker_config.app"
                                          in sys.modules else [])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
