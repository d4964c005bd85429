"""The policy file: the shipped defaults load, and every mistake is refused with its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker_config.policy_file import load_policy
from broker_config.settings import ConfigError
from healthcheck.policy import PolicyConfig

DEPLOYED = Path(__file__).resolve().parents[2] / "deploy" / "policy.toml"


class TestPolicyFile:
    def test_shipped_file_equals_the_defaults(self) -> None:
        """deploy/policy.toml writes out exactly the built-in defaults."""
        assert load_policy(DEPLOYED) == PolicyConfig()

    def test_no_file_means_defaults(self) -> None:
        """Without a file the defaults apply."""
        assert load_policy(None) == PolicyConfig()

    def test_values_override_defaults(self, tmp_path: Path) -> None:
        """A partial file changes only what it names."""
        f = tmp_path / "p.toml"
        f.write_text("enforce = false\n[guard]\nmax_ejected_fraction = 0.5\n"
                     "[thresholds.cpu_percent]\nsoft = 70\n[thresholds.gpu_temp]\nhard = 90\n")
        config = load_policy(f)
        assert config.enforce is False
        assert config.guard.max_ejected_fraction == 0.5
        assert config.guard.window_s == 60.0
        assert config.thresholds["cpu_percent"].soft == 70
        assert config.thresholds["cpu_percent"].hard == 97
        assert config.thresholds["gpu_temp"].hard == 90
        f.write_text("[load]\nenabled = false\nstall_floor_s = 2\n")
        load = load_policy(f).load
        assert (load.enabled, load.stall_floor_s, load.stall_factor) == (False, 2.0, 3.0)

    @pytest.mark.parametrize(("content", "fragment"), [
        ("bogus = 1\n", "bogus: unknown"),
        ("[guard]\nmax_ejected_fraction = 2\n", "max_ejected_fraction"),
        ("[guard]\nwindow_s = -5\n", "window_s: must be > 0"),
        ("[guard]\nsurprise = 1\n", "guard.surprise: unknown"),
        ("[recovery]\npasses = 2.5\n", "recovery.passes: must be an integer"),
        ("[thresholds.cpu_percent]\nsoft = 99\nhard = 90\n", "thresholds.cpu_percent"),
        ("[thresholds.cpu_percent]\nmedium = 3\n", "thresholds.cpu_percent.medium"),
        ("enforce = 1\n", "enforce: must be true or false"),
        ("[backoff]\nbase_s = 600\n", "backoff.base_s"),
        ("[failures]\nsoft_rate = 0.9\n", "soft_rate <= hard_rate"),
        ("guard = 3\n", "guard: must be a table"),
        ("[load]\nenabled = 1\n", "load.enabled: must be true or false"),
        ("[load]\nstall_floor_s = 0\n", "stall_floor_s: must be > 0"),
        ("[load]\nmetrics = []\n", "load.metrics: unknown"),
        ("not toml at all [", "not valid TOML"),
    ])
    def test_mistakes_are_refused_with_the_key(self, tmp_path: Path, content: str,
                                               fragment: str) -> None:
        """Unknown keys, wrong types and bad values are refused, naming the key."""
        f = tmp_path / "p.toml"
        f.write_text(content)
        with pytest.raises(ConfigError) as info:
            load_policy(f)
        assert fragment in str(info.value)
        assert "HOST_POLICY_FILE" in str(info.value)

    def test_missing_file_is_refused(self, tmp_path: Path) -> None:
        """A policy file that cannot be read is an error."""
        with pytest.raises(ConfigError, match="cannot read"):
            load_policy(tmp_path / "absent.toml")
