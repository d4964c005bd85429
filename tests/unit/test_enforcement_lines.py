"""A command that fails in a way nobody foresaw leaves its worker's line: the commands after it
are sent. Seed 55 of the nemesis (20 min) found a worker left drained for good while the
checker said HEALTHY: its admit, on a connection the broker had closed by restarting, raised
the broker client's own error, which left the command first in the worker's line, where every
later command and correction waited behind it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from healthcheck.actuator import InMemoryActuator, Reply
from healthcheck.enforcement import Enforcer
from healthcheck.lease import Lead
from healthcheck.ledger import Ledger
from healthcheck.metrics import CheckerMetrics
from healthcheck.policy import Fleet, HealthPolicy, PolicyConfig
from healthcheck.store.memory import InMemoryHealthStore


class FailsOnce(InMemoryActuator):
    """Raises what a broker client raises on a closed connection, the first time only."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def admit(self, worker: str, reason: str) -> Reply:
        if not self.failed:
            self.failed = True
            raise ConnectionError("Connection closed by server.")
        return super().admit(worker, reason)


def enforcer(actuator: InMemoryActuator, pool: Any) -> Enforcer:
    store = InMemoryHealthStore()
    lead, ledger = Lead(None), Ledger(store)
    metrics = CheckerMetrics(lambda: Fleet(HealthPolicy(PolicyConfig())), lambda: {})
    return Enforcer(store, actuator, lead, ledger, lambda: ledger.flush({}, "", None), metrics,
                    clock=time.time, pool=pool)


def settled(e: Enforcer, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while e.in_flight and time.monotonic() < end:
        time.sleep(0.01)
    e.settle()


def test_an_unforeseen_error_does_not_wedge_the_workers_line() -> None:
    actuator = FailsOnce()
    with ThreadPoolExecutor(2) as pool:
        e = enforcer(actuator, pool)
        e.admit("w1", "operator: restore")
        settled(e)
        assert actuator.failed and e.in_flight == 0  # the failed admit left the line
        e.admit("w1", "correction: HEALTHY")
        settled(e)
    assert actuator.sent == [("host_admit", "w1", "correction: HEALTHY")]


def test_without_a_pool_the_error_is_a_command_not_answered() -> None:
    actuator = FailsOnce()
    e = enforcer(actuator, None)
    e.admit("w1", "operator: restore")  # no exception escapes into the checker's loop
    e.admit("w1", "again")
    assert actuator.sent == [("host_admit", "w1", "again")]
