"""Running host's commands as a user would: ``python -m celery -A host ...`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def celery(*args: str, env: dict[str, str], timeout: float = 300,
           stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``celery -A host ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "celery", "-A", "host", *args], env=env,
                          cwd=REPO, input=stdin.decode("utf-8", "surrogateescape") if stdin else None,
                          capture_output=True, text=True, timeout=timeout, check=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of a results file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def feed(ingest: subprocess.Popen[bytes], lines: list[str], rate: float) -> None:
    """Write the lines to ingest's standard input at ``rate`` a second, then close it."""
    assert ingest.stdin is not None
    started = time.monotonic()
    for i, line in enumerate(lines):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ingest.stdin.write(line.encode() + b"\n")
        ingest.stdin.flush()
    ingest.stdin.close()
