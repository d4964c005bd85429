"""The nemesis's schedule and its checker, on made-up histories: the same seed gives the same
schedule, and each promise's check reports the violation it exists for (no I/O but tmp files)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from tests.nemesis.check import check
from tests.nemesis.schedule import LEADER_KINDS, NET_KINDS, Fault, draw

T0 = 1_000_000_000.0  # 2001-09-09T01:46:40Z


def write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def history(tmp: Path, sent: list[str], answered: list[dict[str, Any]]) -> None:
    write(tmp / "sent.jsonl", [{"path": "feed", "ref": r, "at": T0 + i} for i, r in enumerate(sent)])
    write(tmp / "feed.jsonl", answered)


def analysed(ref: str, worker: str = "w1", started: float = T0 + 1.0) -> dict[str, Any]:
    return {"ref": ref, "status": "analysed", "worker": worker, "started_at": started,
            "queue": "tweets"}


def transition(worker: str, to: str, at: float, cause: str = "wear",
               automatic: bool = True) -> dict[str, Any]:
    return {"kind": "transition", "worker": worker, "to": to, "at": at, "cause": cause,
            "automatic": automatic}


FAULTS = [Fault(5.0, "worker_kill", 1, 3.0)]


def ordered(worker: str, at: float) -> dict[str, Any]:
    """The record written with a worker's gate key as it closes."""
    return {"kind": "drain_ordered", "worker": worker, "at": at, "reason": "r",
            "correction": False}


class TestSchedule:
    def test_a_seed_replays_its_schedule_and_faults_overlap(self) -> None:
        a, b = draw(7, 600, 4), draw(7, 600, 4)
        assert a == b and a != draw(8, 600, 4)
        assert len({f.kind for f in a}) >= 8
        overlapping = sum(1 for x, y in itertools.pairwise(a) if y.at < x.at + x.duration)
        assert overlapping > 0
        assert all(10 <= f.at <= 600 - 15 and f.at + f.duration <= 600 - 15 + 1e-6 for f in a)
        assert [f.at for f in a] == sorted(f.at for f in a)

    def test_network_faults_and_leader_pauses_come_on_top_of_a_seeds_old_schedule(self) -> None:
        added = {*NET_KINDS, *LEADER_KINDS}
        for seed in (1, 17, 51, 355):
            every = draw(seed, 180, 4)
            assert {f.kind for f in every} & set(NET_KINDS)
            assert [f for f in every if f.kind not in added] == draw(seed, 180, 4, network=False,
                                                                     leader=False)
        assert any(f.kind == "leader_pause" for seed in range(5) for f in draw(seed, 180, 4))


class TestChecks:
    def test_a_clean_history_passes(self, tmp_path: Path) -> None:
        history(tmp_path, ["f1", "f2"], [analysed("f1"), {"ref": "f2", "status": "rejected"}])
        report = check(tmp_path, FAULTS, T0, [], {}, 4)
        assert report.ok and report.sent == report.answered == 2

    def test_lost_duplicated_unexpected_and_failed_inputs(self, tmp_path: Path) -> None:
        history(tmp_path, ["f1", "f2", "f3", "f4"],
                [analysed("f1"), analysed("f1"), analysed("zz"),
                 {"ref": "f3", "status": "failed", "reason": "task FAILURE"}, analysed("f4")])
        promises = [v.promise for v in check(tmp_path, FAULTS, T0, [], {}, 4).violations]
        assert sorted(promises) == sorted(["exactly once", "answered", "nothing unexpected",
                                           "answered"])

    def test_a_task_started_after_the_verdict(self, tmp_path: Path) -> None:
        history(tmp_path, ["f1", "f2"], [analysed("f1", started=T0 + 5.0),
                                         analysed("f2", started=T0 + 12.0)])
        audit = [transition("w1", "DRAINING", T0 + 4.0), ordered("w1", T0 + 4.01),
                 transition("w1", "PROBATION", T0 + 10.0)]
        (v,) = check(tmp_path, FAULTS, T0, audit, {}, 4).violations
        assert v.promise == "out of rotation" and "f1" in v.what and v.faults

    def test_the_verdict_counts_from_its_gate_key(self, tmp_path: Path) -> None:
        """Seed 55: a loaded checker decided at 4.0 and closed the gate key at 4.3; a task
        stamped at 4.2 could not know. One stamped at 4.5 could."""
        history(tmp_path, ["f1", "f2"], [analysed("f1", started=T0 + 4.2),
                                         analysed("f2", started=T0 + 4.5)])
        audit = [transition("w1", "MAINTENANCE", T0 + 4.0, cause="operator", automatic=False),
                 ordered("w1", T0 + 4.3)]
        (v,) = check(tmp_path, FAULTS, T0, audit, {}, 4).violations
        assert v.promise == "out of rotation" and "f2" in v.what

    def test_a_start_on_the_last_answer_while_its_read_failed_is_counted_not_a_violation(
            self, tmp_path: Path) -> None:
        """Seed 55: 30 % of w1's packets lost, its gate read timed out 0.1 s before the verdict
        and it went by its last answer for 0.5 s (the data plane never waits on the store). A
        start in that window is the documented trade; one after it, or on a worker whose reads
        answered, is a violation."""
        history(tmp_path, ["f1", "f2", "f3"], [analysed("f1", started=T0 + 4.6),
                                               analysed("f2", started=T0 + 5.5),
                                               analysed("f3", worker="w2", started=T0 + 4.6)])
        write(tmp_path / "worker0.log", [
            {"event": "gate_read_failed", "worker": "w1", "at": T0 + 4.0, "until": T0 + 4.75,
             "last": "open"}])
        audit = [transition("w1", "DRAINING", T0 + 4.1), ordered("w1", T0 + 4.1),
                 transition("w2", "DRAINING", T0 + 4.1), ordered("w2", T0 + 4.1)]
        report = check(tmp_path, FAULTS, T0, audit, {}, 8)
        assert sorted(v.what.split()[0] for v in report.violations) == ["f2", "f3"]
        assert report.checked["started_on_last_answer"] == 1

    def test_more_ejected_for_wear_than_the_bound(self, tmp_path: Path) -> None:
        history(tmp_path, [], [])
        audit = [transition("w1", "DRAINING", T0 + 1), transition("w2", "DRAINING", T0 + 2)]
        (v,) = check(tmp_path, FAULTS, T0, audit, {}, 4).violations  # 4 workers: bound 1
        assert v.promise == "blast radius" and "w2" in v.what

    def test_a_worker_silent_after_its_return_is_not_out_by_automatic_action(
            self, tmp_path: Path) -> None:
        """Seed 44: w2, once ejected for wear and back, goes OFFLINE (cause none: nobody's
        verdict) as w1 is ejected. Only w1 is out by automatic action: within the bound."""
        history(tmp_path, [], [])
        audit = [transition("w2", "DRAINING", T0 + 1), transition("w2", "QUARANTINED", T0 + 2),
                 transition("w2", "HEALTHY", T0 + 3, cause="", automatic=False),
                 transition("w2", "OFFLINE", T0 + 9, cause=""),
                 transition("w1", "DRAINING", T0 + 10)]
        assert check(tmp_path, FAULTS, T0, audit, {}, 4).violations == []

    def test_an_older_epoch_applied_after_a_newer_one(self, tmp_path: Path) -> None:
        history(tmp_path, [], [])
        stamp = "2001-09-09T01:46:40Z"
        write(tmp_path / "worker0.log", [
            {"event": "worker_drained", "worker": "w1", "epoch": 5, "timestamp": stamp},
            {"event": "worker_admitted", "worker": "w1", "epoch": 4, "timestamp": stamp}])
        audit = [{"kind": "drain_confirmed", "worker": "w1", "at": T0}]
        (v,) = check(tmp_path, FAULTS, T0, audit, {}, 4).violations
        assert v.promise == "fencing"

    def test_a_drain_applied_without_its_audit_record(self, tmp_path: Path) -> None:
        history(tmp_path, [], [])
        write(tmp_path / "worker0.log", [{"event": "worker_drained", "worker": "w1",
                                          "timestamp": "2001-09-09T01:46:40Z"}])
        (v,) = check(tmp_path, FAULTS, T0, [], {}, 4).violations
        assert v.promise == "audited"

    def test_back_in_rotation_without_probation_or_a_person(self, tmp_path: Path) -> None:
        """Quarantined for a wrong answer, stopped by its platform, HEALTHY at its restart: the
        check says so; through probation, or restored by a person, it does not."""
        history(tmp_path, [], [])
        laundered = [transition("w1", "QUARANTINED", T0 + 1, cause="probe"),
                     transition("w1", "MAINTENANCE", T0 + 2, cause="stopping", automatic=False),
                     transition("w1", "HEALTHY", T0 + 5, cause="")]
        (v,) = check(tmp_path, FAULTS, T0, laundered, {}, 4).violations
        assert v.promise == "earned way back" and "w1" in v.what
        earned = [transition("w2", "QUARANTINED", T0 + 1, cause="probe"),
                  transition("w2", "PROBATION", T0 + 9, cause=""),
                  transition("w2", "HEALTHY", T0 + 20, cause=""),
                  transition("w3", "DRAINING", T0 + 1),
                  transition("w3", "HEALTHY", T0 + 4, cause="", automatic=False)]
        assert check(tmp_path, FAULTS, T0, earned, {}, 8).ok  # (8: within the bound)


class TestBrokenBuilds:
    def test_each_broken_build_still_applies_and_names_a_promise_the_checker_has(self) -> None:
        from tests.nemesis.broken.__main__ import BUILDS, applies, patch_of

        promises = {"answered", "exactly once", "nothing unexpected", "out of rotation",
                    "blast radius", "fencing", "audited", "earned way back", "recovery"}
        assert {p.stem for p in patch_of("x").parent.glob("*.patch")} == set(BUILDS)
        for name, build in BUILDS.items():
            assert applies(name), f"{name}.patch no longer applies: make it again"
            assert set(build.promises) <= promises
