"""A nemesis run inside the suite: two and a half minutes, a fixed seed, every promise checked
(python -m tests.nemesis runs any seed for any length; docs/operations.md reads its report).

Seed 355 has ejections for wear, a worker quarantined for wrong answers and restarted by its
platform meanwhile, and more; it reported "earned way back" on a build where a platform's stop
drain took a quarantined worker back in at its restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nemesis.__main__ import print_report, run

SEED = 355


@pytest.mark.background
@pytest.mark.timeout(900)
def test_minutes_of_overlapping_faults_break_no_promise(tmp_path: Path) -> None:
    report, timings = run(SEED, 2.5, 4, tmp_path)
    print_report(report, timings)
    assert timings["faults"] >= 15
    assert report.sent > 5_000 and report.checked["wear_ejections"] > 0
    assert report.checked["returns_to_rotation"] > 0
    assert report.ok, "\n".join(f"[{v.promise}] {v.what} around {v.faults}"
                                for v in report.violations[:20])
