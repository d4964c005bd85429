"""The most any bulk path can reach against the raw scorer: a path that does nothing else.

Issue 31 asks ``ingest --batch 1000`` for 0.8 of host's scorer alone on the same cores. This
measures, in one process and on CPU time, the least work a bulk path must do per tweet besides
scoring it — split the input line, frame a batch as JSON, read it back, score, write four
numbers per tweet as JSON, read them back, write an output line — with no broker, no result
store, no second process, no validation and no record. Its rate over the scorer's rate is a
ceiling for every real path: anything a real one adds (Celery, Redis, the pipe to the pool,
input limits, the contract's record) only lowers it.

    python bench/bulk_floor.py [--tweets 21000] [--runs 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.throughput import load_tweets  # noqa: E402
from workers.scorer import Scorer  # noqa: E402

BATCH = 1000


def stages(texts: list[str], scorer: Scorer) -> dict[str, Callable[[], Any]]:
    """Each stage of the bare path, run over every tweet; each feeds the next (``state``)."""
    data = "".join(f"{i}\t0\t{t}\n" for i, t in enumerate(texts)).encode()
    state: dict[str, Any] = {}

    def read() -> None:
        state["rows"] = [line.split(b"\t", 2) for line in data.splitlines()]

    def frame() -> None:
        rows = state["rows"]
        state["frames"] = [orjson.dumps([[r[0].decode(), r[2].decode()] for r in rows[i:i + BATCH]])
                           for i in range(0, len(rows), BATCH)]

    def unframe() -> None:
        state["items"] = [item for f in state["frames"] for item in orjson.loads(f)]

    def score() -> None:
        state["scores"] = [scorer.polarity_scores(text) for _, text in state["items"]]

    def encode() -> None:
        items, scores = state["items"], state["scores"]
        state["results"] = [
            orjson.dumps([[ref, s["neg"], s["neu"], s["pos"], s["compound"]]
                          for (ref, _), s in zip(items[k:k + BATCH], scores[k:k + BATCH],
                                                 strict=True)])
            for k in range(0, len(items), BATCH)]

    def decode() -> None:
        state["back"] = [r for b in state["results"] for r in orjson.loads(b)]

    def write() -> None:
        state["out"] = "".join(f"{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\t{r[4]}\n" for r in state["back"])

    return {"read": read, "frame": frame, "unframe": unframe, "score": score,
            "encode": encode, "decode": decode, "write": write}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=21000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    texts = [text for _, text in load_tweets(args.tweets)]
    scorer = Scorer.from_package()
    steps = stages(texts, scorer)
    for step in steps.values():  # warm: the scorer's token memory, and every stage's input
        step()
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.runs):
        for name, step in steps.items():
            began = time.process_time()
            step()
            cpu[name].append((time.process_time() - began) / len(texts) * 1e6)
    per_tweet = {name: statistics.median(v) for name, v in cpu.items()}
    rest = sum(v for name, v in per_tweet.items() if name != "score")
    ceiling = per_tweet["score"] / (per_tweet["score"] + rest)
    if args.json:
        print(json.dumps({"us_per_tweet": per_tweet, "ceiling_vs_raw_scorer": ceiling}, indent=2))
        return 0
    print(f"{args.tweets} tweets, medians of {args.runs} runs, CPU microseconds per tweet:")
    for name, us in per_tweet.items():
        print(f"  {name:8} {us:6.2f}")
    print(f"scoring {per_tweet['score']:.2f} us, everything else {rest:.2f} us: "
          f"a bare bulk path reaches at most {ceiling:.3f} of the raw scorer's rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
