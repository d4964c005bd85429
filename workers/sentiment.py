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
    """How many of the text's characters are emoji VADER describes (linear, cheap; none in an
    ASCII text, as every emoji VADER knows is outside ASCII: most tweets cost one check)."""
    if text.isascii():
        return 0
    emojis = analyzer().emojis
    return sum(1 for ch in text if ch in emojis)


class _Budget:
    """The CPU budget in force in this process (its SIGPROF handler is installed once)."""

    seconds = 0.0
    armed = False
    installed = False
    previous: Any = None


def _over(signum: int, frame: Any) -> None:
    if _Budget.armed:  # a signal delivered after the block ended is ignored
        _Budget.armed = False
        raise TooExpensive(f"used more than {_Budget.seconds:g}s of CPU")
    if callable(_Budget.previous):
        _Budget.previous(signum, frame)


@contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Raise TooExpensive inside the block once it used ``seconds`` of this process's CPU.

    A profiling timer (ITIMER_PROF, CPU time) armed around the call: two system calls per
    input; the handler is installed once per process (installing it per input cost a tenth of
    a batch's time). Outside the main thread (no signals there) the block runs unbounded.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _Budget.installed:
        _Budget.previous = signal.signal(signal.SIGPROF, _over)
        _Budget.installed = True
    _Budget.seconds, _Budget.armed = seconds, True
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        _Budget.armed = False
        signal.setitimer(signal.ITIMER_PROF, 0)


def analyse_text(text: str) -> Scores:
    """VADER's scores for one text, exactly as the library gives them, plus the label."""
    s = analyzer().polarity_scores(text)
    return Scores(neg=s["neg"], neu=s["neu"], pos=s["pos"], compound=s["compound"],
                  label=label(s["compound"]))
