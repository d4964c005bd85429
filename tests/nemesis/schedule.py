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
#: Faults of a worker's network (each worker runs in a network namespace of its own): drawn
#: from a second stream of the same seed, so that the schedules of the seeds named before they
#: existed (tests, docs) are what they were, with these on top.
NET_KINDS: dict[str, tuple[float, tuple[float, float]]] = {
    "net_cut": (1.0, (2.0, 15.0)),          # every packet to and from a worker dropped
    "net_loss": (1.0, (5.0, 20.0)),         # 30 % of them, at random, each way
}
#: A pause of whichever checker leads at that moment, long enough for a standby to take the
#: lease (5 s) while the old leader lives on: a third stream of the seed. Fencing is what keeps
#: the resumed one from acting (its lease no longer trusted, its writes refused, its commands
#: of an older epoch refused by the workers).
LEADER_KINDS: dict[str, tuple[float, tuple[float, float]]] = {
    "leader_pause": (1.0, (4.0, 9.0)),
}
#: Mean seconds between two faults, between two network faults, and two leader pauses.
MEAN_GAP_S = 6.0
NET_MEAN_GAP_S = 20.0
LEADER_MEAN_GAP_S = 45.0
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


def draw(seed: int, seconds: float, workers: int, checkers: int = 2,
         network: bool = True, leader: bool = True) -> list[Fault]:
    """The schedule of one run (``network``: with the network faults; ``leader``: with the
    leader's pauses)."""
    faults = _stream(random.Random(seed), KINDS, MEAN_GAP_S, seconds, workers, checkers)
    if network:
        faults += _stream(random.Random(f"{seed}/network"), NET_KINDS, NET_MEAN_GAP_S,
                          seconds, workers, checkers)
    if leader:
        faults += _stream(random.Random(f"{seed}/leader"), LEADER_KINDS, LEADER_MEAN_GAP_S,
                          seconds, 1, checkers)  # target 0: shard 0's leader
    return sorted(faults, key=lambda f: f.at)


def _stream(rng: random.Random, table: dict[str, tuple[float, tuple[float, float]]],
            mean_gap_s: float, seconds: float, workers: int, checkers: int) -> list[Fault]:
    kinds = list(table)
    weights = [table[k][0] for k in kinds]
    faults = []
    t = QUIET_START_S
    while True:
        t += rng.expovariate(1.0 / mean_gap_s)
        if t > seconds - QUIET_END_S:
            break
        kind = rng.choices(kinds, weights)[0]
        low, high = table[kind][1]
        duration = min(rng.uniform(low, high), max(0.0, seconds - QUIET_END_S - t))
        target = rng.randrange(checkers if kind.startswith("checker") else workers)
        faults.append(Fault(round(t, 3), kind, target, round(duration, 3)))
    return faults


def dumps(faults: list[Fault]) -> str:
    return json.dumps([asdict(f) for f in faults])
