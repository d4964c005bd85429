"""The analysis pipeline: exact VADER scores, labels, stamps, and dead letters for bad envelopes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from broker_config.contract import envelope
from workers.analysis import RunContext, analyse_envelope, analyse_many, keep_dead_letters
from workers.deadletter import InMemoryDeadLetterStore
from workers.inbound import Limits
from workers.sentiment import label

CTX = RunContext(worker="w1@n", queue="tweets", task_id="t-1", limits=Limits(),
                 clock=lambda: 100.0)


class TestAnalysis:
    @pytest.mark.parametrize(("compound", "expected"), [
        (0.05, "positive"), (0.0499, "neutral"), (-0.0499, "neutral"), (-0.05, "negative"),
        (1.0, "positive"), (-1.0, "negative"),
    ])
    def test_label_thresholds(self, compound: float, expected: str) -> None:
        """Labels follow VADER's ±0.05 cut-offs, inclusive."""
        assert label(compound) == expected

    def test_scores_equal_the_library_called_directly(self) -> None:
        """The result carries exactly vaderSentiment's scores for the text."""
        text = "The movie was not bad at all, actually GREAT!!! :)"
        result = analyse_envelope(envelope("r:1", text, "text"), replace(CTX, sent_at=99.5))
        direct = SentimentIntensityAnalyzer().polarity_scores(text)
        assert {k: result[k] for k in ("neg", "neu", "pos", "compound")} == direct
        assert result["label"] == "positive"
        assert (result["worker"], result["queue"], result["task_id"]) == ("w1@n", "tweets", "t-1")
        assert result["queue_wait_s"] == pytest.approx(0.5)
        assert result["runtime_s"] == 0.0

    @pytest.mark.parametrize("bad", [None, "a string", 5, [1, 2], {"ref": "r", "line": 7},
                                     {"ref": ["x"], "line": "{"}])
    def test_bad_envelopes_become_dead_letters(self, bad: object) -> None:
        """Anything that is not a well-formed envelope becomes a rejected record."""
        result = analyse_envelope(bad, CTX)
        assert result["status"] == "rejected"
        assert result["stage"] == "worker"
        assert result["worker"] == "w1@n"

    def test_batch_keeps_order_and_counts_dead_letters(self) -> None:
        """A batch returns one record per envelope in order, and rejections reach the store."""
        envs = [envelope("r:1", "good times"), envelope("r:2", "{bad json"),
                envelope("r:3", "awful")]
        results = analyse_many(envs, CTX, max_batch=10)
        assert [r["ref"] for r in results] == ["r:1", "r:2", "r:3"]
        store = InMemoryDeadLetterStore()
        keep_dead_letters(results, store)
        assert store.counts() == {"invalid_json": 1, "total": 1}

    @pytest.mark.parametrize(("batch", "reason"), [("nope", "wrong_type"),
                                                   ([{}] * 11, "batch_too_large")])
    def test_malformed_batch_is_one_dead_letter(self, batch: object, reason: str) -> None:
        """A batch that is not a list, or too long, is rejected whole."""
        results = analyse_many(batch, CTX, max_batch=10)
        assert [r["reason"] for r in results] == [reason]


#: ~0.3 s of the scorer: 50,000 emoji, each read as a description with two sentiment words.
EXPENSIVE = "😂" * 50_000


class TestCostBound:
    def test_too_many_emoji_are_refused_before_vader_runs(self) -> None:
        """9,999 emoji (19 s of VADER): rejected as too_expensive in linear time."""
        import time

        ctx = RunContext(worker="w1@n", queue="tweets", task_id="t", clock=lambda: 1.0,
                         limits=Limits(max_text_chars=20_000, max_emoji=1000))
        started = time.process_time()
        result = analyse_envelope(envelope("e:1", "😀" * 9_999, "text"), ctx)
        assert (result["status"], result["reason"]) == ("rejected", "too_expensive")
        assert "9999 emoji" in result["detail"]
        assert time.process_time() - started < 0.5

    def test_an_input_over_its_cpu_budget_is_stopped(self) -> None:
        """Under the emoji cap but over a 0.05 s budget: stopped near the budget. (The scorer is
        linear, so only a text far over the default length costs that much: ~0.3 s here.)"""
        import time

        ctx = RunContext(worker="w1@n", queue="tweets", task_id="t", clock=lambda: 1.0,
                         limits=Limits(max_text_chars=200_000, max_emoji=50_000,
                                       cpu_budget_s=0.05))
        started = time.process_time()
        result = analyse_envelope(envelope("e:2", EXPENSIVE, "text"), ctx)
        spent = time.process_time() - started
        assert (result["status"], result["reason"]) == ("rejected", "too_expensive")
        assert spent < 0.4, spent
        # and the next input is analysed normally, the timer disarmed
        ok = analyse_envelope(envelope("e:3", "a fine day 😀", "text"), ctx)
        assert ok["status"] == "analysed"

    def test_in_a_batch_the_expensive_input_alone_is_stopped(self) -> None:
        """One timer for the whole batch: the costly input in the middle is stopped near its
        budget; those before and after it are analysed, and the timer is disarmed after."""
        import signal
        import time

        ctx = RunContext(worker="w1@n", queue="tweets", task_id="t", clock=lambda: 1.0,
                         limits=Limits(max_text_chars=200_000, max_emoji=50_000,
                                       cpu_budget_s=0.05))
        batch = [envelope(f"b:{i}", "a fine day", "text") for i in range(3)]
        batch.insert(1, envelope("b:x", EXPENSIVE, "text"))
        started = time.process_time()
        results = analyse_many(batch, ctx, max_batch=10)
        spent = time.process_time() - started
        assert [r["status"] for r in results] == ["analysed", "rejected", "analysed", "analysed"]
        assert results[1]["reason"] == "too_expensive" and spent < 0.4, spent
        assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)

    def test_cheap_inputs_are_never_stopped_however_long_the_batch(self) -> None:
        """The budget is per input: a batch of cheap tweets that uses many budgets in all is
        analysed whole (the timer's firings are counted per input, never across them)."""
        import time

        ctx = RunContext(worker="w1@n", queue="tweets", task_id="t", clock=lambda: 1.0,
                         limits=Limits(max_text_chars=20_000, max_emoji=5000,
                                       cpu_budget_s=0.004))
        batch = [envelope(f"c:{i}", f"what a lovely day number {i}, not bad at all", "text")
                 for i in range(5000)]
        started = time.process_time()
        results = analyse_many(batch, ctx, max_batch=5000)
        spent = time.process_time() - started
        assert spent > 5 * 0.004, spent  # the timer fired many times during the batch
        assert [r["status"] for r in results] == ["analysed"] * 5000

