"""The audit log loses nothing an action did, whatever instant its leader dies.

A leading checker on the real Redis store is stopped dead at each step of a drain's path — the
verdict stored, the gate key written and the command on its way, the worker having applied it
— and a second checker takes the lease. Every change the worker's gate went through (the key
in the store, the worker's own flag) must have its record in the audit log, and the new leader
must finish what is unfinished without ordering a drain twice.

The worker here is a stand-in that keeps a gate and reports it like a real one (real workers
answer the same commands in tests/e2e/test_routing.py); the store, the scripts and the lease
are real.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from broker_config import keys
from healthcheck.actuator import Reply
from healthcheck.enforcement import Enforcer
from healthcheck.lease import Lead, Leadership
from healthcheck.ledger import Ledger
from healthcheck.metrics import CheckerMetrics
from healthcheck.policy import Fleet, HealthPolicy, PolicyConfig, State
from healthcheck.service import Checker
from healthcheck.store import RedisHealthStore


class Died(BaseException):
    """The checker process ends here: nothing after this line of its code runs."""


class StandInWorker:
    """A worker's gate as the drain and admit commands change it, reported like a real one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = "open"
        self.applied: list[str] = []

    def apply(self, command: str) -> Reply:
        if command != "host_recycle":
            self.gate = "closed" if command == "host_drain" else "open"
        self.applied.append(command)
        return Reply(self.name, command, 0.0, True, {"ok": True, "gate": self.gate})

    def report(self, cpu: float = 20.0) -> dict[str, Any]:
        return {"type": "worker-wear", "hostname": self.name, "seq": 1,
                "wear": {"cpu_percent": [cpu, cpu], "memory_percent": [40, 40]},
                "tasks": {"completed": 5, "failed": 0, "consecutive_failures": 0},
                "inflight": 0, "queues": ["tweets"], "gate": self.gate,
                "consuming": ["tweets"] if self.gate == "open" else []}


class DyingActuator:
    """Delivers commands to stand-in workers; dies before or after the worker applies one."""

    def __init__(self, workers: dict[str, StandInWorker], die: str | None = None) -> None:
        self.workers, self.die = workers, die
        self.epoch = 0
        self.shard: int | None = None
        self.undelivered: list[tuple[str, str]] = []

    def drain(self, worker: str, reason: str, hold: str = "") -> Reply:
        return self._send("host_drain", worker)

    def admit(self, worker: str, reason: str) -> Reply:
        return self._send("host_admit", worker)

    def recycle(self, worker: str, reason: str) -> Reply:
        return self._send("host_recycle", worker)

    def _send(self, command: str, worker: str) -> Reply:
        if self.die == "sent":  # on its way: the worker applies it after the checker is gone
            self.undelivered.append((command, worker))
            raise Died
        reply = self.workers[worker].apply(command)
        if self.die == "applied":
            raise Died
        return reply


class DyingStore(RedisHealthStore):
    """The real store, but the checker dies the moment it would write a gate key."""

    die_at_gate = False

    def close_gate(self, *args: Any, **kwargs: Any) -> None:
        if self.die_at_gate:
            raise Died
        super().close_gate(*args, **kwargs)

    def open_gate(self, *args: Any, **kwargs: Any) -> None:
        if self.die_at_gate:
            raise Died
        super().open_gate(*args, **kwargs)


@pytest.fixture
def client(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    yield redis_client


def leader(store: RedisHealthStore, actuator: DyingActuator, name: str) -> Checker:
    checker = Checker.from_store(store, actuator, PolicyConfig(), seed=1,
                                 leadership=Leadership(store, name, ttl_s=30))
    checker.lead()
    assert checker.leading(), f"{name} should lead"
    return checker


def gate_records(store: RedisHealthStore, worker: str) -> list[dict[str, Any]]:
    return [r for r in store.history(worker) if r["kind"].startswith(("drain", "admit"))]


@pytest.mark.parametrize("step", ["verdict_stored", "sent", "applied", None])
def test_the_leader_killed_at_each_step_of_a_drain_leaves_its_record(
        client: redis.Redis, step: str | None) -> None:
    workers = {n: StandInWorker(n) for n in ("w1", "w2", "w3", "w4")}
    store = DyingStore(client)
    a = leader(store, DyingActuator(workers, die=step if step != "verdict_stored" else None), "a")
    for w in workers.values():
        a.handle(w.report(), a.clock())
    a.tick(a.clock())
    # When w1 reports a hard breach and a dies at ``step`` of the drain that follows
    store.die_at_gate = step == "verdict_stored"
    a.handle(workers["w1"].report(cpu=99), a.clock())
    died = False
    try:
        a.tick(a.clock())
    except Died:
        died = True
    assert died == (step is not None)
    store.die_at_gate = False
    verdict = store.get("w1")
    assert verdict is not None and verdict.state is State.DRAINING  # stored before any act
    for command, worker in a.actuator.undelivered:  # type: ignore[attr-defined]
        workers[worker].apply(command)  # what was on its way arrives after all
    key_closed = client.exists(keys.gate("w1")) == 1
    # Then every change that took effect has its record, stamped with a's epoch
    records = gate_records(store, "w1")
    if key_closed or workers["w1"].gate == "closed":
        assert [r["kind"] for r in records][:1] == ["drain_ordered"], records
        assert records[0]["epoch"] == a.standing.epoch
        assert records[0]["correction"] is False
    else:
        assert step == "verdict_stored" and records == []  # nothing took effect, nothing said
    # When b takes the lease (a's ran out) and hears the fleet
    client.delete(keys.LEADER)
    b = leader(store, DyingActuator(workers), "b")
    for _ in range(2):
        for w in workers.values():
            b.handle(w.report(cpu=99 if w.name == "w1" else 20.0), b.clock())
        b.tick(b.clock())
    # Then the drain is in force on both ends, ordered once: by b where it had never taken
    # effect, else by a alone; and its record is there
    assert client.exists(keys.gate("w1")) == 1 and workers["w1"].gate == "closed"
    records = gate_records(store, "w1")
    [order] = [r for r in records if r["kind"] == "drain_ordered"]
    by_b = step == "verdict_stored"
    assert order["correction"] is by_b, records
    assert order["epoch"] == (b if by_b else a).standing.epoch
    assert workers["w1"].applied == ["host_drain"]  # the worker was told once
    assert not [r for r in store.history() if r["kind"].startswith(("drain", "admit"))
                and r["worker"] != "w1"]


@pytest.mark.parametrize("step", ["sent", "applied"])
def test_an_admit_killed_midway_leaves_its_record(client: redis.Redis, step: str) -> None:
    """The other direction: the gate key opened, the leader dead before the answer."""
    store = RedisHealthStore(client)
    lease = Leadership(store, "a", ttl_s=30)
    lease.step()
    workers = {"w1": StandInWorker("w1")}
    workers["w1"].gate = "closed"
    actuator = DyingActuator(workers, die=step)
    lead = Lead(lease)
    ledger = Ledger(store)
    enforcer = Enforcer(store, actuator, lead, ledger, lambda: ledger.flush({}, lead.fence,
                                                                            lead.epoch),
                        CheckerMetrics(lambda: Fleet(HealthPolicy(PolicyConfig())),
                                       lambda: {}), clock=lambda: 1000.0)
    client.set(keys.gate("w1"), "quarantined")
    with pytest.raises(Died):
        enforcer.admit("w1", "probation passed")
    assert client.exists(keys.gate("w1")) == 0
    [record] = gate_records(store, "w1")
    assert (record["kind"], record["reason"], record["epoch"]) == (
        "admit_ordered", "probation passed", lease.epoch)
