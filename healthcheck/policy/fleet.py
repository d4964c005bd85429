"""The fleet: every worker's health, and the guard that bounds automatic ejections.

Deterministic and free of I/O and clocks: times come in as arguments and jitter from a seeded
``random.Random``. The per-worker decisions are ``HealthPolicy``'s; this module adds what only a
view of the whole fleet can decide — whether an ejection for wear may happen now.

Guard rules (PRODUCT.md §7):

* ejections for wear are proposed by observations and decided together at the next ``tick``,
  so that the guard sees everything that went wrong in the same pass;
* at most ``bound(n)`` workers out of rotation by automatic action at once, in the fleet and
  among the consumers of any queue, where ``bound(n) = max(min_ejections,
  floor(max_ejected_fraction x n))``: with 12 workers at 25%, 3;
* when more workers look degraded at once (out by automatic action, proposed, or held back)
  than the bound allows, the inputs are suspect — a broken metrics pipeline makes everyone look
  hot: no ejection for wear happens until enough of them look well again, and the guard reports
  itself engaged;
* at most ``max(max_ejections_per_window, floor(max_ejection_rate_fraction x n))`` new
  ejections per ``window_s``;
* wrong probe answers and workers that closed their own gate are exempt: they never wait;
* workers a person took out count against the bound only with ``guard.count_operator_out``;
* a worker held back says so: ``held`` and its reason carry the guard's figures and its
  latest readings, and ``Decision.held`` names it whenever that changes.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from healthcheck.policy import holds
from healthcheck.policy.config import PolicyConfig
from healthcheck.policy.counts import OutCounts
from healthcheck.policy.machine import HealthPolicy, Proposal
from healthcheck.policy.model import Cause, State, Transition, WorkerHealth
from healthcheck.policy.norms import PeerNorms
from healthcheck.policy.observations import Observation, WearReport
from healthcheck.policy.shards import Budget, Peers, ShardFigures, bound, rate_limit, refusal

#: Causes that never wait for the guard's admission.
EXEMPT = frozenset({Cause.PROBE, Cause.SELF})


@dataclass(frozen=True, slots=True)
class Decision:
    """What one call changed: the transitions, whether the guard is engaged after it, and the
    workers whose record changed without a transition (``changed``: a held worker's reason),
    of which ``held`` are newly held back, or held for another reason than before."""

    transitions: tuple[Transition, ...] = ()
    guard_engaged: bool = False
    changed: tuple[str, ...] = ()
    held: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GuardFigures:
    """The guard's view: budget, what uses it, what it holds back."""

    fleet_size: int
    bound: int
    automatic_out: int
    operator_out: int
    held: int
    recent_ejections: int
    engaged: bool
    #: Workers the guard keeps in rotation although the policy would eject them.
    held_back: int = 0


@dataclass
class Fleet:
    """Every worker's health, updated by observations and ticks.

    Args:
        policy: the per-worker policy.
        seed: seeds the jitter, so a run is reproducible.
        workers: the workers it starts with.
        budget: one shard of a sharded fleet: the fleet-wide budget every ejection must also
            be admitted by (None: this fleet is the whole fleet).
    """

    policy: HealthPolicy = field(default_factory=HealthPolicy)
    seed: int = 0
    workers: dict[str, WorkerHealth] = field(default_factory=dict)
    budget: Budget | None = None
    #: Seconds a proposed ejection waits before it is decided (one shard of several: long
    #: enough for every shard to have published what it sees of the same moment, so that the
    #: guard judges a fleet-wide wave as one).
    settle_s: float = 0.0
    #: The other shards' figures (set before each tick by whoever runs a shard): the guard's
    #: bounds count the whole fleet.
    peers: Peers = field(default_factory=Peers)
    _rng: random.Random = field(init=False, repr=False)
    #: Who is out of rotation, by whose action, in the fleet and per queue.
    _out: OutCounts = field(init=False, default_factory=OutCounts)
    #: Workers whose latest verdict wants them out for wear and who are not out yet
    #: (proposed since the last tick, or held back by the guard).
    _waiting: set[str] = field(init=False, default_factory=set)
    _proposed: dict[str, Proposal] = field(init=False, default_factory=dict)
    _proposed_at: dict[str, float] = field(init=False, default_factory=dict)
    _recent: deque[float] = field(init=False, default_factory=deque)
    #: What each worker's latency and cost per item are judged against.
    _norms: PeerNorms = field(init=False, default_factory=PeerNorms)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        existing, self.workers = self.workers, {}
        for w in existing.values():
            self._put(w)

    @property
    def config(self) -> PolicyConfig:
        """The policy's configuration."""
        return self.policy.config

    # --- inputs --------------------------------------------------------------------------

    def observe(self, obs: Observation) -> Decision:
        """Apply one observation (a new worker starts HEALTHY, unless its report says a
        checker holds it out: then as that hold says, ``holds.adopted``).

        An ejection for wear is only proposed here; ``tick`` decides it.
        """
        w = self.workers.get(obs.worker)
        if w is None and isinstance(obs, WearReport):
            w = holds.adopted(obs)
        if w is None:
            w = WorkerHealth(name=obs.worker, since=obs.at, last_seen=obs.at, reason="first seen")
        norm = self._norms.note(w, obs, self.config) if isinstance(obs, WearReport) else None
        step = self.policy.observe(w, obs, self._norms.fleet_p95, self._jitter(), norm)
        if step.eject is not None and step.eject.cause in EXEMPT:
            step = self.policy.eject(step.health, step.eject, obs.at)
        elif step.eject is not None:
            self._proposed[obs.worker] = step.eject
            self._proposed_at.setdefault(obs.worker, obs.at)
            self._waiting.add(obs.worker)
        elif not step.degraded and isinstance(obs, WearReport):
            # Only a clean wear report says the wear is gone: a heartbeat or a passed probe
            # between two hot reports does not.
            self._proposed.pop(obs.worker, None)
            self._proposed_at.pop(obs.worker, None)
            self._waiting.discard(obs.worker)
        changed: tuple[str, ...] = ()
        if step.health.held and not step.degraded and isinstance(obs, WearReport):
            # The hold and the reason that tells it move together.
            step = replace(step, health=replace(
                step.health, held="", reason="readings back within bounds: no longer held"))
            changed = (obs.worker,)
        self._put(step.health)
        return Decision(step.transitions, self.guard_engaged, changed)

    def recall_ejections(self, times: Iterable[float]) -> None:
        """Count ejections made before this fleet existed (by another checker) against the
        guard's rate window."""
        self._recent.extend(sorted(times))

    def tick(self, now: float, sweep: bool = True) -> Decision:
        """Let time pass for every worker (``sweep``: the caller may do that less often than it
        decides, at fleet scale), then decide the proposed ejections together."""
        done: list[Transition] = []
        if sweep:
            self._sweep(now, done)
        decided, changed, held = self._decide(now)
        done.extend(decided)
        return Decision(tuple(done), self.guard_engaged, changed, held)

    def _sweep(self, now: float, done: list[Transition]) -> None:
        self._norms.refresh(self.workers, self.config)
        for w in list(self.workers.values()):
            step = self.policy.tick(w, now, self._jitter())
            if step.health is not w:
                if step.health.state is State.OFFLINE:
                    self._waiting.discard(w.name)
                    self._proposed.pop(w.name, None)
                    self._proposed_at.pop(w.name, None)
                self._put(step.health)
                done.extend(step.transitions)

    def excuse_silence(self, now: float) -> None:
        """The checker could not hear the fleet until ``now`` (its own intake failed, not the
        workers): every worker not OFFLINE gets ``offline_after_s`` from ``now`` to be heard."""
        for name, w in self.workers.items():
            if w.state is not State.OFFLINE and w.last_seen < now:
                self.workers[name] = replace(w, last_seen=now)

    def operator(self, worker: str, to: State, reason: str, now: float,
                 stopping: bool = False) -> Decision:
        """An operator's action on a known worker.

        Raises:
            KeyError: the worker is unknown.
            ValueError: see HealthPolicy.operator.
        """
        step = self.policy.operator(self.workers[worker], to, reason, now, self._jitter(),
                                    stopping)
        self._waiting.discard(worker)
        self._proposed.pop(worker, None)
        self._proposed_at.pop(worker, None)
        self._put(step.health)
        return Decision(step.transitions, self.guard_engaged)

    # --- views --------------------------------------------------------------------------

    @property
    def has_proposals(self) -> bool:
        """True while ejections wait for the guard's decision (the next ``tick``)."""
        return bool(self._proposed)

    def bound(self, n: int | None = None) -> int:
        """How many workers (of n, default the fleet) automatic action may take out at once."""
        return bound(self.config.guard, len(self.workers) + self.peers.size if n is None else n)

    @property
    def guard_engaged(self) -> bool:
        """True while more workers look degraded (out, proposed, held) than the guard lets out."""
        return self._looking_bad() > self.bound()

    def figures(self) -> GuardFigures:
        """The guard's numbers, for metrics and ``fleet status``."""
        return GuardFigures(len(self.workers) + self.peers.size, self.bound(), self._out.auto,
                            self._out.operator, len(self._waiting), self._recent_ejections(),
                            self.guard_engaged, sum(1 for w in self.workers.values() if w.held))

    def own_figures(self) -> ShardFigures:
        """This fleet's own figures, as the other shards' guards count them."""
        return ShardFigures(len(self.workers), self._out.budget, len(self._waiting),
                            len(self._recent), +self._out.queue_size, +self._out.queue_out)

    def healthy_consumers(self, queue: str) -> int:
        """Workers in rotation (HEALTHY, SUSPECT or PROBATION) that really consume ``queue``,
        as they last said (their configured queues, for a worker that never said)."""
        return sum(1 for w in self.workers.values() if w.consumes(queue))

    def by_state(self) -> Counter[State]:
        """How many workers are in each state."""
        return Counter(w.state for w in self.workers.values())

    def __iter__(self) -> Iterator[WorkerHealth]:
        return iter(self.workers.values())

    # --- the guard ----------------------------------------------------------------------

    def rate_limit(self) -> int:
        """New ejections allowed per window: max(3, floor(5% of the fleet)) by default."""
        return rate_limit(self.config.guard, len(self.workers) + self.peers.size)

    def _looking_bad(self) -> int:
        return self._out.budget + len(self._waiting) + self.peers.out + self.peers.waiting

    def _recent_ejections(self) -> int:
        return len(self._recent) + self.peers.recent

    def _decide(self, now: float) -> tuple[list[Transition], tuple[str, ...], tuple[str, ...]]:
        g = self.config.guard
        while self._recent and now - self._recent[0] > g.window_s:
            self._recent.popleft()
        proposed, self._proposed = self._proposed, {}
        if self.settle_s > 0:
            self._proposed = {k: p for k, p in proposed.items()
                              if now - self._proposed_at[k] < self.settle_s}
            proposed = {k: p for k, p in proposed.items() if k not in self._proposed}
        for name in proposed:
            self._proposed_at.pop(name, None)
        suspicious = self.guard_engaged
        done: list[Transition] = []
        changed: list[str] = []
        held: list[str] = []
        for name, proposal in proposed.items():
            w = self.workers[name]
            why = self._suspecting_inputs() if suspicious else self._refusal(w)
            if why is None and self.budget is not None:
                why = self.budget.admit(name, w.queues, now, w.state is State.PROBATION)
            if why is None:
                self._waiting.discard(name)
                self._recent.append(now)
                step = self.policy.eject(w, proposal, now)
            else:
                step = self.policy.hold(w, proposal, why, now)
                changed.append(name)
                if step.health.held != w.held:
                    held.append(name)
            self._put(step.health)
            done.extend(step.transitions)
        return done, tuple(changed), tuple(held)

    def _suspecting_inputs(self) -> str:
        return (f"suspecting the inputs: {self._looking_bad()} look degraded at once / "
                f"bound {self.bound()}")

    def _refusal(self, w: WorkerHealth) -> str | None:
        whole = Peers.total([self.own_figures(), self.peers])
        return refusal(self.config.guard, whole, w.queues, w.state is State.PROBATION)

    # --- bookkeeping --------------------------------------------------------------------

    def _put(self, new: WorkerHealth) -> None:
        old = self.workers.get(new.name)
        if old is not None and (old.state, old.cause, old.queues) == (new.state, new.cause,
                                                                    new.queues):
            self.workers[new.name] = new  # nothing the guard counts changed
            return
        counted = self.config.guard.count_operator_out
        if old is not None:
            self._out.count(old, -1, counted)
        self.workers[new.name] = new
        self._out.count(new, +1, counted)

    def _jitter(self) -> float:
        return self._rng.uniform(0, self.config.backoff.jitter_s)


def replay(fleet: Fleet, events: Iterable[Observation | float]) -> list[Decision]:
    """Feed observations, and ticks given as bare times, in order; the decisions in order."""
    return [fleet.tick(e) if isinstance(e, float) else fleet.observe(e) for e in events]
