"""The fleet simulator drives the real policy; each scenario's outcome is what the design promises."""

from __future__ import annotations

import json

import pytest

from healthcheck import scenarios, sim
from healthcheck.policy import Fleet, PolicyConfig
from healthcheck.policy.config import Load

N, SECONDS = 200, 90


@pytest.fixture(scope="module")
def results() -> dict[str, sim.Result]:
    return {name: sim.run(s, N, SECONDS, seed=2) for name, s in scenarios.SCENARIOS.items()}


class TestSimulator:
    def test_gradual_wear_is_caught_without_false_ejections(self, results: dict[str, sim.Result]) -> None:
        """Every worker that wears out is ejected, within 20 s of the onset; nobody else is."""
        r = results["gradual_wear"]
        assert r.degraded >= 2
        assert r.missed_degradations == 0
        assert r.false_ejections == 0
        assert r.detection_p99_s is not None and r.detection_p99_s < 20

    def test_sustained_step_is_out_within_three_seconds(self, results: dict[str, sim.Result]
                                                        ) -> None:
        """A step to 100% CPU: out at its third sample, decided within that second (the
        simulator decides 0.9 s after each round of reports): delay under 3 s, nobody else."""
        r = results["sustained_step"]
        assert r.degraded >= 2 and r.missed_degradations == 0 and r.false_ejections == 0
        assert r.detection_p99_s is not None and r.detection_p99_s < 3.0

    def test_transient_spikes_eject_nobody(self, results: dict[str, sim.Result]) -> None:
        """Spikes of one or two samples are absorbed by smoothing, peak limits and the
        sustained-step rule (three samples): zero ejections."""
        r = results["transient_spikes"]
        assert (r.false_ejections, r.max_out_fraction) == (0, 0.0)

    def test_flapping_stays_out_with_bounded_transitions(self, results: dict[str, sim.Result]) -> None:
        """Flapping workers are caught, and the back-off keeps the transitions few."""
        r = results["flapping"]
        assert r.missed_degradations == 0
        # 2 flappers over 90 s, flipping every 5 s, would make ~36 transitions if they bounced.
        assert r.transitions <= 6 * r.degraded

    def test_broken_cpu_metrics_read_as_busy_and_eject_nobody(
            self, results: dict[str, sim.Result]) -> None:
        """Everyone reads 99% CPU with tasks done as usual: busy, not worn. Nobody out, and
        the guard has nothing to hold back."""
        r = results["broken_metrics"]
        assert (r.false_ejections, r.max_out_fraction, r.guard_engaged_s) == (0, 0.0, 0)

    def test_broken_memory_metrics_engage_the_guard(self, results: dict[str, sim.Result]) -> None:
        """Everyone reported worn at once: the guard engages and ejects at most its bound."""
        r = results["broken_memory_metrics"]
        assert r.guard_engaged_s > 0
        assert r.max_out_fraction <= Fleet().bound(N) / N

    @pytest.mark.parametrize("name", ["traffic_peak", "hot_tenth"])
    def test_load_ejects_nobody(self, results: dict[str, sim.Result], name: str) -> None:
        """A fleet (or a tenth of it) at 90-100% CPU doing its work: no worker out, ever."""
        r = results[name]
        assert (r.false_ejections, r.max_out_fraction, r.guard_engaged_s) == (0, 0.0, 0)

    def test_load_ejected_workers_before_the_rule(self) -> None:
        """The same peak with CPU judged as wear (the rule off) ejects workers and engages the
        guard: what the two tests above would see without it."""
        off = PolicyConfig(load=Load(enabled=False))
        r = sim.run(scenarios.SCENARIOS["traffic_peak"], N, SECONDS, seed=2, config=off)
        assert r.false_ejections > 0 and r.guard_engaged_s > 0

    def test_stuck_workers_in_a_busy_fleet_are_out_as_fast_as_a_step(
            self, results: dict[str, sim.Result]) -> None:
        """2% stuck among busy workers: every one out, within the sustained step's 3 s,
        none of the busy ones."""
        r = results["busy_with_stuck"]
        assert r.degraded >= 2 and r.missed_degradations == 0 and r.false_ejections == 0
        assert r.detection_p99_s is not None and r.detection_p99_s < 3.0

    def test_correlated_half_is_held_at_the_bound(self, results: dict[str, sim.Result]) -> None:
        """Half the fleet degrading at once is more than the guard lets out: it holds the bound."""
        r = results["correlated_half"]
        assert r.guard_engaged_s > 0
        assert r.max_out_fraction <= Fleet().bound(N) / N
        assert r.missed_degradations > 0  # by design: a person decides

    def test_silent_wrong_answers_are_caught_by_probes(self, results: dict[str, sim.Result]) -> None:
        """Wrong answers with normal wear: all caught within one probe interval."""
        r = results["silent_wrong_answers"]
        assert r.degraded >= 1 and r.missed_degradations == 0
        assert r.detection_p99_s is not None and r.detection_p99_s <= sim.PROBE_EVERY
        assert r.false_ejections == 0

    def test_same_seed_same_figures(self) -> None:
        """A simulation is reproducible (apart from the real time it took)."""
        a = sim.run(scenarios.SCENARIOS["flapping"], 50, 40, seed=5)
        b = sim.run(scenarios.SCENARIOS["flapping"], 50, 40, seed=5)
        strip = ("policy_seconds", "observations_per_s")
        assert {k: v for k, v in vars(a).items() if k not in strip} == \
            {k: v for k, v in vars(b).items() if k not in strip}

    def test_json_output_has_one_object_per_scenario(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--json prints one object per scenario with the documented fields."""
        assert sim.main(["--workers", "30", "--seconds", "30", "--json"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == len(scenarios.SCENARIOS)
        for line in lines:
            obj = json.loads(line)
            for key in ("scenario", "detection_p50_s", "detection_p99_s", "false_ejections",
                        "missed_degradations", "max_out_fraction", "observations_per_s"):
                assert key in obj

    def test_policy_file_changes_the_outcome(self, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
        """--policy runs the simulation under that policy; a bad file is a usage error."""
        f = tmp_path / "p.toml"
        f.write_text("[guard]\nmax_ejected_fraction = 0.5\n")
        assert sim.main(["--workers", "40", "--seconds", "40", "--scenario", "broken_metrics",
                         "--policy", str(f), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["scenario"] == "broken_metrics"
        f.write_text("[guard]\nmax_ejected_fraction = 5\n")
        with pytest.raises(SystemExit) as info:
            sim.main(["--workers", "10", "--seconds", "5", "--policy", str(f)])
        assert info.value.code == 2


class TestShardedSimulator:
    """The same fleet split across 8 shards, as 8 checkers would split it: the guard's bounds
    hold fleet-wide and every outcome is the unsharded fleet's."""

    SHARDED_N = 400  # 50 workers a shard: each shard's share of the bound is a few workers

    @pytest.fixture(scope="class")
    @classmethod
    def pairs(cls) -> dict[str, tuple[sim.Result, sim.Result]]:
        names = ("sustained_step", "broken_memory_metrics", "correlated_half", "gradual_wear")
        return {name: (sim.run(scenarios.SCENARIOS[name], cls.SHARDED_N, SECONDS, seed=3),
                       sim.run(scenarios.SCENARIOS[name], cls.SHARDED_N, SECONDS, seed=3, shards=8))
                for name in names}

    def test_no_bound_is_ever_exceeded(self, pairs: dict[str, tuple[sim.Result, sim.Result]]
                                       ) -> None:
        bound = Fleet().bound(self.SHARDED_N) / self.SHARDED_N
        for name, (_, sharded) in pairs.items():
            assert sharded.shards == 8, name
            assert sharded.over_bound_s == 0 and sharded.max_out_fraction <= bound, name

    def test_a_wave_across_shards_is_judged_as_one(
            self, pairs: dict[str, tuple[sim.Result, sim.Result]]) -> None:
        """Every worker worn at once (a broken metrics pipeline) is spread over 8 shards: each
        holds its share, nobody is ejected, as in one fleet."""
        whole, sharded = pairs["broken_memory_metrics"]
        assert sharded.false_ejections == whole.false_ejections == 0
        assert sharded.guard_engaged_s > 0

    def test_detection_is_as_quick_as_in_one_fleet(
            self, pairs: dict[str, tuple[sim.Result, sim.Result]]) -> None:
        for name in ("sustained_step", "gradual_wear"):
            whole, sharded = pairs[name]
            assert sharded.detected == whole.detected == whole.degraded > 0, name
            assert sharded.detection_p99_s == whole.detection_p99_s, name
            assert sharded.false_ejections == 0, name
