"""The nemesis's schedule: which faults, on what, when and for how long, drawn from a seed.

A schedule is a pure function of (seed, seconds, workers): printed before the run and replayed
exactly by the same seed. Faults arrive at random (exponential gaps) and last a random time, so
they overlap: a broker restart during a checker takeover, a wear spike while the store stalls.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

#: Every fault kind, its weight in the draw, and its duration range in seconds.
KINDS: dict[str, tuple[float, tuple[float, float]]] = {
    "worker_kill": (2.0, (1.0, 8.0)),       # SIGKILL a worker (and its pool); restart after
    "worker_pause": (1.5, (1.0, 6.0)),      # SIGSTOP a worker's main process; SIGCONT after
    "pool_kill": (1.5, (0.0, 0.0)),         # SIGKILL one pool child (Celery replaces it)
    "checker_kill": (1.5, (1.0, 8.0)),      # SIGKILL a checker; restart after
    "checker_pause": (1.0, (1.0, 6.0)),     # SIGSTOP a checker; SIGCONT after
    "store_pause": (1.5, (0.5, 4.0)),       # SIGSTOP the store's Redis; SIGCONT after
    "broker_pause": (1.0, (0.5, 3.0)),      # SIGSTOP the broker's Redis; SIGCONT after
    "broker_restart": (0.7, (0.5, 3.0)),    # SIGKILL the broker's Redis; start it again after
    "wear": (2.0, (4.0, 15.0)),             # cpu=100,spin=3 injected; cleared and restored after
    "operator_drain": (1.5, (2.0, 10.0)),   # `fleet drain` by a person; `fleet restore` after
    "bad_inputs": (1.5, (0.0, 0.0)),        # a burst of malformed and expensive inputs
    "liar": (1.0, (6.0, 25.0)),             # wrong_answers=1 injected; cleared and restored after
    "platform_restart": (1.0, (0.0, 0.0)),  # the stop hook (`drain --stopping`), SIGTERM, start
}
#: Mean seconds between two faults.
MEAN_GAP_S = 6.0
#: No fault starts in the first seconds (the fleet settles) nor in the last (it heals).
QUIET_START_S, QUIET_END_S = 10.0, 15.0


@dataclass(frozen=True, slots=True)
class Fault:
    at: float
    kind: str
    target: int  # a worker's or checker's index (0 for the servers and inputs)
    duration: float

    def __str__(self) -> str:
        what = f"{self.kind}[{self.target}]"
        return f"t={self.at:7.2f}s {what:<20} for {self.duration:.2f}s"


def draw(seed: int, seconds: float, workers: int, checkers: int = 2) -> list[Fault]:
    """The schedule of one run."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    weights = [KINDS[k][0] for k in kinds]
    faults = []
    t = QUIET_START_S
    while True:
        t += rng.expovariate(1.0 / MEAN_GAP_S)
        if t > seconds - QUIET_END_S:
            break
        kind = rng.choices(kinds, weights)[0]
        low, high = KINDS[kind][1]
        duration = min(rng.uniform(low, high), max(0.0, seconds - QUIET_END_S - t))
        target = rng.randrange(checkers if kind.startswith("checker") else workers)
        faults.append(Fault(round(t, 3), kind, target, round(duration, 3)))
    return faults


def dumps(faults: list[Fault]) -> str:
    return json.dumps([asdict(f) for f in faults])
