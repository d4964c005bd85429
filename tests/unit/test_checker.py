"""The checker service with in-memory store and actuator: explicit clock, no I/O, no sleeps."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from healthcheck.actuator import InMemoryActuator
from healthcheck.errors import StoreUnavailable
from healthcheck.policy import PolicyConfig, State, WorkerHealth
from healthcheck.policy.model import Cause
from healthcheck.service import Checker
from healthcheck.store import InMemoryHealthStore
from tests.support.polling import wait_until


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wear_event(worker: str, cpu: float = 20.0, gate: str = "open", inflight: int = 0,
               consuming: tuple[str, ...] = ("tweets",), **extra: Any) -> dict[str, Any]:
    return {"type": "worker-wear", "hostname": worker, "seq": 1,
            "wear": {"cpu_percent": [cpu, cpu], "memory_percent": [40, 40]},
            "tasks": {"completed": 5, "failed": 0, "consecutive_failures": 0},
            "inflight": inflight, "queues": ["tweets"], "gate": gate,
            "consuming": list(consuming), **extra}


def make(workers: dict[str, WorkerHealth] | None = None, enforce: bool = True,
         store: InMemoryHealthStore | None = None) -> tuple[Checker, InMemoryActuator, Clock,
                                                             InMemoryHealthStore]:
    store = store or InMemoryHealthStore()
    if workers:
        store.save(workers.values())
    actuator, clock = InMemoryActuator(), Clock()
    checker = Checker.from_store(store, actuator, PolicyConfig(enforce=enforce), clock=clock,
                                 seed=1)
    return checker, actuator, clock, store


def sample(checker: Checker, name: str, **labels: str) -> float | None:
    return checker.metrics.registry.get_sample_value(name, labels)


class TestChecker:
    def test_hard_breach_drains_with_a_confirmed_command(self) -> None:
        """A 99% CPU report: DRAINING at the next tick, host_drain sent to that worker alone."""
        checker, actuator, clock, store = make()
        for w in ("w1", "w2", "w3", "w4"):
            checker.handle(wear_event(w), clock())
        clock.now += 1
        checker.handle(wear_event("w1", cpu=99, inflight=1), clock())
        assert actuator.sent == []  # proposals wait for the tick
        clock.now += 0.25
        checker.tick(clock())
        assert actuator.sent == [("host_drain", "w1", actuator.sent[0][2])]
        assert "cpu_percent" in actuator.sent[0][2]
        assert store.load()["w1"].state is State.DRAINING
        assert "cpu_percent" in store.gates["w1"]  # the verdict took effect in the store first
        kinds = [r["kind"] for r in store.history("w1")]
        assert kinds == ["joined", "transition", "drain_ordered", "drain_confirmed"]
        assert sample(checker, "host_worker_state", worker="w1", state="DRAINING") == 1
        assert sample(checker, "host_queue_healthy_consumers", queue="tweets") == 3
        assert sample(checker, "host_detection_seconds_count") == 1
        assert sample(checker, "host_drain_seconds_count") == 1

    def test_dry_run_decides_but_never_acts(self) -> None:
        """With enforcement off the transition is recorded as not enforced and nothing is sent."""
        checker, actuator, clock, store = make(enforce=False)
        for w in ("w1", "w2", "w3", "w4"):
            checker.handle(wear_event(w), clock())
        checker.handle(wear_event("w1", cpu=99, inflight=1), clock())
        checker.tick(clock())
        assert actuator.sent == []
        record = store.history("w1")[-1]
        assert (record["to"], record["enforced"]) == ("DRAINING", False)
        assert sample(checker, "host_control_commands_total", command="drain",
                      outcome="dry_run") == 1

    def test_resume_from_store_redrains_nobody(self) -> None:
        """A restarted checker keeps stored states and sends nothing while gates agree."""
        stored = {"w1": WorkerHealth("w1", State.QUARANTINED, cause=Cause.WEAR, since=900,
                                     last_seen=900, backoff_until=2000, queues=("tweets",)),
                  "w2": WorkerHealth("w2", State.HEALTHY, since=900, last_seen=900,
                                     queues=("tweets",))}
        checker, actuator, clock, _ = make(stored)
        checker.handle(wear_event("w1", gate="closed", consuming=()), clock())
        checker.handle(wear_event("w2"), clock())
        checker.tick(clock())
        assert checker.fleet.workers["w1"].state is State.QUARANTINED
        assert actuator.sent == []

    def test_correction_drains_a_quarantined_worker_that_consumes(self) -> None:
        """A quarantined worker reporting an open gate is drained again (rate-limited)."""
        stored = {"w1": WorkerHealth("w1", State.QUARANTINED, cause=Cause.WEAR, since=900,
                                     last_seen=900, backoff_until=2000, queues=("tweets",))}
        checker, actuator, clock, _ = make(stored)
        checker.handle(wear_event("w1", gate="open"), clock())
        checker.handle(wear_event("w1", gate="open"), clock() + 0.5)
        assert [c[0] for c in actuator.sent] == ["host_drain"]
        checker.handle(wear_event("w1", gate="open"), clock() + 2.5)
        assert [c[0] for c in actuator.sent] == ["host_drain", "host_drain"]

    def test_a_report_sampled_before_the_drain_was_answered_corrects_nothing(self) -> None:
        """A report the worker sampled before it answered the drain, heard after the answer,
        still shows the gate open: it is not a reason to drain again; a later one is. Both
        times are the worker's own clock (here an hour off the checker's)."""
        store, clock = InMemoryHealthStore(), Clock()
        actuator = InMemoryActuator(clock=lambda: clock.now + 3600)
        checker = Checker.from_store(store, actuator, PolicyConfig(), clock=clock, seed=1)
        for w in ("w1", "w2", "w3", "w4"):
            checker.handle(wear_event(w), clock())
        clock.now += 1
        checker.handle(wear_event("w1", cpu=99, inflight=1), clock())
        clock.now += 0.25
        checker.tick(clock())  # the drain, answered at clock.now + 3600 by the worker's clock
        answered = clock.now + 3600
        assert [c[0] for c in actuator.sent] == ["host_drain"]
        clock.now += 5  # past reconcile_s: only the report's age can hold a correction back
        checker.handle(wear_event("w1", cpu=99, gate="open", at=answered - 0.1), clock())
        assert [c[0] for c in actuator.sent] == ["host_drain"]
        checker.handle(wear_event("w1", cpu=99, gate="open", at=answered + 0.1), clock())
        assert [c[0] for c in actuator.sent] == ["host_drain", "host_drain"]
        assert [r["verdict_at"] for r in store.history("w1")
                if r["kind"] == "drain_confirmed"][1] is None  # the second is a correction

    def test_a_stale_report_heard_before_the_answer_is_settled_corrects_nothing(self) -> None:
        """On the pool, a drain's answer leaves the worker's line before the loop settles it;
        a report sampled before that answer, heard in between, still corrects nothing."""

        class Inline(ThreadPoolExecutor):  # runs what is submitted at once, in the caller
            def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
                fn(*args, **kwargs)

        store, clock = InMemoryHealthStore(), Clock()
        actuator = InMemoryActuator(clock=lambda: clock.now + 3600)
        with Inline() as pool:
            checker = Checker.from_store(store, actuator, PolicyConfig(), clock=clock, seed=1,
                                         act_pool=pool)
            for w in ("w1", "w2", "w3", "w4"):
                checker.handle(wear_event(w), clock())
            clock.now += 1
            checker.handle(wear_event("w1", cpu=99, inflight=1), clock())
            clock.now += 0.25
            checker.tick(clock())  # drained on the "pool"; not settled yet
            answered = clock.now + 3600
            assert checker.enforcer.in_flight == 0
            clock.now += 5
            checker.handle(wear_event("w1", cpu=99, gate="open", at=answered - 0.1), clock())
            assert [c[0] for c in actuator.sent] == ["host_drain"]

    def test_correction_admits_a_healthy_worker_with_a_closed_gate(self) -> None:
        """HEALTHY but gated (not self-protected): admitted; a self-protected one is left alone."""
        checker, actuator, clock, store = make()
        store.close_gate("w1", "left over")
        checker.handle(wear_event("w1", gate="closed", consuming=()), clock())
        assert actuator.sent[0][:2] == ("host_admit", "w1")
        assert "w1" not in store.gates
        checker.handle(wear_event("w2", gate="closed", consuming=(), memory=0,
                                  self_protected="memory 99"), clock())
        assert all(c[1] != "w2" or c[0] != "host_admit" for c in actuator.sent)

    def test_self_protection_is_recorded_as_an_exempt_ejection(self) -> None:
        """A worker that closed its own gate goes DRAINING at once, cause self."""
        checker, _, clock, _ = make()
        for w in ("w1", "w2", "w3", "w4"):
            checker.handle(wear_event(w), clock())
        checker.handle(wear_event("w1", gate="closed", consuming=(), inflight=1,
                                  self_protected="memory_percent 99"), clock())
        w1 = checker.fleet.workers["w1"]
        assert (w1.state, w1.cause) == (State.DRAINING, Cause.SELF)

    def test_store_outage_keeps_records_until_it_returns(self) -> None:
        """When the store fails, nothing is lost: records are written on a later pass."""

        class Flaky(InMemoryHealthStore):
            down = False

            def commit(self, *args: Any, **kwargs: Any) -> None:
                if self.down:
                    raise StoreUnavailable("down")
                super().commit(*args, **kwargs)

            def close_gate(self, *args: Any, **kwargs: Any) -> None:
                if self.down:
                    raise StoreUnavailable("down")
                super().close_gate(*args, **kwargs)

        store = Flaky()
        checker, _, clock, _ = make(store=store)
        for w in ("w1", "w2", "w3", "w4"):
            checker.handle(wear_event(w), clock())
        checker.tick(clock())  # joins are stored with the next tick's commit
        store.down = True
        checker.handle(wear_event("w1", cpu=99, inflight=1), clock())
        checker.tick(clock())
        assert [r["kind"] for r in store.history("w1")] == ["joined"]
        store.down = False
        checker.tick(clock() + 0.3)
        # the order's record, kept while the gate key could not be written, comes too
        assert [r["kind"] for r in store.history("w1")] == ["joined", "transition",
                                                            "drain_ordered", "drain_confirmed"]

    @pytest.mark.parametrize("event", [
        {"type": "worker-wear"},
        {"type": "worker-wear", "hostname": "w1", "wear": {"cpu_percent": "hot"}},
        {"type": "worker-wear", "hostname": "w1", "tasks": {"completed": "many"}},
        {"type": "task-succeeded", "hostname": "w1"},
        {"hostname": 5},
    ])
    def test_malformed_events_are_ignored(self, event: dict[str, Any]) -> None:
        """Events come from the network: a malformed one changes nothing and raises nothing."""
        checker, actuator, clock, _ = make()
        checker.handle(event, clock())
        assert checker.fleet.workers == {}
        assert actuator.sent == []


class TestOperatorRequests:
    def ask(self, checker: Checker, store: InMemoryHealthStore, secret: str = "",
            **request: Any) -> dict[str, Any]:
        from broker_config.signing import sign

        request.setdefault("id", f"r{len(store.replies)}")
        store.requests.append(sign(secret, f"operator:{request['action']}", request, "checker",
                                   checker.clock()))
        checker.tick(checker.clock())
        return store.replies[request["id"]]

    def test_drain_restore_cycle(self) -> None:
        """drain: MAINTENANCE and a drain; restore: PROBATION and an admit; both audited."""
        checker, actuator, clock, store = make()
        checker.handle(wear_event("w1"), clock())
        answer = self.ask(checker, store, action="drain", worker="w1", reason="fan swap")
        assert (answer["ok"], answer["state"]) == (True, "MAINTENANCE")
        assert actuator.sent[-1][:2] == ("host_drain", "w1")
        for _ in range(5):  # the checker never re-admits MAINTENANCE on its own
            clock.now += 30
            checker.handle(wear_event("w1", gate="closed", consuming=()), clock())
            checker.tick(clock())
        assert checker.fleet.workers["w1"].state is State.MAINTENANCE
        answer = self.ask(checker, store, action="restore", worker="w1", reason="done")
        assert answer["state"] == "PROBATION"
        assert actuator.sent[-1][:2] == ("host_admit", "w1")
        reasons = [r.get("reason") for r in store.history("w1") if r["kind"] == "transition"]
        assert reasons == ["operator: fan swap", "operator: done"]

    def test_restore_of_an_automatic_quarantine_needs_force(self) -> None:
        """A worker the checker quarantined is not restored by hand without --force."""
        stored = {"w1": WorkerHealth("w1", State.QUARANTINED, cause=Cause.PROBE, since=900,
                                     last_seen=900, backoff_until=2000, queues=("tweets",))}
        checker, _, _, store = make(stored)
        answer = self.ask(checker, store, action="restore", worker="w1", reason="x")
        assert answer["ok"] is False and "--force" in answer["error"]
        answer = self.ask(checker, store, action="restore", worker="w1", reason="x", force=True)
        assert answer["state"] == "HEALTHY"

    def test_unknown_worker_and_forged_requests(self) -> None:
        """Unknown workers are named; with a secret, unsigned or forged requests are refused."""
        store = InMemoryHealthStore()
        checker = Checker.from_store(store, InMemoryActuator(), PolicyConfig(), clock=Clock(),
                                     seed=1, secret="k")
        checker.handle(wear_event("w1"), checker.clock())
        assert self.ask(checker, store, secret="k", action="drain", worker="nope",
                        reason="x")["code"] == "unknown_worker"
        assert self.ask(checker, store, action="drain", worker="w1",
                        reason="x")["error"] == "refused: unsigned"
        assert self.ask(checker, store, secret="other", action="drain", worker="w1",
                        reason="x")["error"] == "refused: forged"
        assert checker.fleet.workers["w1"].state is State.HEALTHY


    def test_a_request_replayed_to_a_restarted_checker_is_refused(self) -> None:
        """Operators' nonces outlive the checker: a new one refuses the captured request."""
        from broker_config.signing import sign
        from tests.unit.test_signing import MemoryNonces

        store, nonces, clock = InMemoryHealthStore(), MemoryNonces(), Clock()
        first = Checker.from_store(store, InMemoryActuator(), PolicyConfig(), clock=clock, seed=1,
                                   secret="k", nonces=nonces)
        first.handle(wear_event("w1"), clock())
        captured = sign("k", "operator:quarantine", {"id": "r1", "action": "quarantine",
                                                     "worker": "w1", "reason": "x"},
                        "checker", clock())
        store.requests.append(dict(captured))
        first.tick(clock())
        assert store.replies["r1"]["ok"] is True
        again = Checker.from_store(store, InMemoryActuator(), PolicyConfig(), clock=clock,
                                   seed=1, secret="k", nonces=nonces)
        store.requests.append({**captured, "id": "r1"})
        store.replies.pop("r1")
        again.tick(clock())
        assert store.replies["r1"]["error"] == "refused: replayed"


class TestRefusalMetrics:
    def test_refusals_reported_by_workers_are_exported(self) -> None:
        """Workers' refused commands show as host_control_commands_total{outcome=refused_*}."""
        checker, _, clock, _ = make()
        checker.handle(wear_event("w1", control_refused={"host_drain:forged": 2,
                                                         "shutdown:disabled": 1}), clock())
        checker.handle(wear_event("w2", control_refused={"host_drain:forged": 1}), clock())
        value = checker.metrics.registry.get_sample_value
        assert value("host_control_commands_total",
                     {"command": "host_drain", "outcome": "refused_forged"}) == 3
        assert value("host_control_commands_total",
                     {"command": "shutdown", "outcome": "refused_disabled"}) == 1


class SkewedActuator(InMemoryActuator):
    """Answers like a worker whose clock is an hour ahead of the checker's, and takes a
    quarter of a second (by the checker's clock) to answer."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def drain(self, worker: str, reason: str, hold: str = "") -> Any:
        reply = super().drain(worker, reason, hold)
        self.clock.now += 0.25
        reply.body.update(at=self.clock.now + 3600, received_at=self.clock.now + 3600)
        return reply


class TestOneClock:
    def test_durations_and_record_times_are_the_checkers_alone(self) -> None:
        """The worker's clock is in the record as its own, never in a duration or an ``at``."""
        store, clock = InMemoryHealthStore(), Clock()
        actuator = SkewedActuator(clock)
        checker = Checker.from_store(store, actuator, PolicyConfig(), clock=clock, seed=1)
        for w in ("w1", "w2", "w3", "w4"):
            checker.handle(wear_event(w), clock())
        checker.handle(wear_event("w1", cpu=99, inflight=1), clock())
        clock.now += 0.25
        checker.tick(clock())
        [drained] = [r for r in store.history("w1") if r["kind"] == "drain_confirmed"]
        assert drained["confirm_s"] == pytest.approx(0.25)
        assert drained["at"] == pytest.approx(drained["verdict_at"] + 0.25)
        assert drained["received_at"] == pytest.approx(clock.now + 3600)  # kept, as the worker's
        assert sample(checker, "host_drain_seconds_sum") == pytest.approx(0.25)


def heard(checker: Checker, event: dict[str, Any], at: float, sent: float | None = None) -> None:
    """An event as the receiver hands it over: counted, watched, queued, then applied."""
    checker.on_event({**event, "timestamp": at if sent is None else sent})
    while not checker.inbox.empty():
        checker.apply_events(*checker.inbox.get_nowait())


class TestIntakeWatch:
    """A checker that cannot hear the fleet makes nobody OFFLINE for its own deafness."""

    def make(self) -> tuple[Checker, Clock, list[str]]:
        from healthcheck.intake import IntakeWatch

        store, clock = InMemoryHealthStore(), Clock()
        watch = IntakeWatch(deaf_after_s=5.0, behind_after_s=2.0)
        watch.subscribe(clock())
        checker = Checker.from_store(store, InMemoryActuator(), PolicyConfig(), clock=clock,
                                     seed=1, watch=watch)
        asked: list[str] = []
        checker.hearing.resubscribe = asked.append
        return checker, clock, asked

    def states(self, checker: Checker) -> dict[str, str]:
        return {w.name: w.state.value for w in checker.fleet}

    def test_a_silent_worker_goes_offline_while_the_others_are_heard(self) -> None:
        checker, clock, asked = self.make()
        offline_after = checker.fleet.config.offline_after_s
        for w in ("w1", "w2"):
            heard(checker, wear_event(w), clock())
        for _ in range(int(offline_after * 4) + 8):
            clock.now += 0.25
            heard(checker, wear_event("w1"), clock())
            checker.tick(clock())
        assert self.states(checker) == {"w1": "HEALTHY", "w2": "OFFLINE"} and asked == []

    def test_deafness_makes_nobody_offline_and_asks_for_a_new_subscription(self) -> None:
        checker, clock, asked = self.make()
        offline_after = checker.fleet.config.offline_after_s
        for w in ("w1", "w2"):
            heard(checker, wear_event(w), clock())
        for _ in range(int(offline_after * 8)):  # twice offline_after_s without a word
            clock.now += 0.25
            checker.tick(clock())
        assert self.states(checker) == {"w1": "HEALTHY", "w2": "HEALTHY"}
        assert not checker.intake_trusted and asked and "no event" in asked[0]
        heard(checker, wear_event("w1"), clock())  # resubscribed: the fleet talks again
        clock.now += 0.25
        checker.tick(clock())
        assert checker.intake_trusted and self.states(checker)["w2"] == "HEALTHY"
        for _ in range(int(offline_after * 4) + 8):  # w2 stays silent: now that is its own
            clock.now += 0.25
            heard(checker, wear_event("w1"), clock())
            checker.tick(clock())
        assert self.states(checker)["w2"] == "OFFLINE"

    def test_a_fleet_that_a_fresh_subscription_hears_nothing_from_is_believed(self) -> None:
        checker, clock, asked = self.make()
        assert checker.watch is not None
        for w in ("w1", "w2"):
            heard(checker, wear_event(w), clock())
        for _ in range(24):  # 6 s of silence: deaf, a new subscription is asked for
            clock.now += 0.25
            checker.tick(clock())
        assert asked and not checker.intake_trusted
        checker.watch.subscribe(clock())  # ...and taken: still nothing, the fleet really is silent
        for _ in range(int(checker.fleet.config.offline_after_s * 4) + 24):
            clock.now += 0.25
            checker.tick(clock())
        assert checker.intake_trusted
        assert self.states(checker) == {"w1": "OFFLINE", "w2": "OFFLINE"}
        assert len(asked) == 1  # the fresh subscription was not renewed: its silence is the fleet's

    def test_a_checker_started_in_front_of_a_dead_fleet_believes_the_silence(self) -> None:
        from healthcheck.intake import IntakeWatch

        store, clock = InMemoryHealthStore(), Clock()
        store.save([WorkerHealth(name=w, since=990.0, last_seen=990.0, queues=("tweets",))
                    for w in ("w1", "w2")])
        watch = IntakeWatch(deaf_after_s=5.0)
        checker = Checker.from_store(store, InMemoryActuator(), PolicyConfig(), clock=clock,
                                     seed=1, watch=watch)
        asked: list[str] = []
        checker.hearing.resubscribe = asked.append
        watch.subscribe(clock())
        for _ in range(24):
            clock.now += 0.25
            checker.tick(clock())
        assert checker.intake_trusted and asked == []  # ready: nobody to hear, and it can tell
        for _ in range(int(checker.fleet.config.offline_after_s * 4) + 8):
            clock.now += 0.25
            checker.tick(clock())
        assert self.states(checker) == {"w1": "OFFLINE", "w2": "OFFLINE"}

    def test_events_arriving_late_make_nobody_offline(self) -> None:
        checker, clock, _ = self.make()
        offline_after = checker.fleet.config.offline_after_s
        for w in ("w1", "w2"):
            heard(checker, wear_event(w), clock())
        for i in range(int(offline_after * 8)):  # the receiver falls behind: 3 s and growing
            clock.now += 0.25
            if i % 4 == 0:
                heard(checker, wear_event("w1"), clock(), sent=clock() - 3 - i / 10)
            checker.tick(clock())
        assert self.states(checker)["w2"] == "HEALTHY" and not checker.intake_trusted

    def test_intake_is_exported(self) -> None:
        checker, clock, _ = self.make()
        heard(checker, wear_event("w1"), clock())
        heard(checker, {"type": "worker-heartbeat", "hostname": "w1"}, clock())
        checker.on_event({"type": "task-succeeded", "hostname": "w1"})
        assert sample(checker, "host_checker_events_total", type="worker-wear") == 1
        assert sample(checker, "host_checker_events_total", type="worker-heartbeat") == 1
        assert sample(checker, "host_checker_events_total", type="task") == 1
        assert checker.inbox.empty()  # the heartbeat right after a report was not queued
        assert sample(checker, "host_checker_subscribed") == 1
        assert sample(checker, "host_checker_intake_lag_seconds") == 0


class StuckActuator(InMemoryActuator):
    """A worker that does not answer until released (as a dead or partitioned one would not)."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.release = threading.Event()
        self.started = threading.Event()

    def drain(self, worker: str, reason: str, hold: str = "") -> Any:
        self.started.set()
        self.release.wait(10)
        return super().drain(worker, reason, hold)


class TestActingNeverBlocksWatching:
    def test_a_worker_that_does_not_answer_stalls_nobody_else(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        store, clock, actuator = InMemoryHealthStore(), Clock(), StuckActuator()
        with ThreadPoolExecutor(4) as pool:
            checker = Checker.from_store(store, actuator, PolicyConfig(), clock=clock, seed=1,
                                         act_pool=pool)
            for w in ("w1", "w2", "w3", "w4", "w5"):
                checker.handle(wear_event(w), clock())
            checker.handle(wear_event("w1", cpu=99, inflight=1), clock())
            clock.now += 0.25
            checker.tick(clock())  # the verdict: gate key written, the drain on the pool
            assert actuator.started.wait(5)
            assert "cpu_percent" in store.gates["w1"]  # in force before any answer
            for _ in range(32):  # the loop goes on deciding for everyone else meanwhile
                clock.now += 0.25
                for w in ("w2", "w3", "w4"):
                    checker.handle(wear_event(w), clock())
                checker.tick(clock())
            assert checker.fleet.workers["w5"].state is State.OFFLINE  # silence still judged
            assert checker.enforcer.in_flight == 1
            # the order is recorded with its gate key; the answer is not in yet
            assert [r["kind"] for r in store.history("w1")
                    if r["kind"].startswith("drain")] == ["drain_ordered"]
            actuator.release.set()
            wait_until(lambda: checker.enforcer.in_flight == 0, 5, "the answer")
            checker.enforcer.settle()
            kinds = [r["kind"] for r in store.history("w1")]
            assert kinds[-1] == "drain_confirmed"

    def test_commands_to_one_worker_keep_their_order(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        store, clock, actuator = InMemoryHealthStore(), Clock(), InMemoryActuator()
        with ThreadPoolExecutor(4) as pool:
            checker = Checker.from_store(store, actuator, PolicyConfig(), clock=clock, seed=1,
                                         act_pool=pool)
            for i in range(20):
                (checker.enforcer.drain if i % 2 == 0 else checker.enforcer.admit)("w1", str(i))
            pool.shutdown(wait=True)
        assert [reason for _, _, reason in actuator.sent] == [str(i) for i in range(20)]
        assert [c for c, _, _ in actuator.sent] == ["host_drain", "host_admit"] * 10


class TestOperatorTargets:
    def test_stop_is_a_drain_and_a_stopped_worker_can_be_restored(self) -> None:
        """`fleet drain --stopping` asks for "stop": MAINTENANCE; a person may still end it."""
        from healthcheck.operators import operator_target
        from healthcheck.policy import Cause, State

        w = WorkerHealth(name="w1", state=State.MAINTENANCE, cause=Cause.STOPPING)
        assert operator_target("stop", WorkerHealth(name="w1"), False) is State.MAINTENANCE
        assert operator_target("restore", w, False) is State.PROBATION
        assert "unknown" in str(operator_target("halt", w, False))


class TestBusyWorkers:
    def test_a_busy_worker_stays_in_shows_busy_and_is_counted_as_capacity(self) -> None:
        """99 % CPU with its tasks getting done, for a minute of reports every 0.25 s: HEALTHY,
        busy in metrics and in the stored summary, its health score not lowered by its CPU;
        then the same CPU with nothing done for over a second: out."""
        checker, actuator, clock, store = make()
        for w in ("w1", "w2", "w3", "w4"):
            checker.handle(wear_event(w, running=1, stalled_s=0.0), clock())
        for _ in range(240):
            clock.now += 0.25
            checker.handle(wear_event("w1", cpu=99, last={"cpu_percent": 99.5}, inflight=2,
                                      running=2, stalled_s=0.1), clock())
            checker.tick(clock())
        assert checker.fleet.workers["w1"].state is State.HEALTHY and actuator.sent == []
        assert sample(checker, "host_worker_busy", worker="w1") == 1
        assert sample(checker, "host_worker_busy", worker="w2") == 0
        assert sample(checker, "host_worker_health_score", worker="w1") == pytest.approx(
            1 - 40 / 95, abs=1e-4)  # memory at 40 of 95; its CPU does not count
        assert store.reports()["w1"]["busy"] == "cpu_percent 99"
        clock.now += 0.25
        checker.handle(wear_event("w1", cpu=99, last={"cpu_percent": 99.5}, inflight=2,
                                  running=2, stalled_s=1.2), clock())
        checker.tick(clock())
        assert checker.fleet.workers["w1"].state.value == "DRAINING"
        assert [c[:2] for c in actuator.sent] == [("host_drain", "w1")]
        assert "none done for 1.2 s" in actuator.sent[0][2]


class TestHealing:
    def test_a_leaking_worker_is_drained_then_recycled_and_it_is_audited(self) -> None:
        """rss_percent over its hard limit: drained; drained, quarantined and sent
        host_recycle; its answer is a `recycled` record and counted."""
        checker, actuator, clock, store = make()
        for w in ("w1", "w2", "w3", "w4"):
            checker.handle(wear_event(w), clock())
        leaking = wear_event("w1", inflight=1)
        leaking["wear"]["rss_percent"] = [96.0, 96.0]
        checker.handle(leaking, clock())
        checker.tick(clock())
        assert [c[0] for c in actuator.sent] == ["host_drain"]
        clock.now += 1
        checker.handle(wear_event("w1", gate="closed", consuming=(), inflight=0), clock())
        assert checker.fleet.workers["w1"].state is State.QUARANTINED
        assert [c[0] for c in actuator.sent] == ["host_drain", "host_recycle"]
        kinds = [r["kind"] for r in store.history("w1")]
        assert kinds[-2:] == ["transition", "recycled"], kinds
        assert store.history("w1")[-2]["recycle"] is True
        assert sample(checker, "host_worker_recycles_total", worker="w1") == 1
        assert sample(checker, "host_control_commands_total", command="recycle",
                      outcome="confirmed") == 1

    def test_a_refused_recycle_is_recorded_as_such(self) -> None:
        class Refusing(InMemoryActuator):
            def recycle(self, worker: str, reason: str) -> Any:
                reply = super().recycle(worker, reason)
                return type(reply)(reply.worker, reply.command, reply.sent_at, True,
                                   {"error": "refused: in rotation"})

        store, clock = InMemoryHealthStore(), Clock()
        checker = Checker.from_store(store, Refusing(), PolicyConfig(), clock=clock, seed=1)
        checker.enforcer.recycle("w1", "test")
        [record] = store.history("w1")
        assert (record["kind"], record["error"]) == ("recycle_unconfirmed", "refused: in rotation")
        assert sample(checker, "host_control_commands_total", command="recycle",
                      outcome="refused") == 1


class TestRefusedAnswers:
    def test_a_refused_drain_or_admit_is_not_recorded_as_confirmed(self) -> None:
        """A worker that answers "refused: stale_leader" answered, and confirmed nothing."""
        class Refusing(InMemoryActuator):
            def _send(self, command: str, worker: str, reason: str) -> Any:
                reply = super()._send(command, worker, reason)
                return type(reply)(reply.worker, reply.command, reply.sent_at, True,
                                   {"error": "refused: stale_leader (epoch 1 < 2)"})

        store, clock = InMemoryHealthStore(), Clock()
        checker = Checker.from_store(store, Refusing(), PolicyConfig(), clock=clock, seed=1)
        checker.enforcer.drain("w1", "test")
        checker.enforcer.admit("w1", "test")
        got = [(r["kind"], r.get("error")) for r in store.history("w1")
               if r["kind"].endswith("confirmed")]
        assert got == [("drain_unconfirmed", "refused: stale_leader (epoch 1 < 2)"),
                       ("admit_unconfirmed", "refused: stale_leader (epoch 1 < 2)")]
        assert sample(checker, "host_control_commands_total", command="drain",
                      outcome="refused") == 1
        assert sample(checker, "host_drain_seconds_count") == 0
