"""The two central records, each with its one parser: the wear event and the audit record."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker_config.wear_event import WEAR_EVENT, TaskFigures, WearEvent
from healthcheck.audit import AuditRecord, Kind, parse_all
from healthcheck.policy import Cause, State, Transition


def wire(**fields: Any) -> dict[str, Any]:
    return {"type": WEAR_EVENT, "hostname": "w1@x", "wear": {"cpu_percent": [50.0, 80.0]},
            "tasks": {"completed": 3, "failed": 1, "runtime_p95": 0.01}, "inflight": 2,
            "queues": ["tweets"], "consuming": ["tweets"], "gate": "open", **fields}


class TestWearEvent:
    def test_a_report_round_trips(self) -> None:
        event = WearEvent("w1@x", wear={"cpu_percent": (50.0, 80.0)}, tasks=TaskFigures(3, 1),
                          raw_tasks={"completed": 3, "failed": 1}, inflight=2,
                          queues=("tweets",), subscribed=("tweets",), gate="open",
                          counts={"requeued": {"tweets": 4}}, seq=7, interval=1.0,
                          running=2, stalled_s=0.25)
        parsed = WearEvent.parse({"type": WEAR_EVENT, "hostname": "w1@x", **event.to_fields()})
        assert parsed == event

    def test_what_a_worker_consumes_follows_its_gate(self) -> None:
        assert WearEvent.parse(wire()).consuming == ("tweets",)  # type: ignore[union-attr]
        closed = WearEvent.parse(wire(gate="closed"))
        assert closed is not None and closed.consuming == () and closed.subscribed == ("tweets",)
        silent = WearEvent.parse(wire(consuming=None))
        assert silent is not None and silent.consuming is None and silent.not_consuming == []
        lost = WearEvent.parse(wire(queues=["tweets", "bulk"]))
        assert lost is not None and lost.not_consuming == ["bulk"]

    @pytest.mark.parametrize("bad", [
        {"hostname": ""}, {"hostname": 7}, {"type": "worker-heartbeat"},
        {"wear": [1, 2]}, {"wear": {"cpu_percent": [1]}}, {"wear": {"cpu_percent": ["x", 1]}},
        {"tasks": "lots"}, {"tasks": {"completed": "many"}}, {"inflight": "two"},
        {"tasks": {"runtime_p95": "slow"}},
        {"inflight": float("inf")}, {"tasks": {"completed": float("nan")}},
    ])
    def test_malformed_reports_parse_as_none(self, bad: dict[str, Any]) -> None:
        assert WearEvent.parse(wire(**bad)) is None

    def test_progress_is_read_when_sound_and_left_out_otherwise(self) -> None:
        """A worker's running count and stalled time: kept when they are a count and a finite
        number, None (judged as before the rule) when absent or anything else."""
        ok = WearEvent.parse(wire(running=3, stalled_s=1.5))
        assert ok is not None and (ok.running, ok.stalled_s) == (3, 1.5)
        for running, stalled in ((-1, math.nan), (True, "long"), (2.5, math.inf), (None, None)):
            odd = WearEvent.parse(wire(running=running, stalled_s=stalled))
            assert odd is not None and (odd.running, odd.stalled_s) == (None, None)

    def test_what_the_checker_does_not_read_never_drops_a_report(self) -> None:
        event = WearEvent.parse(wire(cost_s="cheap", seq="first", at=math.nan, interval=[1],
                                     wear={"cpu_percent": [math.inf, 1.0], "load": [1, 2]},
                                     requeued={"tweets": -1, "bulk": 2, "x": True}))
        assert event is not None and event.cost_s == 0.0 and event.seq == 0 and event.at is None
        assert event.wear == {"load": (1.0, 2.0)}
        # counts are kept as sent: the metrics take only their non-negative integers
        assert event.counts == {"requeued": {"tweets": -1, "bulk": 2, "x": True}}

    @given(st.dictionaries(st.sampled_from(["wear", "tasks", "inflight", "queues", "consuming",
                                            "gate", "self_protected", "requeued", "cost_s"]),
                           st.recursive(st.none() | st.booleans() | st.floats() | st.text(),
                                        lambda inner: st.lists(inner) | st.dictionaries(
                                            st.text(), inner), max_leaves=8)))
    def test_no_event_makes_the_parser_raise(self, fields: dict[str, Any]) -> None:
        WearEvent.parse(wire(**fields))


class TestAuditRecord:
    def test_a_transition_round_trips(self) -> None:
        t = Transition("w1", State.HEALTHY, State.DRAINING, "cpu 99", 5.0, Cause.WEAR,
                       evidence={"cpu_percent": 99.0})
        record = AuditRecord.transition(t).with_epoch(3)
        parsed = AuditRecord.parse(record.to_dict())
        assert parsed == record and parsed.kind is Kind.TRANSITION
        assert (parsed.to_state, parsed.cause, parsed.get("epoch")) == ("DRAINING", "wear", 3)

    @pytest.mark.parametrize("bad", [
        None, [], "transition", {"kind": "nonsense", "worker": "w1", "at": 1.0},
        {"kind": "joined", "worker": "w1"}, {"kind": "joined", "worker": 3, "at": 1.0},
        {"kind": "joined", "worker": "w1", "at": True},
    ])
    def test_what_is_not_a_record_parses_as_none(self, bad: Any) -> None:
        assert AuditRecord.parse(bad) is None

    def test_wrong_typed_fields_are_left_out_and_unknown_ones_ignored(self) -> None:
        record = AuditRecord.parse({"kind": "drain_confirmed", "worker": "w1", "at": 2,
                                    "confirm_s": "fast", "inflight": True, "reason": "cpu",
                                    "future_field": 1})
        assert record is not None and record.fields == {"reason": "cpu"} and record.at == 2.0
        assert record.kind.is_drain

    def test_parse_all_keeps_the_order_and_drops_the_rest(self) -> None:
        records = parse_all([{"kind": "joined", "worker": "a", "at": 1}, {"kind": "?"},
                             {"kind": "leader", "worker": None, "at": 2}])
        assert [r.kind for r in records] == [Kind.JOINED, Kind.LEADER]
