"""What a worker out of rotation is held out as, written on its gate and read back.

The checker's store is the record of who is out and why; the worker's own gate is the other
copy. Every drain carries a hold (``STATE/cause``, and ``/person`` when only a person may let
it back in); the worker keeps it with its closed gate and sends it in every wear report. A
checker that meets a worker its store has no record of (the store restarted empty, a
failover lost the last writes) takes that worker back as its hold says, with the reason its
gate gives, instead of as a new healthy worker whose closed gate it would "correct" open.
"""

from __future__ import annotations

from healthcheck.policy.model import OUT_OF_ROTATION, Cause, State, WorkerHealth
from healthcheck.policy.observations import WearReport

PERSON = "person"


def hold_of(w: WorkerHealth) -> str:
    """The hold of a worker out of rotation (``QUARANTINED/operator``, ``QUARANTINED/wear/person``)."""
    return "/".join([w.state.value, w.cause.value, *([PERSON] if w.for_person else [])])


def adopted(report: WearReport) -> WorkerHealth | None:
    """The worker as its report's hold says, for a checker with no record of it; None unless
    its gate is closed by a checker (not by itself) with a hold this checker can read."""
    if not report.gate_closed or report.self_protected or not report.gate_hold:
        return None
    state, _, rest = report.gate_hold.partition("/")
    cause, _, person = rest.partition("/")
    if state not in State.__members__ or cause not in {c.value for c in Cause}:
        return None
    if State(state) not in OUT_OF_ROTATION:
        return None
    reason = report.gate_reason or "held out before this checker knew it"
    return WorkerHealth(name=report.worker, state=State(state), since=report.at,
                        last_seen=report.at, reason=reason, cause=Cause(cause),
                        queues=report.queues, for_person=reason if person == PERSON else "")
