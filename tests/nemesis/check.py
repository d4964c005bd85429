"""The checker of every promise, reading what the run left behind — the results, the API's
outcomes, the store's audit log, the workers' logs — against the workload's history of what it
sent. Each violation names the input or worker, the time, and the faults around it."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.nemesis.schedule import Fault

OUT = {"DRAINING", "QUARANTINED", "MAINTENANCE"}
IN = {"HEALTHY", "SUSPECT", "PROBATION"}
AUTOMATIC = {"wear", "probe", "self"}
#: The blast-radius bound as docs/policy.md states it (the default guard): automatic action
#: takes out at most a quarter of the fleet, and at least one worker. Written out here, not
#: imported: the check must not share the code it checks.
MAX_EJECTED_FRACTION, MIN_EJECTIONS = 0.25, 1
#: A task that passed the gate just before the verdict may start a little after it.
START_SLACK_S = 0.1
#: A task's start is stamped before its gate read; the read that failed took up to two of the
#: worker's per-task timeouts (50 ms each) before it said so.
UNREAD_SLACK_S = 0.2


@dataclass
class Violation:
    promise: str
    what: str
    at: float | None = None
    faults: list[str] = field(default_factory=list)


@dataclass
class Report:
    sent: int = 0
    answered: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def around(faults: list[Fault], begun: float, at: float | None, width: float = 10.0) -> list[str]:
    """The faults active within ``width`` seconds of ``at`` (a wall-clock time)."""
    if at is None:
        return []
    t = at - begun
    return [str(f) for f in faults if f.at - width <= t <= f.at + f.duration + width]


def check(run_dir: Path, faults: list[Fault], begun: float, audit: list[dict[str, Any]],
          api_outcomes: dict[str, dict[str, Any]], workers: int) -> Report:
    report = Report()
    sent = jsonl(run_dir / "sent.jsonl")
    records = jsonl(run_dir / "feed.jsonl")
    answers = [(r.get("ref"), r) for r in records] + [
        (ref, {**(o.get("result") or {}), "status": o.get("status")}) for ref, o in
        api_outcomes.items()]
    _exactly_once(report, sent, answers, faults, begun)
    analysed = [r for _, r in answers if r.get("status") == "analysed"]
    logs = {p.stem: jsonl(p) for p in sorted(run_dir.glob("worker*.log"))}
    _none_started_out_of_rotation(report, analysed, audit, faults, begun, _unread(logs))
    _blast_radius(report, audit, faults, begun, workers)
    _earned_way_back(report, audit, faults, begun)
    _epochs(report, logs, faults, begun)
    _actions_audited(report, logs, audit, faults, begun)
    return report


def _exactly_once(report: Report, sent: list[dict[str, Any]],
                  answers: list[tuple[Any, dict[str, Any]]], faults: list[Fault],
                  begun: float) -> None:
    refs = {s["ref"]: s for s in sent}
    count = Counter(ref for ref, _ in answers)
    report.sent, report.answered = len(refs), sum(1 for r in refs if count[r])
    report.by_status = dict(Counter(str(r.get("status")) for _, r in answers))
    report.checked["inputs"] = len(refs)
    for ref, s in refs.items():
        if count[ref] == 0:
            report.violations.append(Violation("answered", f"input {ref} ({s['path']}) never "
                                               "answered", s["at"], around(faults, begun, s["at"])))
        elif count[ref] > 1:
            report.violations.append(Violation("exactly once", f"input {ref} answered "
                                               f"{count[ref]} times", s["at"],
                                               around(faults, begun, s["at"])))
    for ref in count:
        if ref not in refs:
            report.violations.append(Violation("nothing unexpected", f"answer for {ref}, "
                                               "which was never sent"))
    failed = [(ref, r) for ref, r in answers if r.get("status") not in ("analysed", "rejected")]
    for ref, r in failed:
        report.violations.append(Violation("answered", f"input {ref} failed: "
                                           f"{str(r.get('reason'))[:160]}"))


def _out_intervals(audit: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per worker, the times it was out of rotation by a verdict the store held: from the gate
    key's closing (the ``drain_ordered`` record written with it, after a transition into
    DRAINING, QUARANTINED or MAINTENANCE) to its re-admission. The transition is the checker's
    decision; until its gate key is written no worker can know of it (a loaded checker takes
    more than the slack between the two)."""
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    decided: set[str] = set()
    opened: dict[str, float] = {}
    kinds = ("transition", "drain_ordered")
    for r in sorted((r for r in audit if r.get("kind") in kinds), key=lambda r: r["at"]):
        w, to = str(r.get("worker")), r.get("to")
        if r.get("kind") == "drain_ordered":
            if w in decided and w not in opened:
                opened[w] = r["at"]
        elif to in OUT:
            decided.add(w)
        elif to in IN:
            decided.discard(w)
            if w in opened:
                spans[w].append((opened.pop(w), r["at"]))
    for w, start in opened.items():
        spans[w].append((start, float("inf")))
    return spans


def _unread(logs: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[float, float]]]:
    """Per worker, the windows in which one of its pool processes could not read its gate key
    and went by its last answer (its own ``gate_read_failed`` lines: the store away from it,
    or the path to it losing packets), from just before the read that failed."""
    windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for lines in logs.values():
        for e in lines:
            at, until = e.get("at"), e.get("until")
            if e.get("event") == "gate_read_failed" and isinstance(at, float) and \
                    isinstance(until, float):
                windows[str(e.get("worker"))].append((at - UNREAD_SLACK_S, until))
    return windows


def _none_started_out_of_rotation(report: Report, analysed: Iterable[dict[str, Any]],
                                  audit: list[dict[str, Any]], faults: list[Fault],
                                  begun: float,
                                  unread: dict[str, list[tuple[float, float]]]) -> None:
    """No work-queue task started after a verdict its worker could read: one that started while
    the worker's read had just failed (docs/operations.md: the data plane never waits on the
    store) went by the last answer, and is counted, not a violation."""
    spans = _out_intervals(audit)
    report.checked["out_of_rotation_spans"] = sum(len(s) for s in spans.values())
    report.checked["started_on_last_answer"] = 0
    for r in analysed:
        w, started = r.get("worker"), r.get("started_at")
        if r.get("queue") not in ("tweets", "default", "bulk") or not isinstance(started, float):
            continue
        for low, high in spans.get(str(w), []):
            if low + START_SLACK_S < started < high:
                if any(a <= started <= b for a, b in unread.get(str(w), [])):
                    report.checked["started_on_last_answer"] += 1
                    continue
                report.violations.append(Violation(
                    "out of rotation", f"{r.get('ref')} started on {w} {started - low:.3f}s "
                    f"after the verdict took it out (re-admitted {high - low:.1f}s after it)",
                    started, around(faults, begun, started)))


def _earned_way_back(report: Report, audit: list[dict[str, Any]], faults: list[Fault],
                     begun: float) -> None:
    """A worker the checker took out (wear, a probe, its own gate) is back in rotation only
    through probation (its probes and clean wear) or a person's restore: never straight to
    HEALTHY by itself, whatever happened meanwhile (a restart by its platform, OFFLINE)."""
    out_by_checker: dict[str, dict[str, Any]] = {}
    returns = 0
    for r in sorted((r for r in audit if r.get("kind") == "transition"), key=lambda r: r["at"]):
        w, to = str(r.get("worker")), r.get("to")
        if to in OUT and r.get("automatic") and r.get("cause") in AUTOMATIC:
            out_by_checker.setdefault(w, r)
        elif to in IN and w in out_by_checker:
            returns += 1
            if to == "PROBATION" or not r.get("automatic"):
                out_by_checker.pop(w)  # earned, or a person's word
                continue
            took_out = out_by_checker.pop(w)
            report.violations.append(Violation(
                "earned way back", f"{w} went {r.get('from')} -> {to} ({r.get('reason')}) "
                f"after the checker took it out ({took_out.get('reason')}), with no probation "
                "and no person", r["at"], around(faults, begun, r["at"])))
    report.checked["returns_to_rotation"] = returns


def _blast_radius(report: Report, audit: list[dict[str, Any]], faults: list[Fault],
                  begun: float, workers: int) -> None:
    limit = max(MIN_EJECTIONS, math.floor(MAX_EJECTED_FRACTION * workers))
    state: dict[str, tuple[str, str]] = {}
    ejections = 0
    for r in sorted((r for r in audit if r.get("kind") == "transition"), key=lambda r: r["at"]):
        w = str(r.get("worker"))
        state[w] = (str(r.get("to")), str(r.get("cause") or ""))  # as recorded: "" is nobody's
        if r.get("to") == "DRAINING" and r.get("automatic") and r.get("cause") == "wear":
            ejections += 1
            out = [n for n, (s, c) in state.items() if c in AUTOMATIC
                   and s in ("DRAINING", "QUARANTINED", "OFFLINE")]
            if len(out) > limit:
                report.violations.append(Violation(
                    "blast radius", f"{w} ejected for wear with {len(out)} out by automatic "
                    f"action ({', '.join(sorted(out))}), over the bound of {limit}", r["at"],
                    around(faults, begun, r["at"])))
    report.checked["wear_ejections"] = ejections


def _epochs(report: Report, logs: dict[str, list[dict[str, Any]]], faults: list[Fault],
            begun: float) -> None:
    applied = 0
    for name, lines in logs.items():
        highest: dict[Any, int] = {}
        for line in lines:
            if line.get("event") not in ("worker_drained", "worker_admitted"):
                continue
            epoch = line.get("epoch")
            if not isinstance(epoch, int):
                continue
            applied += 1
            shard = line.get("shard") or 0
            if epoch < highest.get(shard, 0):
                report.violations.append(Violation(
                    "fencing", f"{name} applied {line['event']} of epoch {epoch} after one of "
                    f"epoch {highest[shard]}", None, []))
            highest[shard] = max(highest.get(shard, 0), epoch)
    report.checked["fenced_commands_applied"] = applied


def _actions_audited(report: Report, logs: dict[str, list[dict[str, Any]]],
                     audit: list[dict[str, Any]], faults: list[Fault], begun: float) -> None:
    """Every drain a worker applied has its record in the audit log: a confirmed or an
    unconfirmed drain, or the transition that ordered it."""
    confirmed = defaultdict(list)
    for r in audit:
        if r.get("kind") in ("drain_confirmed", "drain_unconfirmed", "transition"):
            confirmed[r.get("worker")].append(float(r["at"]))
    drains = 0
    for lines in logs.values():
        for line in lines:
            if line.get("event") != "worker_drained":
                continue
            drains += 1
            worker = line.get("worker")
            at = _time(line.get("timestamp"))
            if at is None or not any(abs(t - at) < 30 for t in confirmed.get(worker, [])):
                report.violations.append(Violation(
                    "audited", f"{worker} applied a drain ({line.get('reason')}) with no audit "
                    "record within 30 s", at, around(faults, begun, at)))
    report.checked["drains_applied"] = drains


def _time(stamp: Any) -> float | None:
    from datetime import datetime

    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
