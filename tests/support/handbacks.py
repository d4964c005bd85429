"""What the workers' own logs say they handed back: the redeliveries a drain cost."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path


def handed_back(logs: Iterable[Path | None]) -> Counter[str]:
    """How often each task id was handed back to the broker unstarted, over these worker logs
    (``message_handed_back`` lines of host's JSON logs)."""
    counts: Counter[str] = Counter()
    for path in logs:
        if path is None or not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if '"message_handed_back"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            counts[str(record.get("task_id"))] += 1
    return counts
