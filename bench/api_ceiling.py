"""How many one-tweet POSTs per second an ASGI stack answers on this machine doing nothing else:
the ceiling over ``bench/api.py``'s figure. Each of bench/bare_asgi.py's apps under uvicorn
(httptools, uvloop; one process, then one per core), loaded by wrk (C, from Debian's ``wrk``
package) with 64 kept-alive connections for 8 s.

    python bench/api_ceiling.py [--seconds 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.redis_server import free_port  # noqa: E402

APPS = {"FastAPI": "bench.bare_asgi:fastapi_app", "Starlette": "bench.bare_asgi:starlette_app",
        "raw ASGI (no framework)": "bench.bare_asgi:raw_app"}
BODY = '{"text": "what a lovely day it is, I am so happy"}'


def measure(app: str, processes: int, seconds: int) -> float:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--workers", str(processes), "--port", str(port),
         "--log-level", "warning", "--no-access-log", "--http", "httptools", "--loop", "uvloop"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(f"wrk.method = 'POST'\nwrk.body = '{BODY}'\n"
                         "wrk.headers['Content-Type'] = 'application/json'\n")
            script.flush()
            out = subprocess.run(["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", script.name,
                                  f"http://127.0.0.1:{port}/v1/messages"],
                                 capture_output=True, text=True, check=True).stdout
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        return float(found.group(1)) if found else 0.0
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    rows = [{"stack": name, "processes": n, "requests_per_s": round(measure(app, n, args.seconds))}
            for name, app in APPS.items() for n in sorted({1, cores})]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"one-tweet POST, answered with a small JSON and nothing else; wrk beside it, {cores} cores")
    for r in rows:
        print(f"{r['stack']:26} {r['processes']} process(es) {r['requests_per_s']:>8} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
