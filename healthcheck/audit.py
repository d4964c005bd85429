"""The audit log's record: one type, one parser, for the checker that writes it and every
reader (``fleet history``, the demo, the fleet page, a checker resuming).

Stored as JSON objects with the keys below; a record from an older or newer checker parses
as far as it can (unknown keys ignored, a wrong-typed field left out), and one that is not an
object with a kind, a worker and a time parses as None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from healthcheck.policy import Transition


class Kind(StrEnum):
    """What a record is about."""

    JOINED = "joined"  # a worker was heard from for the first time
    TRANSITION = "transition"  # a change of state
    HELD = "held"  # the guard kept a worker in rotation the policy would eject
    LEADER = "leader"  # a checker took the lease
    # Written with the gate key, in one store step: whatever happens to the checker next, a
    # drain or admit that took effect has its record. The worker's answer follows, or not.
    DRAIN_ORDERED = "drain_ordered"  # the gate key closed: no work-queue task starts from now
    ADMIT_ORDERED = "admit_ordered"  # the gate key opened
    DRAIN_CONFIRMED = "drain_confirmed"  # a worker confirmed it left rotation
    DRAIN_UNCONFIRMED = "drain_unconfirmed"  # ... or did not answer, or refused
    ADMIT_CONFIRMED = "admit_confirmed"  # a worker confirmed it is back in rotation
    ADMIT_UNCONFIRMED = "admit_unconfirmed"  # ... or did not answer, or refused
    RECYCLED = "recycled"  # a quarantined worker restarted its pool at the checker's word
    RECYCLE_UNCONFIRMED = "recycle_unconfirmed"  # ... or did not answer, or refused

    @property
    def is_drain(self) -> bool:
        return self in (Kind.DRAIN_CONFIRMED, Kind.DRAIN_UNCONFIRMED)


#: Optional fields and the types they must have to be kept when parsed.
_FIELDS: dict[str, tuple[type, ...]] = {
    "state": (str,), "held": (str,), "reason": (str,), "from": (str,), "to": (str,),
    "cause": (str,), "automatic": (bool,), "enforced": (bool,), "evidence": (dict,),
    "checker": (str,), "epoch": (int,), "verdict_at": (int, float), "consuming": (list,),
    "sent_at": (int, float), "received_at": (int, float), "inflight": (int,),
    "confirm_s": (int, float), "correction": (bool,), "recycle": (bool,),
    "restarted": (int,), "error": (str,),
}


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One record. ``at`` is the checker's wall-clock time (``healthcheck.policy.model``);
    ``fields`` holds the kind's own fields, by their stored keys (``_FIELDS``)."""

    kind: Kind
    worker: str | None
    at: float
    fields: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """One of the kind's fields."""
        return self.fields.get(key, default)

    @property
    def cause(self) -> str:
        return str(self.fields.get("cause", ""))

    @property
    def to_state(self) -> str:
        return str(self.fields.get("to", ""))

    def to_dict(self) -> dict[str, Any]:
        """As stored."""
        return {"kind": self.kind.value, "worker": self.worker, "at": self.at, **self.fields}

    def with_epoch(self, epoch: int | None) -> AuditRecord:
        """The same record, stamped with the leader's epoch (None: no lease)."""
        if epoch is None:
            return self
        return AuditRecord(self.kind, self.worker, self.at, {**self.fields, "epoch": epoch})

    @classmethod
    def parse(cls, data: Any) -> AuditRecord | None:
        """A stored record, or None when it is not one."""
        if not isinstance(data, Mapping):
            return None
        try:
            kind = Kind(str(data.get("kind")))
        except ValueError:
            return None
        worker, at = data.get("worker"), data.get("at")
        if (worker is not None and not isinstance(worker, str)) or isinstance(at, bool) \
                or not isinstance(at, (int, float)):
            return None
        kept = {k: v for k, v in data.items() if k in _FIELDS and isinstance(v, _FIELDS[k])
                and not (isinstance(v, bool) and bool not in _FIELDS[k])}
        return cls(kind, worker, float(at), kept)

    # --- the records the checker writes -------------------------------------------------

    @classmethod
    def transition(cls, t: Transition) -> AuditRecord:
        return cls(Kind.TRANSITION, t.worker, t.at, {
            "from": t.from_state.value, "to": t.to_state.value, "reason": t.reason,
            "cause": t.cause.value, "automatic": t.automatic, "enforced": t.enforced,
            "evidence": dict(t.evidence), **({"recycle": True} if t.recycle else {})})

    @classmethod
    def joined(cls, worker: str, at: float, state: str) -> AuditRecord:
        return cls(Kind.JOINED, worker, at, {"state": state})

    @classmethod
    def held(cls, worker: str, at: float, state: str, held: str, reason: str) -> AuditRecord:
        return cls(Kind.HELD, worker, at, {"state": state, "held": held, "reason": reason})

    @classmethod
    def ordered(cls, kind: Kind, worker: str, at: float, reason: str,
                correction: bool) -> AuditRecord:
        return cls(kind, worker, at, {"reason": reason, "correction": correction})

    @classmethod
    def leader(cls, at: float, checker: str, epoch: int) -> AuditRecord:
        return cls(Kind.LEADER, None, at, {"checker": checker, "epoch": epoch})


def parse_all(records: Iterable[Any]) -> list[AuditRecord]:
    """The records that parse, in order."""
    return [r for r in map(AuditRecord.parse, records) if r is not None]
