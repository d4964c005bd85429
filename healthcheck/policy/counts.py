"""Who is out of rotation, and by whose action: what the fleet's guard counts against its bound,
kept up to date as each worker's record changes (pure)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from healthcheck.policy.model import Cause, State, WorkerHealth

#: Causes whose ejections count against the guard's budget (operators' do not).
AUTOMATIC = frozenset({Cause.WEAR, Cause.PROBE, Cause.SELF})
_OUT = frozenset({State.DRAINING, State.QUARANTINED, State.OFFLINE})


def auto_out(w: WorkerHealth) -> bool:
    """True when the worker is out of rotation by automatic action (counts against the budget)."""
    return w.cause in AUTOMATIC and w.state in _OUT


def operator_out(w: WorkerHealth) -> bool:
    """True when a person (or the worker's platform, stopping it) took the worker out:
    MAINTENANCE, or a manual quarantine."""
    return (w.cause in (Cause.OPERATOR, Cause.STOPPING)
            and w.state in (State.MAINTENANCE, State.QUARANTINED))


@dataclass
class OutCounts:
    """Workers out of rotation by automatic action and by a person's; those counted against the
    bound (automatic, plus a person's when the policy says so), in the fleet and per queue."""

    auto: int = 0
    operator: int = 0
    budget: int = 0
    queue_size: Counter[str] = field(default_factory=Counter)
    queue_out: Counter[str] = field(default_factory=Counter)

    def count(self, w: WorkerHealth, sign: int, count_operator_out: bool) -> None:
        """Count ``w`` in (``sign`` +1) or out (-1)."""
        automatic, manual = auto_out(w), operator_out(w)
        out = automatic or (manual and count_operator_out)
        self.auto += sign * automatic
        self.operator += sign * manual
        self.budget += sign * out
        for q in w.queues:
            self.queue_size[q] += sign
            self.queue_out[q] += sign * out
