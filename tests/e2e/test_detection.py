"""Detection at the defaults (1 s reports, the default policy): a sustained step over a hard
limit is out within 3 s of its onset (about 2 s: the worker samples four times per report and
reports hot samples at once), a spike of one or two samples never is."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from broker_config.app import HostCelery
from cli import control
from healthcheck.store import RedisHealthStore
from tests.conftest import CheckerFactory, WorkerFactory
from tests.support.cli import celery
from tests.support.events import EventTap
from tests.support.polling import wait_until

#: Five ejections within the guard's 60 s window: its rate limit (3 for a small fleet) is
#: not what is measured here, so it is raised; every detection setting is the default.
POLICY = "[guard]\nmax_ejections_per_window = 10\n"


def state(store: RedisHealthStore, worker: str) -> str | None:
    w = store.get(worker)
    return w.state.value if w else None


def in_state(store: RedisHealthStore, worker: str, *states: str) -> Callable[[], bool]:
    return lambda: state(store, worker) in states


class TestDetectionAtTheDefaults:
    @pytest.mark.background  # waits to see a spike never eject
    def test_a_step_is_out_within_3_s_and_a_spike_never(
            self, app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
            host_env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> None:
        """Five steps to 100% CPU (injected), one worker after another: each DRAINING within
        3 s of the injection (measured from just before the command was sent); then a spike
        of at most two samples: nobody ejected."""
        policy = tmp_path / "policy.toml"
        policy.write_text(POLICY)
        store = RedisHealthStore(redis_client)
        workers = [start_worker(f"dt{i}") for i in (1, 2, 3)]
        start_checker("--policy", str(policy))
        for w in workers:
            wait_until(in_state(store, w.name, "HEALTHY"), 20, "known")
        delays = []
        for run in range(5):
            name = workers[run % 3].name
            time.sleep(1.5)  # the smoothed CPU of the last run's worker has settled
            onset = time.time()
            control.send(app, "host_inject", name, {"spec": "cpu=100"})
            wait_until(in_state(store, name, "DRAINING", "QUARANTINED"), 15, f"{name} out")
            out = next(r for r in store.history(name) if r["kind"] == "transition"
                       and r["to"] == "DRAINING" and r["at"] > onset)
            assert "samples in a row" in out["reason"], out
            delays.append(out["at"] - onset)
            control.send(app, "host_inject", name, {"spec": ""})
            wait_until(in_state(store, name, "QUARANTINED"), 15, "drained")
            restore = celery("fleet", "restore", name, "--force", env=host_env)
            assert restore.returncode == 0, restore.stderr
            wait_until(in_state(store, name, "HEALTHY"), 15, "back")
        print(f"detection at the defaults: {', '.join(f'{d:.2f}' for d in delays)} s "
              f"(median {statistics.median(delays):.2f}, max {max(delays):.2f})")
        assert max(delays) <= 3.0, delays
        # A spike: injected for 1.5 s (one or two samples at the 1 s interval; six or seven of
        # the worker's sub-samples, each reported at once while hot); never ejected
        name = workers[0].name
        time.sleep(2)
        with EventTap(app) as tap:
            control.send(app, "host_inject", name, {"spec": "cpu=100"})
            time.sleep(1.5)
            control.send(app, "host_inject", name, {"spec": ""})
            time.sleep(4)
            hot = [e for e in tap.of("worker-wear", name) if e["last"]["cpu_percent"] >= 97]
        assert len(hot) >= 2, hot  # the spike was seen, sample by sample
        assert hot[-1]["timestamp"] - hot[0]["timestamp"] < 1.75, hot  # sustained.min_s
        assert state(store, name) in ("HEALTHY", "SUSPECT")
        assert not [r for r in store.history(name) if r["kind"] == "transition"
                    and r["to"] == "DRAINING" and r["at"] > time.time() - 10]
