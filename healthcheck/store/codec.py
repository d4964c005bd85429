"""A worker's health as stored: plain JSON-ready data and back."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from healthcheck.policy import Cause, State, WorkerHealth


def to_dict(w: WorkerHealth) -> dict[str, Any]:
    """A worker's health as plain JSON-ready data."""
    data = dataclasses.asdict(w)
    data["state"], data["cause"] = w.state.value, w.cause.value
    data["resume"] = w.resume.value if w.resume else None
    data["queues"] = list(w.queues)
    data["consuming"] = None if w.consuming is None else list(w.consuming)
    return data


def from_dict(data: Mapping[str, Any]) -> WorkerHealth:
    """The inverse of ``to_dict``; unknown fields are ignored.

    Raises:
        ValueError: a field has an impossible value.
    """
    known = {f.name for f in dataclasses.fields(WorkerHealth)}
    values = {k: v for k, v in data.items() if k in known}
    values["state"] = State(values.get("state", "HEALTHY"))
    values["cause"] = Cause(values.get("cause", ""))
    values["resume"] = State(values["resume"]) if values.get("resume") else None
    values["queues"] = tuple(values.get("queues", ()))
    values["recycles"] = tuple(float(t) for t in values.get("recycles", ()))
    values["busy_metrics"] = tuple(str(m) for m in values.get("busy_metrics", ()))
    consuming = values.get("consuming")
    values["consuming"] = None if consuming is None else tuple(consuming)
    return WorkerHealth(**values)


class UnfencedWrites:
    """``save`` and ``append`` for tools and tests: a store's ``commit`` without a fence."""

    def commit(self, workers: Iterable[WorkerHealth], records: Iterable[Mapping[str, Any]] = (),
               reports: Mapping[str, Mapping[str, Any]] | None = None, fence: str = "") -> None:
        raise NotImplementedError

    def save(self, workers: Iterable[WorkerHealth]) -> None:
        self.commit(workers)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.commit((), records)


def recorded_at(record: Mapping[str, Any]) -> float | None:
    """When an audit record says it happened (None: it does not say, or not as a number)."""
    at = record.get("at")
    return float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None
