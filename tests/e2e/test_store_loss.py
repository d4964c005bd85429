"""host's store loses everything (a Redis without persistence restarted; a replica promoted
before it caught up; a group flushed) while a worker is quarantined and another is in
maintenance: both stay out of rotation, their reasons kept, and the rest of the fleet goes on.

The checker keeps no state of its own that the store's loss could contradict: it rebuilds the
fleet from the workers' reports, and a worker out of rotation reports its gate closed and why.
Run on a store of its own Redis (restarted empty) and on a Sentinel group (emptied).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker_config.app import HostCelery
from broker_config.settings import Settings
from harness.redis_server import RedisServer
from harness.sentinel import SentinelGroup
from healthcheck.store import RedisHealthStore
from tests.conftest import GROUND_TRUTH, CheckerFactory, WorkerFactory
from tests.support.cli import REPO, celery, read_jsonl
from tests.support.polling import consumed, wait_until


@pytest.fixture(params=["redis", "sentinel"])
def lose(request: pytest.FixtureRequest) -> Iterator[tuple[dict[str, str], Callable[[], None]]]:
    """(the store's settings, what empties it)."""
    if request.param == "redis":
        server = RedisServer().start()
        yield {"HOST_STORE_URL": server.url}, lambda: server.restart(down_s=0.5)
        server.stop()
        return
    group = SentinelGroup().start()
    env = {"HOST_STORE_URL": group.url, "HOST_SENTINEL_MASTER": group.master_name}

    def flush() -> None:
        RedisHealthStore.from_url(Settings.from_env(env).store)._client.flushall()

    yield env, flush
    group.stop()


@pytest.fixture
def host_env(host_env: dict[str, str],
             lose: tuple[dict[str, str], Callable[[], None]]) -> dict[str, str]:
    return {**host_env, **lose[0]}


def state(store: RedisHealthStore, worker: str) -> tuple[str, str] | None:
    with contextlib.suppress(Exception):
        w = store.get(worker)
        return (w.state.value, w.reason) if w is not None else None
    return None


@pytest.mark.background
@pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
def test_a_store_that_loses_everything_lets_nobody_back_in(
        app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
        host_env: dict[str, str], lose: tuple[dict[str, str], Callable[[], None]],
        tmp_path: Path) -> None:
    store = RedisHealthStore.from_url(Settings.from_env(host_env).store)
    healthy, held, kept = (start_worker(f"sl{i}") for i in (1, 2, 3))
    start_checker("--tick", "0.1")
    wait_until(lambda: all(state(store, w.name) for w in (healthy, held, kept)), 20, "all known")
    assert celery("fleet", "quarantine", held.name, "--reason", "wrong answers",
                  env=host_env).returncode == 0
    assert celery("fleet", "drain", kept.name, "--reason", "kernel upgrade", "--yes",
                  env=host_env).returncode == 0
    expected = {held.name: ("QUARANTINED", "operator: wrong answers"),
                kept.name: ("MAINTENANCE", "operator: kernel upgrade")}
    wait_until(lambda: all(state(store, w) == s for w, s in expected.items()), 20, "both out")

    lose[1]()  # the store forgets every state, record, gate key and lease
    wait_until(lambda: all(state(store, w) == s for w, s in expected.items()), 30,
               "both out again, with their reasons, in the emptied store")
    wait_until(lambda: (s := state(store, healthy.name)) is not None and s[0] == "HEALTHY", 30,
               "the worker in rotation back, in rotation")
    for w in (held, kept):
        assert "tweets" not in consumed(app, w.name)

    # The fleet goes on: every tweet analysed, by the worker in rotation alone
    source = tmp_path / "tweets.tsv"
    source.write_text("".join(GROUND_TRUTH.read_text(encoding="utf-8").splitlines(True)[:300]))
    out = tmp_path / "results.jsonl"
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "host", "ingest", str(source),
                           "--out", str(out), "--timeout", "60"], env=host_env, cwd=REPO,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    results = read_jsonl(out)
    assert len(results) == 300 and all(r["status"] == "analysed" for r in results)
    assert {r["worker"] for r in results} == {healthy.name}
