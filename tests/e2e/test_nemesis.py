"""A nemesis run inside the suite: three minutes, a fixed seed, every promise checked
(python -m tests.nemesis runs any seed for any length; docs/operations.md reads its report)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nemesis.__main__ import print_report, run

SEED = 20261207


@pytest.mark.background
@pytest.mark.timeout(900)
def test_three_minutes_of_overlapping_faults_break_no_promise(tmp_path: Path) -> None:
    report, timings = run(SEED, 3.0, 4, tmp_path)
    print_report(report, timings)
    assert timings["faults"] >= 15
    assert report.sent > 5_000 and report.checked["wear_ejections"] > 0
    assert report.ok, "\n".join(f"[{v.promise}] {v.what} around {v.faults}"
                                for v in report.violations[:20])
