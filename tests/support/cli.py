"""Running host's commands as a user would: ``python -m celery -A host ...`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.polling import wait_until

REPO = Path(__file__).resolve().parents[2]


def celery(*args: str, env: dict[str, str], timeout: float = 300,
           stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``celery -A host ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "celery", "-A", "host", *args], env=env,
                          cwd=REPO, input=stdin.decode("utf-8", "surrogateescape") if stdin else None,
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_celery(*args: str, env: dict[str, str], stderr: Path) -> subprocess.Popen[bytes]:
    """Start ``celery -A host ARGS`` in the background, its standard error to ``stderr``."""
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", *args], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr.open("w"))


def wait_first_result(out: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until a producer started with ``start_celery`` has written its first result to
    ``out`` (or has ended): where the stream really begins, however slowly it started."""
    wait_until(lambda: (out.exists() and out.stat().st_size > 0) or proc.poll() is not None,
               timeout, "the producer's first result")


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


def ingest_head(source: Path, n: int, env: dict[str, str], tmp_path: Path) -> list[dict[str, Any]]:
    """``celery -A host ingest`` on the first ``n`` lines of ``source``: its results (it must
    exit 0)."""
    head = tmp_path / "head.tsv"
    head.write_text("".join(source.read_text(encoding="utf-8").splitlines(True)[:n]))
    out = tmp_path / "results.jsonl"
    done = celery("ingest", str(head), "--out", str(out), "--timeout", "60", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return read_jsonl(out)
