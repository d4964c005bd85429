"""Known-answer probes with an in-memory transport: explicit clock, no I/O, no sleeps."""

from __future__ import annotations

from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from healthcheck.actuator import InMemoryActuator
from healthcheck.policy import PolicyConfig, State, WorkerHealth
from healthcheck.policy.config import Probes
from healthcheck.policy.model import Cause
from healthcheck.probes import InMemoryProbeTransport, KnownAnswer, Prober, judge, known_answers
from healthcheck.service import Checker
from healthcheck.store import InMemoryHealthStore


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


CONFIG = Probes(every_s=10, late_s=5, missing_s=15)


class TestKnownAnswers:
    def test_answers_are_computed_with_the_library(self) -> None:
        """Each known answer equals VADER's own scores for its text (computed, not stored)."""
        answers = known_answers()
        assert len(answers) >= 10
        vader = SentimentIntensityAnalyzer()
        for a in answers:
            direct = vader.polarity_scores(a.text)
            assert dict(a.scores) == {k: direct[k] for k in ("neg", "neu", "pos", "compound")}

    def test_judge(self) -> None:
        """Exact scores from the right worker are ok; anything else is wrong, with the detail."""
        answer = KnownAnswer("x", {"neg": 0.0, "neu": 0.5, "pos": 0.5, "compound": 0.4})
        good = {"status": "analysed", "worker": "w1", **answer.scores}
        assert judge(answer, good, "w1") == ("ok", "")
        assert judge(answer, {**good, "compound": 0.5}, "w1")[0] == "wrong"
        assert "answered by w2" in judge(answer, {**good, "worker": "w2"}, "w1")[1]
        assert judge(answer, "boom", "w1")[0] == "wrong"


class TestProber:
    def test_cadence_and_one_probe_at_a_time(self) -> None:
        """Due every 10 s; a worker with a probe out gets no second; OFFLINE/MAINTENANCE none."""
        transport, clock = InMemoryProbeTransport(), Clock()
        transport.hold = True
        prober = Prober(transport, known_answers(), CONFIG, clock)
        states = {"w1": State.HEALTHY, "w2": State.OFFLINE, "w3": State.MAINTENANCE}
        prober.send_due(states)
        clock.now += 11
        prober.send_due(states)
        assert [w for w, _ in transport.sent] == ["w1"]

    def test_late_then_missing(self) -> None:
        """No answer: late after 5 s (soft), missing after 15 s (liveness)."""
        transport, clock = InMemoryProbeTransport(), Clock()
        transport.hold = True
        prober = Prober(transport, known_answers(), CONFIG, clock)
        prober.send_due({"w1": State.HEALTHY})
        clock.now += 6
        assert [r.outcome for r in prober.collect()] == ["late"]
        clock.now += 10
        assert [r.outcome for r in prober.collect()] == ["missing"]
        assert prober.collect() == []

    def test_reset_forgets_what_was_out(self) -> None:
        """A checker leading again after a pause judges nothing it sent before it."""
        transport, clock = InMemoryProbeTransport(), Clock()
        transport.hold = True
        prober = Prober(transport, known_answers(), CONFIG, clock)
        prober.send_due({"w1": State.HEALTHY})
        prober.reset()
        clock.now += 60
        assert prober.collect() == []
        prober.send_due({"w1": State.HEALTHY})  # due again at once
        assert [w for w, _ in transport.sent] == ["w1", "w1"]

    def test_wrong_answers_are_caught(self) -> None:
        """A worker whose compound is off by 0.1 answers wrong."""
        def distorted(worker: str, text: str) -> dict[str, Any]:
            from workers.sentiment import analyse_text

            scores = analyse_text(text)
            return {"status": "analysed", "worker": worker, **scores,
                    "compound": round(scores["compound"] + 0.1, 4)}

        transport, clock = InMemoryProbeTransport(distorted), Clock()
        prober = Prober(transport, known_answers(), CONFIG, clock)
        prober.send_due({"w1": State.HEALTHY})
        [result] = prober.collect()
        assert result.outcome == "wrong" and "compound" in result.detail


class TestProbeBudget:
    def test_a_large_fleet_is_probed_at_a_bounded_rate_re_admissions_first(self) -> None:
        transport, clock = InMemoryProbeTransport(), Clock()
        prober = Prober(transport, known_answers(), Probes(every_s=10, max_per_s=20), clock)
        states = {f"w{i}": State.HEALTHY for i in range(1000)}
        states.update(q1=State.QUARANTINED, p1=State.PROBATION)
        sent_per_second = []
        for _ in range(10):
            before = len(transport.sent)
            for _ in range(4):  # ticks every 0.25 s
                clock.now += 0.25
                prober.send_due(states)
                prober.collect()
            sent_per_second.append(len(transport.sent) - before)
        # a full bucket (one second's worth) at the start, then the rate
        assert sent_per_second[0] <= 40 and max(sent_per_second[1:]) <= 20
        assert 190 <= sum(sent_per_second) <= 220
        assert {w for w, _ in transport.sent[:2]} == {"q1", "p1"}
        assert len({w for w, _ in transport.sent}) == len(transport.sent)  # oldest first: no repeats

    def test_a_small_fleet_keeps_its_cadence(self) -> None:
        transport, clock = InMemoryProbeTransport(), Clock()
        prober = Prober(transport, known_answers(), Probes(every_s=10, max_per_s=20), clock)
        states = {f"w{i}": State.HEALTHY for i in range(50)}
        for _ in range(4 * 25):
            clock.now += 0.25
            prober.send_due(states)
            prober.collect()
        assert len(transport.sent) == 150  # at 0 s, 10 s and 20 s: every worker, every 10 s


class TestCheckerWithProbes:
    def make(self, stored: dict[str, WorkerHealth], answer: Any = None,
             config: PolicyConfig | None = None) -> tuple[Checker, InMemoryActuator, Clock]:
        store, actuator, clock = InMemoryHealthStore(), InMemoryActuator(), Clock()
        store.save(stored.values())
        prober = Prober(InMemoryProbeTransport(answer), known_answers(),
                        (config or PolicyConfig()).probes, clock)
        checker = Checker.from_store(store, actuator, config or PolicyConfig(), clock=clock,
                                     seed=1, prober=prober)
        return checker, actuator, clock

    def test_wrong_answer_quarantines_at_once(self) -> None:
        """A healthy worker answering a probe wrongly is QUARANTINED and drained."""
        stored = {"w1": WorkerHealth("w1", State.HEALTHY, since=900, last_seen=1000,
                                     queues=("tweets",))}
        checker, actuator, clock = self.make(stored, answer=lambda w, t: {"status": "analysed",
                                                                         "worker": w})
        checker.tick(clock())
        assert checker.fleet.workers["w1"].state is State.QUARANTINED
        assert checker.fleet.workers["w1"].cause is Cause.PROBE
        assert actuator.sent[0][:2] == ("host_drain", "w1")

    def test_passing_probes_readmit_after_the_backoff(self) -> None:
        """Back-off over, three passed probes: PROBATION, and the worker is admitted."""
        config = PolicyConfig(probes=Probes(every_s=1, late_s=5, missing_s=15))
        stored = {"w1": WorkerHealth("w1", State.QUARANTINED, cause=Cause.WEAR, since=900,
                                     last_seen=1000, backoff_until=1005, ejections=1,
                                     queues=("tweets",))}
        checker, actuator, clock = self.make(stored, config=config)
        for _ in range(4):  # during the back-off: passes do not count
            checker.tick(clock())
            clock.now += 1.1
        assert checker.fleet.workers["w1"].state.value == "QUARANTINED"
        for _ in range(4):
            clock.now += 1.1
            checker.tick(clock())
        assert checker.fleet.workers["w1"].state is State.PROBATION
        assert actuator.sent[-1][:2] == ("host_admit", "w1")
        ok = checker.metrics.registry.get_sample_value(
            "host_probe_results_total", {"worker": "w1", "outcome": "ok"})
        assert ok is not None and ok >= 3
