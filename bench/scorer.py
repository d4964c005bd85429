"""host's scorer against vaderSentiment: tweets per second in one process, and the cost curve.

Scores the 4,200 ground-truth tweets with vaderSentiment and with host's scorer
(``workers/scorer.py``), alternately in each run so that a busy neighbour slows both, and prints
the medians and their ratio; then the CPU time of each expensive input (issue 31's table and
lengths from 1,000 to 10,000 characters), for both, with the scorer's µs per character.
Checks first that every tweet scores identically (the benchmark of a wrong scorer means nothing).

    python bench/scorer.py [--runs 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # noqa: E402

from bench.throughput import load_tweets  # noqa: E402
from workers.scorer import Scorer  # noqa: E402

Score = Callable[[str], dict[str, float]]

#: The cost curve's inputs: each shape cut to these lengths.
SHAPES = {"not good": "not good ", "emoji": "😀", "emoji but": "😀 but ", "no": "no ",
          "tears of joy": "😂", "tweets": ""}
LENGTHS = (1_000, 2_500, 5_000, 10_000)


def rate(score: Score, texts: list[str]) -> float:
    started = time.process_time()
    for text in texts:
        score(text)
    return len(texts) / (time.process_time() - started)


def cpu(score: Score, text: str, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        score(text)
        best = min(best, time.process_time() - started)
    return best


def shaped(shape: str, length: int, tweets: list[str]) -> str:
    unit = SHAPES[shape] or " ".join(tweets[:200]) + " "
    return (unit * (length // len(unit) + 1))[:length]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    texts = [text for _, text in load_tweets(4200)]
    vader, host = SentimentIntensityAnalyzer().polarity_scores, Scorer.from_package().polarity_scores
    differ = sum(1 for t in texts if vader(t) != host(t))
    if differ:
        print(f"{differ} tweets score differently: not benchmarking a wrong scorer", file=sys.stderr)
        return 1
    rates: dict[str, list[float]] = {"vaderSentiment": [], "host": []}
    for _ in range(args.runs):
        rates["vaderSentiment"].append(rate(vader, texts))
        rates["host"].append(rate(host, texts))
    med = {name: statistics.median(r) for name, r in rates.items()}
    curve = []
    for shape in SHAPES:
        slow = False  # vaderSentiment past 2 s for this shape: its longer inputs are not run
        for length in LENGTHS:
            text = shaped(shape, length, texts)
            ref = None if slow else cpu(vader, text, runs=1)
            slow = slow or (ref is not None and ref > 2.0)
            ours = cpu(host, text)
            curve.append({"shape": shape, "chars": length,
                          "vader_s": None if ref is None else round(ref, 4),
                          "host_s": round(ours, 5),
                          "host_us_per_char": round(ours / length * 1e6, 2)})
    result = {"tweets": len(texts), "runs": args.runs,
              "tweets_per_s": {k: round(v) for k, v in med.items()},
              "ratio": round(med["host"] / med["vaderSentiment"], 2), "cost_curve": curve}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{len(texts)} tweets, one process, medians of {args.runs} runs (CPU time):")
    for name, value in med.items():
        print(f"  {name:15} {value:9.0f} tweets/s")
    print(f"  host / vaderSentiment: {result['ratio']:.2f}×\n")
    print(f"{'input':12} {'chars':>6} {'vaderSentiment s':>17} {'host s':>9} {'host µs/char':>13}")
    for row in curve:
        shown = "(not run)" if row["vader_s"] is None else f"{row['vader_s']:.4f}"
        print(f"{row['shape']:12} {row['chars']:6} {shown:>17} {row['host_s']:9.5f} "
              f"{row['host_us_per_char']:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
