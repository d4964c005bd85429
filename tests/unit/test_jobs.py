"""The pure parts of jobs: chunk sizing from measured cost, and pacing to the fleet's wear."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from producer.pacing import TARGET_SHARE, ChunkBudget, Sizer, fleet_pressure, pace

BUDGET = ChunkBudget(cpu_s=2.0, mem_mb=512, first_items=50, max_items=20_000, growth=4.0)


def run_sizer(per_item_s: float, chunks: int) -> list[int]:
    sizer, sizes = Sizer(BUDGET), []
    for _ in range(chunks):
        sizes.append(sizer.size)
        sizer.measured(sizer.size, sizer.size * per_item_s)
    return sizes


class TestSizer:
    def test_starts_small_grows_at_most_fourfold_and_lands_near_the_budget(self) -> None:
        sizes = run_sizer(per_item_s=0.0001, chunks=8)  # 10,000 items a CPU second
        assert sizes[0] == 50
        assert all(b <= 4 * a for a, b in itertools.pairwise(sizes))
        assert sizes[-1] == int(BUDGET.cpu_s * TARGET_SHARE / 0.0001)  # 16,000: 1.6 s

    def test_never_above_the_most_items(self) -> None:
        assert max(run_sizer(per_item_s=1e-7, chunks=10)) == BUDGET.max_items

    def test_a_chunk_that_ran_over_shrinks_the_rest_at_once(self) -> None:
        sizer = Sizer(BUDGET)
        for _ in range(6):
            sizer.measured(sizer.size, sizer.size * 0.0001)
        steady = sizer.size
        sizer.measured(steady, 3 * BUDGET.cpu_s)  # this chunk cost 3 budgets
        assert sizer.size * (3 * BUDGET.cpu_s / steady) <= BUDGET.cpu_s * TARGET_SHARE + 1e-9

    def test_cheaper_chunks_are_believed_slowly(self) -> None:
        sizer = Sizer(BUDGET)
        sizer.measured(1000, 1.0)  # 1 ms an item
        sizer.measured(1000, 0.1)  # one cheap chunk is not the new normal
        assert sizer.per_item is not None and sizer.per_item > 0.0005

    def test_memory_over_budget_halves_the_chunk(self) -> None:
        sizer = Sizer(BUDGET)
        sizer.measured(1000, 0.01, rss_mb=BUDGET.mem_mb + 1)
        assert sizer.size <= 500

    def test_one_costly_item_still_gives_a_chunk_of_one(self) -> None:
        sizer = Sizer(BUDGET)
        sizer.measured(1, 100.0)
        assert sizer.size == 1

    @given(st.lists(st.tuples(st.integers(1, 50_000), st.floats(0.0, 1000.0),
                              st.floats(0.0, 4096.0)), max_size=30))
    def test_size_is_always_between_one_and_the_most(self,
                                                     chunks: list[tuple[int, float, float]]) -> None:
        sizer = Sizer(BUDGET)
        for n, cpu, rss in chunks:
            sizer.measured(n, cpu, rss)
            assert 1 <= sizer.size <= BUDGET.max_items


class TestPace:
    def test_full_speed_below_eighty_percent_of_soft_limits(self) -> None:
        assert pace(0.0, 6) == 6 and pace(0.79, 6) == 6

    def test_one_chunk_close_to_the_limits_none_at_them(self) -> None:
        assert pace(0.8, 6) == 1 and pace(0.94, 6) == 1
        assert pace(0.95, 6) == 0 and pace(1.5, 6) == 0

    def test_pressure_is_the_worst_reading_of_a_worker_in_rotation(self) -> None:
        soft = {"cpu_percent": 85.0, "memory_percent": 85.0}
        reports = {"w1": {"wear": {"cpu_percent": 42.5, "memory_percent": 10.0}},
                   "w2": {"wear": {"cpu_percent": 80.0, "memory_percent": 76.5}},
                   "w3": {"wear": {"cpu_percent": 100.0}}}  # out of rotation: not counted
        assert fleet_pressure(reports, {"w1", "w2"}, soft) == 80.0 / 85.0
        assert fleet_pressure(reports, set(), soft) == 0.0
        assert fleet_pressure({"w1": {"wear": {"unknown": 99.0}}}, {"w1"}, soft) == 0.0
