"""Fault injection (``HOST_WEAR_INJECT``): wear a worker out on demand, for demos and tests.

A spec is comma-separated ``key=value`` pairs, e.g. ``cpu=97,fail_rate=0.5,slow=2.0``:

=================  ==========================================================================
``cpu``            reported CPU percent (value and peak)
``memory``         reported memory percent (value and peak)
``load``           reported load per core
``temperature``    reported temperature, Celsius
``open_files``     reported open files, percent of the limit
``power``          reported power draw, percent of the packages' power limit
``fail_rate``      probability (0-1) that a task fails with ``InjectedFailure``
``slow``           seconds added to every task (asleep: the worker is idle meanwhile)
``spin``           seconds of CPU burnt before every task does anything (a spinning pool: CPU
                   without progress, which is wear, where a busy worker's CPU is not)
``leak``           MiB every work-queue task allocates and never frees, in the pool process
                   that ran it (a real leak, with the traffic: resident memory grows until the
                   pool is restarted; probes do not leak)
``wrong_answers``  probability (0-1) that a result's scores are subtly wrong
=================  ==========================================================================

The spec lives in shared memory created by the worker's main process before it forks its pool,
so a control command received by the main process changes what the pool processes do at once.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import time
from dataclasses import dataclass, fields
from typing import Any

from workers.runtime import RUNTIME
from workers.sentiment import label

WEAR_KEYS = ("cpu", "memory", "load", "temperature", "open_files", "power")
_PROBABILITIES = ("fail_rate", "wrong_answers")
_SPEC_BYTES = 1024


class InjectedFailure(RuntimeError):
    """A task failure caused on purpose by ``fail_rate``."""


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


def install_board(spec: str) -> InjectionBoard:
    """Create the shared board (in the worker's main process, before the pool forks)."""
    RUNTIME.board = InjectionBoard(spec)
    return RUNTIME.board


def current() -> Injection:
    """The injection in force in this process (none outside a host worker)."""
    return RUNTIME.board.get() if RUNTIME.board is not None else Injection()


def before_task(injection: Injection, draw: float, sleep: Any, burn: Any = None) -> None:
    """What an injection does before a task runs: wait ``slow`` seconds, burn the CPU for
    ``spin`` seconds, fail at ``fail_rate``.

    Args:
        injection: the injection in force.
        draw: a uniform random number in [0, 1) for this task.
        sleep: the sleep function (``time.sleep``).
        burn: spins the CPU for so many seconds (``spin_for``).

    Raises:
        InjectedFailure: with probability ``fail_rate``.
    """
    if injection.slow:
        sleep(injection.slow)
    if injection.spin:
        (burn or spin_for)(injection.spin)

    if injection.fail_rate and draw < injection.fail_rate:
        raise InjectedFailure(f"injected failure (fail_rate={injection.fail_rate:g})")


#: What ``leak`` allocated in this process, held until the process ends.
_LEAKED: list[bytes] = []


def leak(mib: float) -> None:
    """Allocate ``mib`` MiB in this process and keep it (touched: resident at once)."""
    _LEAKED.append(b"\x01" * int(mib * 2**20))


def spin_for(seconds: float) -> None:
    """Burn ``seconds`` of this thread's CPU time, doing nothing (on a busy machine that takes
    longer than ``seconds`` of wall time: the CPU is what a spinning pool costs)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def distort(result: dict[str, Any], injection: Injection, draw: float) -> dict[str, Any]:
    """A subtly wrong copy of an analysed result, with probability ``wrong_answers``.

    The compound score moves by 0.1 (towards zero past ±0.9), enough for a known-answer probe
    to notice and small enough to look plausible.
    """
    if not injection.wrong_answers or draw >= injection.wrong_answers:
        return result
    if result.get("status") != "analysed":
        return result
    compound = float(result["compound"])
    shifted = round(compound - 0.1 if compound > 0.9 else compound + 0.1, 4)
    return {**result, "compound": shifted, "label": label(shifted)}
