"""Sentiment analysis with VADER: the domain function the analysis tasks call.

The scores are vaderSentiment's, computed by host's linear-time scorer (``workers/scorer.py``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, TypedDict

from workers.scorer import Scorer

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
def analyzer() -> Scorer:
    """One scorer per process: loading the lexicon takes tens of milliseconds."""
    return Scorer.from_package()


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
    """The CPU budget in force in this process (its SIGPROF handler is installed once).

    The timer fires every quarter budget of this process's CPU; the handler counts how many
    times it fired during the input now analysed and stops it at the fifth, after between 1 and
    1.25 budgets of it. Beginning an input resets the count: no clock is read per input
    (reading this process's CPU clock is a system call, and cost a twentieth of a worker's
    time in a batch of tweets)."""

    seconds = 0.0
    #: An input is being analysed, and how many times the timer fired during it.
    active = False
    ticks = 0
    #: A profiling timer is armed for a run of inputs (``budget_run``).
    armed = False
    installed = False
    previous: Any = None


#: Timer firings within one input that stop it (it fires every quarter budget).
_STOP_AT_TICK = 5


def _over(signum: int, frame: Any) -> None:
    if _Budget.active:
        _Budget.ticks += 1
        if _Budget.ticks >= _STOP_AT_TICK:
            _Budget.active = False
            raise TooExpensive(f"used more than {_Budget.seconds:g}s of CPU")
    if callable(_Budget.previous):
        _Budget.previous(signum, frame)


def _arm(seconds: float) -> bool:
    """Arm a profiling timer (ITIMER_PROF: this process's CPU time) that fires every quarter
    budget; False where signals cannot be used (outside the main thread) or no budget is set."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        return False
    if not _Budget.installed:
        _Budget.previous = signal.signal(signal.SIGPROF, _over)
        _Budget.installed = True
    _Budget.seconds, _Budget.armed = seconds, True
    signal.setitimer(signal.ITIMER_PROF, seconds / 4, seconds / 4)
    return True


def _disarm() -> None:
    _Budget.armed, _Budget.active = False, False
    signal.setitimer(signal.ITIMER_PROF, 0)


@contextmanager
def budget_run(seconds: float) -> Iterator[None]:
    """Keep one timer armed for a run of inputs (a batch), so that each ``cpu_budget`` inside
    costs a clock read instead of two system calls and a generator (a tenth of a batch's time
    went to arming and disarming a timer per input)."""
    armed = not _Budget.armed and _arm(seconds)
    try:
        yield
    finally:
        if armed:
            _disarm()


class cpu_budget:  # a context manager, named as contextlib names its own
    """Raise TooExpensive inside the block once it used ``seconds`` of this process's CPU.

    The check runs when the profiling timer fires, every quarter budget of CPU, so an input is
    stopped after between 1 and 1.25 budgets. Inside a ``budget_run`` the timer is already
    armed; alone, the block arms and disarms it. Outside the main thread (no signals there)
    the block runs unbounded.
    """

    __slots__ = ("alone", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.alone = False

    def __enter__(self) -> None:
        if not _Budget.armed:
            self.alone = _arm(self.seconds)
            if not self.alone:
                return
        _Budget.ticks = 0
        _Budget.active = True

    def __exit__(self, *exc: object) -> None:
        _Budget.active = False
        if self.alone:
            _disarm()


def analyse_text(text: str) -> Scores:
    """VADER's scores for one text, exactly as the library gives them, plus the label."""
    return labelled(analyzer().polarity_scores(text))


def labelled(s: dict[str, float]) -> Scores:
    """VADER's four scores (``polarity_scores``' answer) and the label of its compound."""
    return Scores(neg=s["neg"], neu=s["neu"], pos=s["pos"], compound=s["compound"],
                  label=label(s["compound"]))
