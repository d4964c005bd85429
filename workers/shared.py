"""The state a worker's main process shares with its pool: created before the pool forks.

Each type here keeps its value in memory the fork shares (``multiprocessing.RawValue`` and
``RawArray``), so a change the main process makes (a drain command, an injection) is seen by
every pool process at once. ``workers.runtime.RUNTIME`` holds the instances; these modules
import nothing of the worker's own.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import time
from dataclasses import dataclass, fields
from typing import Any

_PROBABILITIES = ("fail_rate", "wrong_answers")
_SPEC_BYTES = 1024


class Gate:
    """Open or closed, with the reason and time of the last change (shared with the pool)."""

    def __init__(self, open_: bool = True, reason: str = "clean start") -> None:
        self._open: Any = multiprocessing.RawValue(ctypes.c_bool, open_)
        self.reason = reason
        #: What the checker held it out as (``STATE/cause``; "" when open or not said).
        self.hold = ""
        self.changed_at = time.time()
        self.self_protected: str | None = None

    def is_open(self) -> bool:
        """True while work-queue tasks may start."""
        return bool(self._open.value)

    def close(self, reason: str, hold: str = "") -> None:
        """Refuse work-queue tasks from now on (``hold``: what the checker holds it out as)."""
        self._open.value = False
        self.reason, self.changed_at = reason, time.time()
        self.hold = hold or self.hold

    def open(self, reason: str) -> None:
        """Accept work-queue tasks again."""
        self._open.value = True
        self.reason, self.changed_at = reason, time.time()
        self.self_protected = None
        self.hold = ""


@dataclass(frozen=True, slots=True)
class Injection:
    """A parsed injection spec; all None means no injection."""

    cpu: float | None = None
    memory: float | None = None
    load: float | None = None
    temperature: float | None = None
    open_files: float | None = None
    power: float | None = None
    fail_rate: float | None = None
    slow: float | None = None
    spin: float | None = None
    leak: float | None = None
    stray: float | None = None
    wrong_answers: float | None = None

    @classmethod
    def parse(cls, spec: str) -> Injection:
        """Parse ``key=value,...``.

        Raises:
            ValueError: an unknown key, a value that is not a number, or out of range.
        """
        values: dict[str, float] = {}
        known = {f.name for f in fields(cls)}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise ValueError(f"{part!r}: expected one of {', '.join(sorted(known))} as key=value")
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{key}={raw!r}: not a number") from None
            if value < 0 or (key in _PROBABILITIES and value > 1):
                raise ValueError(f"{key}={raw}: out of range")
            values[key] = value
        return cls(**values)

    @property
    def active(self) -> bool:
        """True when anything is injected."""
        return any(getattr(self, f.name) is not None for f in fields(self))

    def spec(self) -> str:
        """The canonical spec string."""
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self)
                        if getattr(self, f.name) is not None)

    def as_dict(self) -> dict[str, float]:
        """Only the injected keys."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


class InjectionBoard:
    """The current injection, in memory shared between a worker and its pool processes."""

    def __init__(self, spec: str = "") -> None:
        self._buf: Any = multiprocessing.RawArray(ctypes.c_char, _SPEC_BYTES)
        self._version: Any = multiprocessing.RawValue(ctypes.c_ulong, 0)
        self._cached: tuple[int, Injection] = (-1, Injection())
        self.set(spec)

    def set(self, spec: str) -> Injection:
        """Validate and publish a new spec ("" clears it).

        Raises:
            ValueError: the spec does not parse, or is too long.
        """
        injection = Injection.parse(spec)
        data = injection.spec().encode()
        if len(data) >= _SPEC_BYTES:
            raise ValueError("injection spec too long")
        # A sequence lock: odd while writing, so readers never parse a half-written spec.
        self._version.value += 1
        self._buf.value = data
        self._version.value += 1
        return injection

    def get(self) -> Injection:
        """The current injection (parsed once per change)."""
        while True:
            before = self._version.value
            if self._cached[0] == before:
                return self._cached[1]
            data = self._buf.value
            if before % 2 == 0 and self._version.value == before:
                self._cached = (before, Injection.parse(data.decode()))
                return self._cached[1]
