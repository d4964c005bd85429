"""Running host's commands as a user would: ``python -m celery -A host ...`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
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
