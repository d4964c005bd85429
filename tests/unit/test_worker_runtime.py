"""The worker's gate, control commands and wear reports, on its runtime with in-memory doubles:
no broker, no store, no worker process."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from broker_config.signing import sign
from broker_config.wear_event import WearEvent
from workers import control, gate, inject, tally
from workers.checker_view import InMemoryCheckerView
from workers.reporting import WearReporting, samples_per_report
from workers.runtime import RUNTIME, WorkerRuntime

WORKER = "w1@test"
VERIFY = f"host.verify.{WORKER}"


@dataclasses.dataclass
class FakeTaskConsumer:
    queues: list[Any]
    _active_tags: dict[str, str] = dataclasses.field(default_factory=dict)


class FakeConsumer:
    """What the gate uses of Celery's consumer: its name and its subscriptions."""

    def __init__(self, queues: list[str]) -> None:
        self.hostname = WORKER
        self.task_consumer = FakeTaskConsumer([SimpleNamespace(name=q) for q in queues])

    def subscribed(self) -> list[str]:
        return sorted(q.name for q in self.task_consumer.queues)

    def cancel_task_queue(self, name: str) -> None:
        self.task_consumer.queues = [q for q in self.task_consumer.queues if q.name != name]

    def add_task_queue(self, name: str) -> None:
        self.task_consumer.queues.append(SimpleNamespace(name=name))


@pytest.fixture(autouse=True)
def fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every field of this process's runtime as a new worker starts with it."""
    for f in dataclasses.fields(WorkerRuntime):
        monkeypatch.setattr(RUNTIME, f.name, getattr(WorkerRuntime(), f.name))
    yield


def started(keys: InMemoryCheckerView | None = None,
            queues: tuple[str, ...] = ("bulk", "tweets")) -> tuple[FakeConsumer, InMemoryCheckerView]:
    keys = keys or InMemoryCheckerView()
    held = gate.install(WORKER, [*queues, VERIFY], keys)
    consumer = FakeConsumer([VERIFY] if held else [*queues, VERIFY])
    RUNTIME.consumer = consumer
    return consumer, keys


class TestGate:
    def test_outside_a_worker_everything_may_start(self) -> None:
        assert gate.allows("tweets", WORKER) and not gate.holds_back("tweets")

    def test_the_store_gate_key_closes_work_queues_not_the_verify_queue(self) -> None:
        _, keys = started()
        assert gate.allows("tweets", WORKER)
        keys.gates[WORKER] = "cpu 99"
        assert not gate.allows("tweets", WORKER) and not gate.allows("other", WORKER)
        assert gate.allows(VERIFY, WORKER)
        assert not gate.holds_back("tweets")  # the local flag alone is still open

    def test_a_store_that_is_away_fails_static(self) -> None:
        _, keys = started()
        keys.gates[WORKER] = "cpu 99"
        keys.down = True
        assert gate.allows("tweets", WORKER)
        gate.gate().close("drained")  # type: ignore[union-attr]
        assert not gate.allows("tweets", WORKER)

    def test_a_worker_held_out_starts_closed(self) -> None:
        consumer, _ = started(InMemoryCheckerView({WORKER: "quarantined: wrong answers"}))
        assert gate.consuming_work_queues(consumer) == []
        g = gate.gate()
        assert g is not None and not g.is_open()
        assert g.reason == "restarted while held out: quarantined: wrong answers"
        assert gate.holds_back("tweets") and not gate.holds_back(VERIFY)
        assert gate.configured_work_queues() == ["bulk", "tweets"]

    @pytest.mark.parametrize("held", [None, "quarantined: wrong answers"])
    def test_a_worker_starting_while_the_store_is_away_starts_out_until_it_knows(
            self, held: str | None) -> None:
        """Restarted by its platform during a store stall, a worker cannot know whether the
        checker holds it out: it starts out of rotation and asks until the store answers."""
        keys = InMemoryCheckerView({WORKER: held} if held else {})
        keys.down = True
        consumer, _ = started(keys)
        g = gate.gate()
        assert g is not None and not g.is_open() and g.reason == gate.NOT_KNOWN
        assert consumer.subscribed() == [VERIFY] and gate.holds_back("tweets")
        assert not gate.settle(consumer) and not g.is_open()  # still away: still out
        keys.down = False
        assert gate.settle(consumer)
        if held is None:
            assert g.is_open() and consumer.subscribed() == sorted(["bulk", "tweets", VERIFY])
        else:
            assert not g.is_open() and consumer.subscribed() == [VERIFY]
            assert g.reason == f"restarted while held out: {held}"
        assert gate.settle(consumer)  # settled: no further question

    def test_a_command_that_settled_the_gate_first_is_not_undone(self) -> None:
        keys = InMemoryCheckerView()
        keys.down = True
        consumer, _ = started(keys)
        gate.take_out(consumer, "drain: by the checker's command")
        keys.down = False
        assert gate.settle(consumer)
        assert gate.gate().reason == "drain: by the checker's command"  # type: ignore[union-attr]
        assert consumer.subscribed() == [VERIFY]

    def test_take_out_then_put_back(self) -> None:
        consumer, _ = started()
        status = gate.take_out(consumer, "drain")
        assert status["gate"] == "closed" and status["consuming"] == []
        assert consumer.subscribed() == [VERIFY]
        status = gate.put_back(consumer, "admit")
        assert status["gate"] == "open" and status["consuming"] == ["bulk", "tweets"]
        assert consumer.subscribed() == sorted(["bulk", "tweets", VERIFY])

    def test_a_worker_out_of_rotation_undoes_a_resubscription(self) -> None:
        consumer, _ = started()
        gate.take_out(consumer, "drain")
        consumer.add_task_queue("tweets")  # somebody's add_consumer
        assert gate.undo_subscriptions(consumer, "test") == ["tweets"]
        assert consumer.subscribed() == [VERIFY] and RUNTIME.undone == {"tweets": 1}
        assert gate.undo_subscriptions(consumer, "test") == []

    def test_hold_out_closes_the_local_gate_once(self) -> None:
        consumer, _ = started()
        gate.hold_out("checker holds it out")
        assert not gate.gate().is_open() and consumer.subscribed() == [VERIFY]  # type: ignore[union-attr]


class TestControlCommands:
    SECRET = "s3cret"

    def state(self, consumer: FakeConsumer) -> Any:
        return SimpleNamespace(consumer=consumer)

    def signed(self, command: str, **arguments: Any) -> dict[str, Any]:
        import time

        return sign(self.SECRET, command, arguments, WORKER, time.time())

    def test_a_signed_drain_takes_the_worker_out_and_says_so(self) -> None:
        consumer, _ = started()
        control.configure(self.SECRET, False, WORKER)
        reply = control.host_drain(self.state(consumer), **self.signed("host_drain", reason="x"))
        assert reply["ok"] is True and reply["gate"] == "closed" and reply["consuming"] == []
        assert isinstance(reply["received_at"], float)
        reply = control.host_admit(self.state(consumer), **self.signed("host_admit", reason="y"))
        assert reply["ok"] is True and reply["consuming"] == ["bulk", "tweets"]

    def test_unsigned_and_forged_commands_are_refused_and_counted(self) -> None:
        consumer, _ = started()
        control.configure(self.SECRET, False, WORKER)
        assert "unsigned" in control.host_drain(self.state(consumer), reason="x")["error"]
        forged = {**self.signed("host_drain", reason="x"), "reason": "other"}
        assert "forged" in control.host_drain(self.state(consumer), **forged)["error"]
        assert gate.gate().is_open()  # type: ignore[union-attr]
        assert control.refused_counts() == {"host_drain:unsigned": 1, "host_drain:forged": 1}

    def test_a_command_of_an_older_epoch_is_refused(self) -> None:
        consumer, _ = started(InMemoryCheckerView(epoch=3))
        control.configure(self.SECRET, False, WORKER)
        stale = control.host_drain(self.state(consumer),
                                   **self.signed("host_drain", reason="x", epoch=2))
        assert "stale_leader" in stale["error"] and gate.gate().is_open()  # type: ignore[union-attr]
        current = control.host_drain(self.state(consumer),
                                     **self.signed("host_drain", reason="x", epoch=3))
        assert current["ok"] is True

    def test_injection_changes_what_the_pool_reads(self) -> None:
        consumer, _ = started()
        control.configure("", False, WORKER)
        inject.install_board("")
        assert control.host_inject(self.state(consumer), spec="cpu=97") == {"ok": "cpu=97"}
        assert inject.current().as_dict()["cpu"] == 97
        assert "error" in control.host_inject(self.state(consumer), spec="cpu=lots")


class TestWearReporting:
    def reporting(self, sample: dict[str, float], **limits: tuple[float | None, float | None]
                  ) -> WearReporting:
        return WearReporting(lambda: dict(sample), 1.0, limits)

    def test_a_report_is_a_wear_event_the_checker_reads_back(self) -> None:
        consumer, _ = started()
        tally.install()
        RUNTIME.requeued["tweets"] += 2
        reporting = self.reporting({"cpu_percent": 40.0, "memory_percent": 30.0})
        first = reporting.report(consumer)
        second = reporting.report(consumer)
        assert (first.seq, second.seq) == (1, 2) and first.boot == second.boot
        assert second.gate == "open" and second.consuming == ("bulk", "tweets")
        assert second.counts["requeued"] == {"tweets": 2}
        wire = {"type": "worker-wear", "hostname": WORKER, **second.to_fields()}
        assert WearEvent.parse(wire) == second

    def test_a_hard_local_limit_closes_the_gate_at_once(self) -> None:
        consumer, _ = started()
        reporting = self.reporting({"memory_percent": 99.0}, memory_percent=(95.0, None))
        event = reporting.report(consumer)
        assert event.gate == "closed" and event.consuming == ()
        assert event.self_protected and "memory_percent" in event.self_protected
        assert consumer.subscribed() == [VERIFY]

    def test_sub_samples_fold_into_one_report_and_a_hot_one_is_sent_at_once(self) -> None:
        """Four raw samples a report: their mean is smoothed, their largest is the peak; a raw
        sample over a hard limit is reported at once, and so is the first one back under it."""
        consumer, _ = started()
        inject.install_board("")
        readings = iter([10.0, 40.0, 60.0, 20.0, 40.0, 50.0, 99.0, 98.0, 30.0, 30.0, 30.0])
        reporting = WearReporting(lambda: {"cpu_percent": next(readings)}, 1.0, {},
                                  {"cpu_percent": 97.0}, per_report=4)
        start = reporting.tick(consumer)  # the very first sample is reported at once
        assert start is not None and start.wear["cpu_percent"] == (10.0, 10.0)
        reporting.smoothed.clear()  # the rest starts from a clean slate
        sent = [reporting.tick(consumer) for _ in range(10)]
        assert [e is not None for e in sent] == [False, False, False, True,  # a whole window
                                                 False, True, True, True,    # hot, hot, cooled
                                                 False, False]
        first, hot, hotter, cooled = (e for e in sent if e is not None)
        assert first.wear["cpu_percent"] == (40.0, 60.0)  # mean 40 of 40/60/20/40, peak 60
        assert hot.last["cpu_percent"] == 99.0 and hot.wear["cpu_percent"] == (40.0, 99.0)
        assert hotter.last["cpu_percent"] == 98.0
        # the cooled sample completes the second window: mean 69.25 smoothed (0.3) from 40
        assert cooled.last["cpu_percent"] == 30.0
        assert cooled.wear["cpu_percent"] == (round(40 + 0.3 * (69.25 - 40), 3), 99.0)
        assert [e.seq for e in (first, hot, hotter, cooled)] == [2, 3, 4, 5]

    def test_samples_per_report_are_four_never_closer_than_a_tenth(self) -> None:
        assert [samples_per_report(i) for i in (1.0, 2.0, 0.3, 0.25, 0.1, 0.05)] == [
            4, 4, 3, 2, 1, 1]

    def test_an_injection_replaces_the_sampled_reading(self) -> None:
        consumer, _ = started()
        inject.install_board("cpu=100")
        event = self.reporting({"cpu_percent": 5.0}).report(consumer)
        assert event.wear["cpu_percent"][0] == 100.0 and event.inject == "cpu=100"
