"""Sentiment analysis with VADER: the domain function the analysis tasks call."""

from __future__ import annotations

from functools import cache
from typing import TypedDict

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


def analyse_text(text: str) -> Scores:
    """VADER's scores for one text, exactly as the library gives them, plus the label."""
    s = analyzer().polarity_scores(text)
    return Scores(neg=s["neg"], neu=s["neu"], pos=s["pos"], compound=s["compound"],
                  label=label(s["compound"]))
