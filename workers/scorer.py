"""VADER's scores in time linear in the text's length.

vaderSentiment is the reference: this module gives the same ``neg``, ``neu``, ``pos`` and
``compound``, bit for bit, for every text (tests/unit/test_scorer.py holds it to that). It reads
the lexicon, the emoji descriptions and the rule words from the installed package, so the two
cannot drift apart. What differs is the cost. The library rebuilds the lower-cased word list for
every sentiment word it meets (three times: negation, idioms, "least") and finds each score's
position with ``list.index`` when a text has "but": quadratic in the number of words, half a
second of CPU for 10,000 characters of "not good". Here every word is lower-cased once, each
rule looks at most three words either side, and the "but" rule keeps, for each value, the
positions that hold it (docs/operations.md has the cost curve).
"""

from __future__ import annotations

import heapq
import math
import string
from collections.abc import Sequence
from itertools import pairwise
from typing import NamedTuple

from vaderSentiment import vaderSentiment as reference

Words = Sequence[str]

_NEGATIONS = frozenset(reference.NEGATE)
_BOOSTERS: dict[str, float] = reference.BOOSTER_DICT
_IDIOMS: dict[str, float] = reference.SPECIAL_CASES
_N_SCALAR = reference.N_SCALAR
_C_INCR = reference.C_INCR
#: The phrases of several words (idioms, "kind of"), and every pair of words next to each other
#: in one: a phrase the idiom rule joins can only match if its first two words are such a pair.
_PHRASES = [key.split(" ") for key in (*_IDIOMS, *_BOOSTERS) if " " in key]
_PHRASE_WORDS = frozenset(word for phrase in _PHRASES for word in phrase)
_PHRASE_PAIRS = frozenset(pair for phrase in _PHRASES for pair in pairwise(phrase))
_SO_THIS = ("so", "this")


#: Words some rule reads around a sentiment word (and every word holding "n't"): a sentiment word
#: with none of them among itself and the three words before it keeps its lexicon valence.
#: ("but" and "kind" are here to be found on the way: "but" for its rule, "kind" for "kind of").
_RULE_WORDS = (_NEGATIONS | _BOOSTERS.keys() | _PHRASE_WORDS
               | {"no", "least", "so", "this", "but", "kind"})
_NO_SENTIMENT = {"neg": 0.0, "neu": 0.0, "pos": 0.0, "compound": 0.0}


class _Token(NamedTuple):
    """What the rules read of one token."""

    lower: str
    upper: bool
    #: The lexicon's valence; None outside the lexicon and for boosters.
    valence: float | None
    #: A word some rule reads around a sentiment word (``_RULE_WORDS``).
    rule: bool


def _keep_emoticon(token: str) -> str:
    """A token without its leading and trailing punctuation, unless that leaves two characters or
    fewer (then it was likely an emoticon, ":)" or ":-(")."""
    stripped = token.strip(string.punctuation)
    return token if len(stripped) <= 2 else stripped


class Scorer:
    """VADER's ``polarity_scores``, from the lexicon and emoji table it is given."""

    __slots__ = ("_described", "_known", "emojis", "lexicon")

    #: Tokens remembered with what the rules read of them; forgotten all at once past this many.
    KNOWN_TOKENS = 50_000

    def __init__(self, lexicon: dict[str, float], emojis: dict[str, str]) -> None:
        self.lexicon = lexicon
        self.emojis = emojis
        # VADER replaces a character at a time (only the single-character emoji ever match) by its
        # description, after a space unless one is there. The words come out the same with a
        # space before every description, and the words are all that is read of the text but its
        # "!" and "?".
        self._described = {ord(e): " " + d for e, d in emojis.items() if len(e) == 1}
        self._known: dict[str, _Token] = {}

    @classmethod
    def from_package(cls) -> Scorer:
        """A scorer over the lexicon and emoji table of the installed vaderSentiment."""
        analyzer = reference.SentimentIntensityAnalyzer()
        return cls(analyzer.lexicon, analyzer.emojis)

    def polarity_scores(self, text: str) -> dict[str, float]:
        """``neg``, ``neu``, ``pos`` and ``compound``, exactly as vaderSentiment gives them."""
        if not text.isascii():  # every emoji VADER knows is outside ASCII
            text = text.translate(self._described)
        text = text.strip()
        known = self._known
        tokens = [known.get(raw) or self._learn(raw) for raw in text.split()]
        if not tokens:
            return dict(_NO_SENTIMENT)
        sentiments: list[float] = [0] * len(tokens)
        # Each sentiment word far from every rule word and not in capitals keeps its lexicon
        # valence; the others are shaped after this pass, with the whole text's words at hand.
        shaped: list[int] = []
        ruled, but = -4, -1
        for i, (lower, upper, valence, rule) in enumerate(tokens):
            if rule:
                ruled = i
                if but < 0 and lower == "but":
                    but = i
            if valence is None:
                continue
            if ruled < i - 3 and not upper:
                sentiments[i] = valence
            else:
                shaped.append(i)
        if shaped:
            self._shape(sentiments, shaped, tokens)
        if but >= 0:
            _but(sentiments, but)
        return _scores(sentiments, text)

    def _learn(self, raw: str) -> _Token:
        """What the rules read of a token, remembered."""
        word = _keep_emoticon(raw)
        lower = word.lower()
        valence = None if lower in _BOOSTERS else self.lexicon.get(lower)
        token = _Token(lower, word.isupper(), valence, lower in _RULE_WORDS or "n't" in lower)
        if len(self._known) >= self.KNOWN_TOKENS:
            self._known.clear()
        self._known[raw] = token
        return token

    def _shape(self, sentiments: list[float], shaped: list[int], tokens: list[_Token]) -> None:
        """The valence of each sentiment word at a position in ``shaped``, from the rules (but
        the "kind" of "kind of", which is no sentiment word)."""
        lowers = [token.lower for token in tokens]
        uppers = [token.upper for token in tokens]
        cap_diff = 0 < sum(uppers) < len(uppers)
        last = len(tokens) - 1
        for i in shaped:
            if i < last and lowers[i] == "kind" and lowers[i + 1] == "of":
                continue
            base = tokens[i].valence
            assert base is not None
            sentiments[i] = self._shaped(base, i, lowers, uppers, cap_diff)

    def _shaped(self, base: float, i: int, lowers: Words, uppers: Sequence[bool],
                cap_diff: bool) -> float:
        """The valence of the lexicon word at ``i`` after "no", capitals, the three words before
        it (boosters, negations, idioms) and "least"."""
        lexicon = self.lexicon
        low = lowers[i]
        valence = base
        if low == "no" and i != len(lowers) - 1 and lowers[i + 1] in lexicon:
            valence = 0.0
        if ((i > 0 and lowers[i - 1] == "no") or (i > 1 and lowers[i - 2] == "no")
                or (i > 2 and lowers[i - 3] == "no" and lowers[i - 1] in ("or", "nor"))):
            valence = base * _N_SCALAR
        if uppers[i] and cap_diff:
            valence = valence + _C_INCR if valence > 0 else valence - _C_INCR
        for distance in (1, 2, 3):
            j = i - distance
            if j < 0 or lowers[j] in lexicon:
                continue
            s = _boost(lowers[j], uppers[j] and cap_diff, valence)
            if distance == 2 and s != 0:
                s = s * 0.95
            elif distance == 3 and s != 0:
                s = s * 0.9
            valence = _negated(valence + s, lowers, distance, i)
            if distance == 3:
                valence = _idioms(valence, lowers, i)
        if i > 0 and lowers[i - 1] == "least" and "least" not in lexicon and (
                i == 1 or lowers[i - 2] not in ("at", "very")):
            valence = valence * _N_SCALAR
        return valence


def _boost(low: str, shouting: bool, valence: float) -> float:
    """What a booster or dampener before a sentiment word adds to its valence."""
    scalar = _BOOSTERS.get(low)
    if scalar is None:
        return 0.0
    if valence < 0:
        scalar *= -1
    if shouting:
        scalar = scalar + _C_INCR if valence > 0 else scalar - _C_INCR
    return scalar


def _is_negation(low: str) -> bool:
    return low in _NEGATIONS or "n't" in low


def _negated(valence: float, lowers: Words, distance: int, i: int) -> float:
    """The valence after the negation rule for the word ``distance`` before ``i``."""
    if distance == 1:
        return valence * _N_SCALAR if _is_negation(lowers[i - 1]) else valence
    if distance == 2:
        before, prev = lowers[i - 2], lowers[i - 1]
        if before == "never" and prev in _SO_THIS:
            return valence * 1.25
        if before == "without" and prev == "doubt":
            return valence
        return valence * _N_SCALAR if _is_negation(before) else valence
    third, second, prev = lowers[i - 3], lowers[i - 2], lowers[i - 1]
    if (third == "never" and second in _SO_THIS) or prev in _SO_THIS:
        return valence * 1.25
    if third == "without" and (second == "doubt" or prev == "doubt"):
        return valence
    return valence * _N_SCALAR if _is_negation(third) else valence


def _idioms(valence: float, lowers: Words, i: int) -> float:
    """The valence after the idioms around ``i`` ("the bomb", "kiss of death") and the boosters
    of two words before it ("kind of")."""
    three, two, one, zero = lowers[i - 3], lowers[i - 2], lowers[i - 1], lowers[i]
    following = lowers[i + 1] if i + 1 < len(lowers) else ""
    if ((three, two) not in _PHRASE_PAIRS and (two, one) not in _PHRASE_PAIRS
            and (one, zero) not in _PHRASE_PAIRS and (zero, following) not in _PHRASE_PAIRS):
        return valence  # no phrase the rule joins starts with a pair of a phrase
    two_one = f"{two} {one}"
    three_two = f"{three} {two}"
    three_two_one = f"{three} {two} {one}"
    for phrase in (f"{one} {zero}", f"{two} {one} {zero}", two_one, three_two_one, three_two):
        if phrase in _IDIOMS:
            valence = _IDIOMS[phrase]
            break
    if len(lowers) - 1 > i and (after := f"{zero} {lowers[i + 1]}") in _IDIOMS:
        valence = _IDIOMS[after]
    if len(lowers) - 1 > i + 1 and (after := f"{zero} {lowers[i + 1]} {lowers[i + 2]}") in _IDIOMS:
        valence = _IDIOMS[after]
    for phrase in (three_two_one, three_two, two_one):
        if phrase in _BOOSTERS:
            valence = valence + _BOOSTERS[phrase]
    return valence


def _but(sentiments: list[float], at: int) -> None:
    """VADER's "but" rule, as the library applies it: for each score in order, the first position
    holding an equal value is halved before "but" and taken one and a half times after it.

    The library finds that position with ``list.index`` (quadratic); here every value keeps a heap
    of the positions holding it, so each step costs a logarithm."""
    holding: dict[float, list[int]] = {}
    for position, value in enumerate(sentiments):
        holding.setdefault(value, []).append(position)  # ascending: already a heap
    for value in list(sentiments):
        positions = holding[value]
        first = positions[0]
        if first == at:
            continue
        changed = value * 0.5 if first < at else value * 1.5
        sentiments[first] = changed
        if changed != value:
            heapq.heappop(positions)
            heapq.heappush(holding.setdefault(changed, []), first)


def _scores(sentiments: list[float], text: str) -> dict[str, float]:
    """The four scores from the words' valences and the text's "!" and "?"."""
    total_valence = float(sum(sentiments))
    questions = text.count("?")
    emphasis = min(text.count("!"), 4) * 0.292 + (
        0 if questions <= 1 else questions * 0.18 if questions <= 3 else 0.96)
    if total_valence > 0:
        total_valence += emphasis
    elif total_valence < 0:
        total_valence -= emphasis
    compound = max(-1.0, min(1.0, total_valence / math.sqrt(total_valence * total_valence + 15)))
    pos_sum, neg_sum = 0.0, 0.0
    for s in filter(None, sentiments):  # in order: floats are summed as the library sums them
        if s > 0:
            pos_sum += float(s) + 1
        else:
            neg_sum += float(s) - 1
    if pos_sum > -neg_sum:
        pos_sum += emphasis
    elif pos_sum < -neg_sum:
        neg_sum -= emphasis
    neutral = sentiments.count(0)
    total = pos_sum + math.fabs(neg_sum) + neutral
    return {"neg": round(math.fabs(neg_sum / total), 3),
            "neu": round(math.fabs(neutral / total), 3),
            "pos": round(math.fabs(pos_sum / total), 3),
            "compound": round(compound, 4)}
