"""Detectors: turn one wear report into a verdict (ok, soft or hard), with reasons and evidence."""

from __future__ import annotations

from healthcheck.policy.config import LOAD_METRICS, MACHINE_METRICS, Load, PolicyConfig, Threshold
from healthcheck.policy.model import OK, Verdict
from healthcheck.policy.observations import WearReport


def lost_progress(report: WearReport, load: Load) -> str | None:
    """Why the worker's load is not its work ("" when it makes progress; None when it does not
    say, or the rule is off: then its load is judged as wear, as before the rule).

    Nothing done for ``stall_floor_s`` (or ``stall_factor`` times the worker's own p95
    runtime, if longer): with no task running, CPU burnt with nothing to show; with tasks
    running, a stuck or spinning pool. Anything else is a worker busy with its work, or one
    that has only just run out of it.
    """
    if not load.enabled or report.running is None or report.stalled_s is None:
        return None
    limit = max(load.stall_floor_s, load.stall_factor * (report.runtime_p95 or 0.0))
    if report.stalled_s < limit:
        return ""
    if report.running == 0:
        return f"with no task running for {report.stalled_s:.1f} s"
    return f"with {report.running} running and none done for {report.stalled_s:.1f} s"


#: What a worker's cost per item is judged against: the median of its peers (those in rotation
#: consuming the same queues; None: too few), and its own usual cost (None: not known yet).
CostNorm = tuple[float | None, float | None]


def assess(report: WearReport, config: PolicyConfig, fleet_p95: float | None = None,
           tight: bool = False, in_rotation: bool = False,
           cost_norm: CostNorm | None = None) -> Verdict:
    """Judge one report against every detector; the worst level wins.

    Args:
        report: the worker's report.
        config: the policy.
        fleet_p95: the fleet's median p95 runtime (None when the fleet is too small to compare).
        tight: apply probation's tighter soft limits.
        in_rotation: the worker should consume its configured work queues now; one it says
            it does not consume is a soft signal (the checker corrects it first; a worker
            whose correction did not take keeps breaching and is ejected like any other).
        cost_norm: what its cost per item is judged against (None: too few peers to tell).
    """
    soft: list[str] = []
    hard: list[str] = []
    evidence: dict[str, float | str] = {}
    factor = config.recovery.probation_tighten if tight else 1.0
    over, busy = _check_thresholds(report, config, factor, soft, hard, evidence)
    _check_failures(report, config, soft, hard, evidence)
    _check_latency(report, config, fleet_p95, soft, evidence)
    _check_cost(report, config, cost_norm, soft, evidence)
    missing = report.not_consuming() if in_rotation else ()
    if missing:
        soft.append(f"not consuming {', '.join(missing)}")
        evidence["not_consuming"] = ",".join(missing)
    if report.self_protected:
        hard.append(f"worker closed its own gate: {report.self_protected}")
    if hard:
        return Verdict("hard", tuple(hard), evidence, tuple(over), tuple(busy))
    if soft:
        return Verdict("soft", tuple(soft), evidence, tuple(over), tuple(busy))
    return Verdict("ok", over_hard=tuple(over), busy=tuple(busy)) if over or busy else OK


def _check_thresholds(report: WearReport, config: PolicyConfig, factor: float, soft: list[str],
                      hard: list[str], evidence: dict[str, float | str]
                      ) -> tuple[list[str], list[str]]:
    """Each reading against its limits; the metrics with a raw sample over the hard limit (the
    sustained rule counts them, busy or not) and the load metrics high only from being busy."""
    over: list[str] = []
    busy: list[str] = []
    lost = lost_progress(report, config.load)
    for metric, limits in config.thresholds.items():
        reading = report.wear.get(metric)
        if reading is None or (lost is not None and report.running == 0
                               and metric in MACHINE_METRICS):  # its neighbours' load
            continue
        hot = (reading.last is not None and limits.hard is not None
               and reading.last >= limits.hard)
        if hot:
            over.append(metric)
        if metric not in LOAD_METRICS or lost is None:
            _check_reading(metric, reading.value, reading.peak, limits, factor, soft, hard,
                           evidence)
        elif lost:
            # Idle: judged by the raw sample too, so that a worker whose backlog has just run
            # out is not judged by a smoothed value still on its way down.
            idle = report.running == 0 and reading.last is not None
            value = min(reading.value, reading.last or 0.0) if idle else reading.value
            _check_reading(metric, value, reading.peak, limits, factor, soft, hard, evidence,
                           f" {lost}")
            if metric in evidence and report.stalled_s is not None:
                evidence["stalled_s"] = report.stalled_s  # progress lost: a cause that cures
        elif (limits.soft is not None and reading.value >= limits.soft * factor) or hot:
            busy.append(metric)
    return over, busy


def sustained(verdict: Verdict, report: WearReport, hot: int, hot_s: float,
              config: PolicyConfig) -> Verdict:
    """``verdict`` made hard when ``hot`` consecutive reports (this one included), spanning
    ``hot_s`` seconds, had a raw sample over a hard limit, and both ``config.sustained.samples``
    and ``config.sustained.min_s`` are reached."""
    rule = config.sustained
    if hot < rule.samples or hot_s < rule.min_s or verdict.level == "hard":
        return verdict
    worn = [m for m in verdict.over_hard if m not in verdict.busy]  # busy is excused
    if not worn:
        return verdict
    lost = lost_progress(report, config.load) if any(m in LOAD_METRICS for m in worn) else ""
    reasons = tuple(f"{m} {report.wear[m].last:g} >= hard {config.thresholds[m].hard:g} "
                    f"for {hot_s:.2f} s ({hot} samples in a row)"
                    f"{' ' + lost if lost and m in LOAD_METRICS else ''}" for m in worn)
    evidence = {**verdict.evidence, "hot_samples": hot, "hot_s": round(hot_s, 3),
                **{m: report.wear[m].value for m in worn},
                **{f"{m}_last": report.wear[m].last or 0.0 for m in worn}}
    if report.stalled_s is not None and lost:
        evidence["stalled_s"] = report.stalled_s
    return Verdict("hard", (*reasons, *verdict.reasons), evidence, verdict.over_hard,
                   verdict.busy)


def _check_reading(metric: str, value: float, peak: float, limits: Threshold, factor: float,
                   soft: list[str], hard: list[str], evidence: dict[str, float | str],
                   why: str = "") -> None:
    if limits.hard is not None and value >= limits.hard:
        hard.append(f"{metric} {value:g} >= hard {limits.hard:g}{why}")
    elif limits.peak_hard is not None and peak >= limits.peak_hard:
        hard.append(f"{metric} peak {peak:g} >= hard {limits.peak_hard:g}{why}")
    elif limits.soft is not None and value >= limits.soft * factor:
        soft.append(f"{metric} {value:g} >= soft {limits.soft * factor:g}{why}")
    elif limits.peak_soft is not None and peak >= limits.peak_soft * factor:
        soft.append(f"{metric} peak {peak:g} >= soft {limits.peak_soft * factor:g}{why}")
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


def cost_limit(config: PolicyConfig, median: float, usual: float) -> float:
    """The most CPU per item a worker may spend: ``factor`` times its peers' median and its own
    usual cost, and ``floor_ms`` over the median."""
    c = config.cost
    return max(c.factor * median, c.factor * usual, median + c.floor_ms)


def _check_cost(report: WearReport, config: PolicyConfig, norm: CostNorm | None,
                soft: list[str], evidence: dict[str, float | str]) -> None:
    # The same work costing this worker three times what it costs its peers and itself: what a
    # busy worker never shows (its CPU is its work) and a degraded one does. Both must be
    # known: a worker on slower hardware costs more than its peers from its first report on.
    if not config.cost.enabled or norm is None or report.cost_ms is None:
        return
    median, usual = norm
    if median is None or usual is None:
        return
    limit = cost_limit(config, median, usual)
    if report.cost_ms <= limit:
        return
    soft.append(f"cost per item {report.cost_ms:.2f} ms > {limit:.2f} ms "
                f"({config.cost.factor:g}x its peers' median {median:.2f} ms and its own "
                f"usual {usual:.2f} ms)")
    evidence["cost_ms"] = report.cost_ms
    evidence["peers_cost_ms"] = median
    evidence["usual_cost_ms"] = round(usual, 3)
