"""Detectors: turn one wear report into a verdict (ok, soft or hard), with reasons and evidence."""

from __future__ import annotations

from healthcheck.policy.config import PolicyConfig, Threshold
from healthcheck.policy.model import OK, Verdict, WearReport


def assess(report: WearReport, config: PolicyConfig, fleet_p95: float | None = None,
           tight: bool = False, in_rotation: bool = False) -> Verdict:
    """Judge one report against every detector; the worst level wins.

    Args:
        report: the worker's report.
        config: the policy.
        fleet_p95: the fleet's median p95 runtime (None when the fleet is too small to compare).
        tight: apply probation's tighter soft limits.
        in_rotation: the worker should consume its configured work queues now; one it says
            it does not consume is a soft signal (the checker corrects it first; a worker
            whose correction did not take keeps breaching and is ejected like any other).
    """
    soft: list[str] = []
    hard: list[str] = []
    evidence: dict[str, float | str] = {}
    factor = config.recovery.probation_tighten if tight else 1.0
    over: list[str] = []
    for metric, limits in config.thresholds.items():
        reading = report.wear.get(metric)
        if reading is not None:
            _check_reading(metric, reading.value, reading.peak, limits, factor, soft, hard,
                           evidence)
            if (reading.last is not None and limits.hard is not None
                    and reading.last >= limits.hard):
                over.append(metric)
    _check_failures(report, config, soft, hard, evidence)
    _check_latency(report, config, fleet_p95, soft, evidence)
    missing = report.not_consuming() if in_rotation else ()
    if missing:
        soft.append(f"not consuming {', '.join(missing)}")
        evidence["not_consuming"] = ",".join(missing)
    if report.self_protected:
        hard.append(f"worker closed its own gate: {report.self_protected}")
    if hard:
        return Verdict("hard", tuple(hard), evidence, tuple(over))
    if soft:
        return Verdict("soft", tuple(soft), evidence, tuple(over))
    return Verdict("ok", over_hard=tuple(over)) if over else OK


def sustained(verdict: Verdict, report: WearReport, hot: int, hot_s: float,
              config: PolicyConfig) -> Verdict:
    """``verdict`` made hard when ``hot`` consecutive reports (this one included), spanning
    ``hot_s`` seconds, had a raw sample over a hard limit, and both ``config.sustained.samples``
    and ``config.sustained.min_s`` are reached."""
    rule = config.sustained
    if hot < rule.samples or hot_s < rule.min_s or verdict.level == "hard":
        return verdict
    reasons = tuple(f"{m} {report.wear[m].last:g} >= hard {config.thresholds[m].hard:g} "
                    f"for {hot_s:.2f} s ({hot} samples in a row)" for m in verdict.over_hard)
    evidence = {**verdict.evidence, "hot_samples": hot, "hot_s": round(hot_s, 3),
                **{m: report.wear[m].value for m in verdict.over_hard},
                **{f"{m}_last": report.wear[m].last or 0.0 for m in verdict.over_hard}}
    return Verdict("hard", (*reasons, *verdict.reasons), evidence, verdict.over_hard)


def _check_reading(metric: str, value: float, peak: float, limits: Threshold, factor: float,
                   soft: list[str], hard: list[str], evidence: dict[str, float | str]) -> None:
    if limits.hard is not None and value >= limits.hard:
        hard.append(f"{metric} {value:g} >= hard {limits.hard:g}")
    elif limits.peak_hard is not None and peak >= limits.peak_hard:
        hard.append(f"{metric} peak {peak:g} >= hard {limits.peak_hard:g}")
    elif limits.soft is not None and value >= limits.soft * factor:
        soft.append(f"{metric} {value:g} >= soft {limits.soft * factor:g}")
    elif limits.peak_soft is not None and peak >= limits.peak_soft * factor:
        soft.append(f"{metric} peak {peak:g} >= soft {limits.peak_soft * factor:g}")
    else:
        return
    evidence[metric] = value
    evidence[f"{metric}_peak"] = peak


def _check_failures(report: WearReport, config: PolicyConfig, soft: list[str], hard: list[str],
                    evidence: dict[str, float | str]) -> None:
    f = config.failures
    if report.consecutive_failures >= f.consecutive:
        hard.append(f"{report.consecutive_failures} consecutive task failures")
        evidence["consecutive_failures"] = report.consecutive_failures
    volume = report.completed + report.failed
    if volume < f.min_volume:  # too few tasks to call a rate
        return
    rate = report.failed / volume
    if rate >= f.hard_rate:
        hard.append(f"failure rate {rate:.0%} >= hard {f.hard_rate:.0%} ({volume} tasks)")
    elif rate >= f.soft_rate:
        soft.append(f"failure rate {rate:.0%} >= soft {f.soft_rate:.0%} ({volume} tasks)")
    else:
        return
    evidence["failure_rate"] = rate


def _check_latency(report: WearReport, config: PolicyConfig, fleet_p95: float | None,
                   soft: list[str], evidence: dict[str, float | str]) -> None:
    # A worker whose p95 is 3x the fleet's median p95 is an outlier: with the fleet at 0.02 s
    # and the floor at 0.05 s, the limit is max(0.06, 0.05) = 0.06 s.
    lat = config.latency
    if fleet_p95 is None or report.runtime_p95 is None:
        return
    if report.completed + report.failed < lat.min_volume:
        return
    limit = max(fleet_p95 * lat.factor, lat.floor_s)
    if report.runtime_p95 > limit:
        soft.append(f"p95 runtime {report.runtime_p95:.3f}s > {limit:.3f}s "
                    f"({lat.factor:g}x fleet median {fleet_p95:.3f}s)")
        evidence["runtime_p95"] = report.runtime_p95
        evidence["fleet_p95"] = fleet_p95
