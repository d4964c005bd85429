"""Sentiment analysis with VADER: the domain function the analysis tasks call."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, TypedDict

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

#: VADER's own recommended cut-offs on the compound score.
POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05


class Scores(TypedDict):
    """VADER's four scores and the label derived from ``compound``."""

    neg: float
    neu: float
    pos: float
    compound: float
    label: str


@cache
def analyzer() -> SentimentIntensityAnalyzer:
    """One analyzer per process: loading the lexicon takes tens of milliseconds."""
    return SentimentIntensityAnalyzer()


def label(compound: float) -> str:
    """positive at compound >= 0.05, negative at <= -0.05, neutral between."""
    if compound >= POSITIVE_AT:
        return "positive"
    if compound <= NEGATIVE_AT:
        return "negative"
    return "neutral"


class TooExpensive(Exception):
    """An input would cost more than its budget: it is rejected, not charged to the worker."""


def emoji_count(text: str) -> int:
    """How many of the text's characters are emoji VADER describes (linear, cheap)."""
    emojis = analyzer().emojis
    return sum(1 for ch in text if ch in emojis)


@contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Raise TooExpensive inside the block once it used ``seconds`` of this process's CPU.

    A profiling timer (ITIMER_PROF, CPU time) set around the call: two system calls per input.
    Outside the main thread (no signals there) the block runs unbounded.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    armed = [True]

    def over(signum: int, frame: Any) -> None:
        if armed[0]:  # a signal delivered after the block ended is ignored
            raise TooExpensive(f"used more than {seconds:g}s of CPU")

    previous = signal.signal(signal.SIGPROF, over)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def analyse_text(text: str) -> Scores:
    """VADER's scores for one text, exactly as the library gives them, plus the label."""
    s = analyzer().polarity_scores(text)
    return Scores(neg=s["neg"], neu=s["neu"], pos=s["pos"], compound=s["compound"],
                  label=label(s["compound"]))
