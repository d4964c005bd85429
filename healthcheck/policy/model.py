"""The policy's vocabulary: worker states, per-worker health, transitions (what the policy
observes is in ``observations``).

Time, said once for the whole product: every time the policy sees (``at``, ``since``,
``last_seen``, ``now``) is the *checker's* wall clock, in seconds since the epoch, read by the
checker (``time.time``) when an event arrives or a tick starts, and passed in. Nothing here
reads a clock. Wall clock, not monotonic, because states are stored and another checker (or
this one, restarted) carries on from them; the checker's own, because durations are only ever
differences of two readings of one machine's clock: a worker's or a producer's clock never
enters a policy decision, a metric or an audit duration (their times are kept as theirs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    """A worker's health state (PRODUCT.md §5)."""

    HEALTHY = "HEALTHY"
    SUSPECT = "SUSPECT"
    DRAINING = "DRAINING"
    QUARANTINED = "QUARANTINED"
    PROBATION = "PROBATION"
    MAINTENANCE = "MAINTENANCE"
    OFFLINE = "OFFLINE"


#: States in which a worker consumes its work queues.
CONSUMING: frozenset[State] = frozenset({State.HEALTHY, State.SUSPECT, State.PROBATION})
#: States in which a worker is out of rotation (OFFLINE is gone, not out of rotation).
OUT_OF_ROTATION: frozenset[State] = frozenset({State.DRAINING, State.QUARANTINED,
                                               State.MAINTENANCE})


class Cause(StrEnum):
    """Why a worker is out of rotation: decides whose budget it counts against."""

    NONE = ""
    WEAR = "wear"  # automatic, bounded by the fleet guard
    PROBE = "probe"  # automatic, exempt from the guard (a wrong answer is worse than no answer)
    SELF = "self"  # the worker closed its own gate on a hard local limit
    OPERATOR = "operator"  # a person: shows in the guard's figures, not in its budget
    #: its platform is stopping it (a pod's preStop, a unit's ExecStop): an operator's drain
    #: that ends by itself when the worker starts again.
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    """Everything the policy remembers about one worker.

    Args:
        name: the node name.
        state: its current state.
        since: when it entered that state.
        reason: why it is in that state.
        last_seen: when anything was last heard from it.
        breaches: consecutive observations with a soft breach.
        passes: consecutive clean observations (probe passes while quarantined).
        ejections: automatic ejections not yet forgiven; drives the back-off.
        backoff_until: a quarantine lasts at least until then.
        cause: why it is out of rotation (see Cause).
        resume: the state to return to when an OFFLINE worker is heard from again.
        queues: the work queues it consumes when in rotation.
        last_breach: when it last looked degraded; recovery clocks run from the later of
            this and ``since``.
        consuming: the work queues it last said it consumes (None: never said; then its
            configured ``queues`` are assumed).
        held: why the fleet guard keeps it in rotation although the policy would eject it
            ("" when it does not).
        hot: consecutive reports whose last raw sample crossed a hard limit (a sustained
            step, told from a spike: see ``Sustained``).
        hot_since: when the first of those reports arrived (0.0 when ``hot`` is 0).
        busy: the load readings over their soft limits in its last report while it made
            progress ("" when none): capacity in use, shown, never a reason to eject.
        busy_metrics: the names of those readings.
        heal: it was ejected for a cause a restart of its pool cures (``Healing``).
        recycles: when its pool was restarted by the checker, within the last hour.
        for_person: why it stays out until a person restores it, though the checker put it
            there ("" when probes may re-admit it): recycled too often, still worn.
    """

    name: str
    state: State = State.HEALTHY
    since: float = 0.0
    reason: str = "first seen"
    last_seen: float = 0.0
    breaches: int = 0
    passes: int = 0
    ejections: int = 0
    backoff_until: float = 0.0
    cause: Cause = Cause.NONE
    resume: State | None = None
    queues: tuple[str, ...] = ()
    last_breach: float = 0.0
    consuming: tuple[str, ...] | None = None
    held: str = ""
    hot: int = 0
    hot_since: float = 0.0
    busy: str = ""
    busy_metrics: tuple[str, ...] = ()
    heal: bool = False
    recycles: tuple[float, ...] = ()
    for_person: str = ""

    def consumes(self, queue: str) -> bool:
        """True when it is in a consuming state and really consumes ``queue``."""
        actual = self.queues if self.consuming is None else self.consuming
        return self.state in CONSUMING and queue in actual

    def clean_for(self, now: float) -> float:
        """Seconds since it entered its state or last looked degraded, whichever is later."""
        return now - max(self.since, self.last_breach)

    def probing(self, now: float) -> bool:
        """True when a quarantined worker's back-off has run out: probes may re-admit it.

        Derived from time, never scheduled.
        """
        return self.state is State.QUARANTINED and now >= self.backoff_until


class Code(StrEnum):
    """What kind of change a transition is: a bounded code for metric labels and alerts (the
    reason is free text for people and may be reworded at will)."""

    LIVENESS = "liveness"  # went OFFLINE: no sign of life
    RETURNED = "returned"  # came back from OFFLINE
    OPERATOR = "operator"  # a person's action
    WEAR = "wear"  # ejected for wear
    PROBE = "probe"  # ejected for a wrong probe answer
    SELF = "self"  # ejected after the worker closed its own gate
    DRAINED = "drained"  # DRAINING to QUARANTINED: nothing left in flight
    DRAIN_TIMEOUT = "drain_timeout"  # DRAINING to QUARANTINED: the drain took too long
    SUSPECT = "suspect"  # looks degraded, not yet ejected
    HELD = "held"  # the guard kept it in rotation although the policy would eject it
    RECOVERY = "recovery"  # back towards HEALTHY


def transition_code(from_state: State, to_state: State, automatic: bool, cause: Cause) -> Code:
    """The code a transition has by its states and cause alone (the policy names the two
    codes that need more context, DRAIN_TIMEOUT and HELD, itself)."""
    if to_state is State.OFFLINE:
        return Code.LIVENESS
    if from_state is State.OFFLINE:
        return Code.RETURNED
    if not automatic:
        return Code.OPERATOR
    if to_state in (State.DRAINING, State.QUARANTINED):
        if from_state is State.DRAINING:
            return Code.DRAINED
        return Code(cause.value) if cause is not Cause.NONE else Code.WEAR
    if to_state is State.SUSPECT:
        return Code.SUSPECT
    return Code.RECOVERY


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of state, with its reason: adapters log, count, store and act on these.

    Args:
        worker: the node name.
        from_state: the state it left.
        to_state: the state it entered.
        reason: why, in words an operator reads in the audit log.
        at: when (the checker's clock).
        cause: whose budget an ejection counts against.
        automatic: False for operator actions.
        enforced: False in a dry run: detected, not acted upon.
        evidence: the figures behind the decision.
        code: what kind of change it is (None: derived from the states and the cause).
        recycle: restart the worker's pool now (it is out for a cause that cures).
    """

    worker: str
    from_state: State
    to_state: State
    reason: str
    at: float
    cause: Cause = Cause.NONE
    automatic: bool = True
    enforced: bool = True
    evidence: Mapping[str, float | str] = field(default_factory=dict)
    code: Code = None  # type: ignore[assignment]  # set in __post_init__ when not given
    recycle: bool = False

    def __post_init__(self) -> None:
        if self.code is None:
            object.__setattr__(self, "code", transition_code(self.from_state, self.to_state,
                                                             self.automatic, self.cause))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the detectors make of one report: ``ok``, ``soft`` or ``hard``, with reasons."""

    level: str
    reasons: tuple[str, ...] = ()
    evidence: Mapping[str, float | str] = field(default_factory=dict)
    #: Metrics whose last raw sample is at or over their hard limit (whatever the level).
    over_hard: tuple[str, ...] = ()
    #: Load readings over a limit that the worker's progress excuses: it is busy, not worn.
    busy: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """All reasons in one line."""
        return "; ".join(self.reasons)


OK = Verdict("ok")
