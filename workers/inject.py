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
``stray``          processes every work-queue task starts and leaves running (asleep) after it
                   ends: runaway children, which a restart of the pool ends (probes start none)
``wrong_answers``  probability (0-1) that a result's scores are subtly wrong
=================  ==========================================================================

The spec lives in shared memory created by the worker's main process before it forks its pool,
so a control command received by the main process changes what the pool processes do at once.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

from workers.runtime import RUNTIME
from workers.sentiment import label
from workers.shared import Injection, InjectionBoard

WEAR_KEYS = ("cpu", "memory", "load", "temperature", "open_files", "power")


class InjectedFailure(RuntimeError):
    """A task failure caused on purpose by ``fail_rate``."""


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


#: The processes ``stray`` started from this process, never waited for.
_STRAYS: list[subprocess.Popen[bytes]] = []


def stray(count: float) -> None:
    """Start ``count`` processes that sleep for an hour and leave them running."""
    for _ in range(int(count)):
        _STRAYS.append(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


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
