"""A worker held out of rotation carries its hold on its gate; a checker with no record of it
(its store lost everything) takes it back as the hold says, never as a new healthy worker."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from healthcheck.policy import State, WorkerHealth
from healthcheck.policy.holds import adopted, hold_of
from healthcheck.policy.model import OUT_OF_ROTATION, Cause
from healthcheck.policy.observations import WearReport
from tests.unit.test_checker import make, wear_event


def report(hold: str, gate_closed: bool = True, self_protected: str | None = None,
           reason: str = "operator: wrong answers") -> WearReport:
    return WearReport(worker="w1", at=50.0, queues=("tweets",), gate_closed=gate_closed,
                      self_protected=self_protected, gate_reason=reason, gate_hold=hold,
                      consuming=())


class TestAdopted:
    @given(state=st.sampled_from(sorted(OUT_OF_ROTATION)), cause=st.sampled_from(list(Cause)),
           person=st.sampled_from(["", "recycled 3 times"]))
    def test_a_hold_comes_back_as_the_state_it_was_written_from(
            self, state: State, cause: Cause, person: str) -> None:
        held = WorkerHealth(name="w1", state=state, cause=cause, for_person=person)
        back = adopted(report(hold_of(held)))
        assert back is not None
        assert (back.state, back.cause, bool(back.for_person)) == (state, cause, bool(person))
        assert back.reason == "operator: wrong answers" and back.queues == ("tweets",)

    def test_no_hold_an_open_gate_or_the_workers_own_closing_is_no_adoption(self) -> None:
        assert adopted(report("")) is None
        assert adopted(report("QUARANTINED/operator", gate_closed=False)) is None
        assert adopted(report("QUARANTINED/operator", self_protected="memory 99")) is None

    def test_a_hold_this_checker_cannot_read_is_no_adoption(self) -> None:
        for hold in ("HEALTHY/", "PROBATION/wear", "LIMBO/operator", "QUARANTINED/aliens", "/"):
            assert adopted(report(hold)) is None, hold


class TestCheckerWithAnEmptyStore:
    def test_a_worker_held_out_before_the_store_was_lost_stays_out(self) -> None:
        checker, actuator, clock, store = make()
        checker.handle(wear_event("w2"), clock())
        checker.handle(wear_event("w1", gate="closed", consuming=(),
                                  gate_reason="operator: wrong answers",
                                  gate_hold="QUARANTINED/operator"), clock())
        clock.now += 2
        checker.tick(clock())
        w1 = checker.fleet.workers["w1"]
        assert (w1.state, w1.cause, w1.reason) == (State.QUARANTINED, Cause.OPERATOR,
                                                    "operator: wrong answers")
        assert [c for c, w, _ in actuator.sent if w == "w1"] == ["host_drain"]  # no admit
        assert actuator.holds["w1"] == "QUARANTINED/operator"
        assert "w1" in store.gates  # its gate key written again
        assert store.workers["w1"]["state"] == "QUARANTINED"

    def test_without_a_hold_a_closed_gate_is_corrected_open_as_before(self) -> None:
        checker, actuator, clock, _ = make()
        checker.handle(wear_event("w1", gate="closed", consuming=()), clock())
        assert checker.fleet.workers["w1"].state is State.HEALTHY
        assert ("host_admit", "w1") in [(c, w) for c, w, _ in actuator.sent]

    def test_every_drain_says_what_it_holds_the_worker_out_as(self) -> None:
        checker, actuator, clock, _ = make()
        for w in ("w1", "w2", "w3", "w4"):
            checker.handle(wear_event(w), clock())
        checker.handle(wear_event("w1", cpu=99, inflight=1), clock())
        clock.now += 1
        checker.tick(clock())
        assert actuator.holds.get("w1") == "DRAINING/wear"
