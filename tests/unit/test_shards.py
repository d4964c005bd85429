"""Shards in the pure policy: the assignment, and a shard's guard with the rest of the fleet in
view and a fleet-wide budget. No I/O, no clock, no sleeps."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from broker_config.shards import BUCKETS, bucket_of, buckets_of, shard_of, wear_routing_key
from healthcheck.policy import Fleet, HealthPolicy, Peers, PolicyConfig, Reading, State, WearReport
from healthcheck.policy.config import Guard
from healthcheck.policy.shards import refusal
from healthcheck.store.memory import InMemoryGuardBudgets, ShardBudget


def wear(worker: str, at: float, cpu: float = 20.0) -> WearReport:
    readings = {"cpu_percent": Reading(cpu, cpu), "memory_percent": Reading(30.0, 30.0)}
    return WearReport(worker=worker, at=at, wear=readings, queues=("tweets",))


class Admit:
    """A budget that records what it was asked and answers as told."""

    def __init__(self, answer: str | None = None) -> None:
        self.answer, self.asked = answer, []  # type: ignore[var-annotated]

    def admit(self, worker: str, queues: tuple[str, ...], now: float, relapse: bool) -> str | None:
        self.asked.append((worker, queues, now, relapse))
        return self.answer


NOBODY = Peers()


class Admission:
    """One shard's policy budget over the shared in-memory one (as the simulator has it)."""

    def __init__(self, view: ShardBudget, guard: Guard) -> None:
        self.view, self.guard = view, guard

    def admit(self, worker: str, queues: tuple[str, ...], now: float, relapse: bool) -> str | None:
        return self.view.admit(worker, queues, now, relapse, self.guard)


def shard(n: int, peers: Peers = NOBODY, budget: object = None, settle_s: float = 0.0,
          prefix: str = "w", config: PolicyConfig | None = None) -> Fleet:
    fleet = Fleet(HealthPolicy(config or PolicyConfig()), budget=budget,  # type: ignore[arg-type]
                  settle_s=settle_s, peers=peers)
    for i in range(n):
        fleet.observe(wear(f"{prefix}{i}", at=0))
    return fleet


class TestAssignment:
    @given(st.text(min_size=1, max_size=40), st.integers(1, 64))
    def test_a_worker_has_one_shard_in_range_and_always_the_same(self, name: str, n: int) -> None:
        assert 0 <= shard_of(name, n) < n and shard_of(name, n) == shard_of(name, n)

    def test_shards_share_the_fleet_evenly(self) -> None:
        """Within 10% (4,096 buckets: each of 8 shards has 512 +- a few dozen)."""
        counts = Counter(shard_of(f"celery@host-{i}", 8) for i in range(80_000))
        assert set(counts) == set(range(8))
        assert max(counts.values()) < 1.1 * 10_000 and min(counts.values()) > 0.9 * 10_000

    def test_a_workers_shard_is_its_buckets(self) -> None:
        """What a checker subscribes to (its buckets) is what it keeps (its workers)."""
        for n in (1, 2, 8):
            owned = [set(buckets_of(k, n)) for k in range(n)]
            assert sum(map(len, owned)) == BUCKETS and set().union(*owned) == set(range(BUCKETS))
            for i in range(500):
                name = f"w{i}@h"
                assert bucket_of(name) in owned[shard_of(name, n)]
                assert wear_routing_key(name) == f"worker.wear.{bucket_of(name)}"

    def test_adding_a_shard_moves_only_its_share(self) -> None:
        """From 8 shards to 9, about 1/9 of the workers move, and only to the new shard."""
        names = [f"celery@host-{i}" for i in range(45_000)]
        moved = [n for n in names if shard_of(n, 8) != shard_of(n, 9)]
        assert {shard_of(n, 9) for n in moved} == {8}
        assert 0.9 * 5_000 < len(moved) < 1.1 * 5_000


class TestShardGuard:
    def test_the_bound_counts_the_whole_fleet(self) -> None:
        """4 workers here, 8 elsewhere: the bound is that of 12 (3), and the 2 out elsewhere
        count against it."""
        fleet = shard(4, Peers(size=8, out=2, queue_size=Counter(tweets=8),
                               queue_out=Counter(tweets=2)))
        assert fleet.bound() == 3 and fleet.figures().fleet_size == 12
        fleet.observe(wear("w0", at=1, cpu=99))
        fleet.tick(1.5)
        assert fleet.workers["w0"].state is State.DRAINING
        fleet.observe(wear("w1", at=2, cpu=99))
        fleet.tick(2.5)
        assert fleet.workers["w1"].state is not State.DRAINING
        # w0 and the 2 elsewhere out, w1 wanting out: 4 of a fleet of 12 look degraded at once.
        assert fleet.workers["w1"].held == "suspecting the inputs: 4 look degraded at once / bound 3"

    def test_an_ejection_the_budget_refuses_is_held_with_its_reason(self) -> None:
        budget = Admit("1 out / bound 1 of 8")
        fleet = shard(4, Peers(size=4, queue_size=Counter(tweets=4)), budget)
        fleet.observe(wear("w0", at=1, cpu=99))
        fleet.tick(1.5)
        assert budget.asked == [("w0", ("tweets",), 1.5, False)]
        assert fleet.workers["w0"].state is not State.DRAINING
        assert fleet.workers["w0"].held == "1 out / bound 1 of 8"

    def test_the_budget_is_asked_only_after_the_local_view_allows(self) -> None:
        budget = Admit(None)
        fleet = shard(4, Peers(size=0), budget)
        for i in range(3):  # 3 of 4 at once: the inputs are suspect, nobody goes
            fleet.observe(wear(f"w{i}", at=1, cpu=99))
        fleet.tick(1.5)
        assert budget.asked == [] and fleet.by_state()[State.DRAINING] == 0

    def test_a_wave_across_shards_engages_every_shards_guard(self) -> None:
        """One hot worker here, 3 waiting elsewhere (their shards published them): 4 of 12
        look degraded at once, more than the bound of 3, so this shard holds its one too."""
        fleet = shard(4, Peers(size=8, waiting=3, queue_size=Counter(tweets=8)), Admit(None))
        fleet.observe(wear("w0", at=1, cpu=99))
        decision = fleet.tick(1.5)
        assert decision.guard_engaged and fleet.by_state()[State.DRAINING] == 0
        assert fleet.workers["w0"].held.startswith("suspecting the inputs: 4 look degraded")

    def test_a_proposal_waits_settle_s_for_the_other_shards(self) -> None:
        fleet = shard(4, Peers(size=8, queue_size=Counter(tweets=8)), Admit(None), settle_s=0.5)
        fleet.observe(wear("w0", at=1, cpu=99))
        assert fleet.tick(1.2).transitions == () and fleet.has_proposals
        assert fleet.figures().held == 1  # the other shards see it waiting meanwhile
        assert [t.worker for t in fleet.tick(1.5).transitions] == ["w0"]

    def test_own_figures_are_what_the_others_count(self) -> None:
        fleet = shard(4, Peers(size=8))
        fleet.observe(wear("w0", at=1, cpu=99))
        fleet.tick(1.5)
        mine = fleet.own_figures()
        assert (mine.size, mine.out, mine.waiting, mine.queue_size["tweets"],
                mine.queue_out["tweets"]) == (4, 1, 0, 4, 1)


class TestSharedBudget:
    """Several shards, one budget: the bound holds across them whatever their local view."""

    def test_shards_with_stale_views_never_exceed_the_fleet_bound(self) -> None:
        """4 shards of 3: each may eject 1 by its own count (the floor of its bound), and
        each believes the others have nobody out (their figures read once, before). The fleet
        of 12 has a bound of 3: the budget admits three and refuses the fourth, whoever asks
        last."""
        budgets = InMemoryGuardBudgets(4)
        config = PolicyConfig(guard=Guard(max_ejections_per_window=10))
        fleets = []
        for k in range(4):
            view = budgets.for_shard(k)
            fleet = shard(3, budget=Admission(view, config.guard), prefix=f"s{k}-", config=config)
            view.publish(fleet.own_figures())
            fleets.append(fleet)
        for k, fleet in enumerate(fleets):
            fleet.peers = budgets.for_shard(k).peers(0.0, 60.0)  # sizes; nobody out yet
        for k, fleet in enumerate(fleets):
            fleet.observe(wear(f"s{k}-0", at=1, cpu=99))
            fleet.tick(1.5)
        out = [f.by_state()[State.DRAINING] for f in fleets]
        assert out == [1, 1, 1, 0] and fleets[0].bound() == 3
        assert fleets[3].workers["s3-0"].held == "3 out / bound 3 of 12"


class TestRefusal:
    def test_the_rules_in_order(self) -> None:
        g = Guard()
        whole = Peers(size=12, out=2, recent=0, queue_size=Counter(tweets=8),
                      queue_out=Counter(tweets=1))
        assert refusal(g, whole, ("tweets",), False) is None
        assert refusal(g, Peers(size=12, out=3), (), False) == "3 out / bound 3 of 12"
        full_queue = Peers(size=12, out=1, queue_size=Counter(bulk=4), queue_out=Counter(bulk=1))
        assert refusal(g, full_queue, ("bulk",), False) == "queue bulk: 1 out / bound 1"
        storm = Peers(size=12, out=0, recent=3)
        assert refusal(g, storm, (), False) == "3 ejections in the last 60s"
        assert refusal(g, storm, (), True) is None  # a relapse in probation is not a new one
