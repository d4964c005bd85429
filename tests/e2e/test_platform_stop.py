"""Workers as platforms run them (deploy/entrypoint.sh): readiness and liveness, a stop that
drains first, a restart that rejoins, and a rolling restart under a stream of real tweets."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from broker_config.app import HostCelery
from broker_config.contract import envelope
from healthcheck.store import RedisHealthStore
from tests.conftest import GROUND_TRUTH, CheckerFactory
from tests.support.cli import REPO, celery, read_jsonl
from tests.support.events import EventTap
from tests.support.platform_worker import PlatformWorker
from tests.support.polling import consumed, wait_until
from tests.support.prometheus import PrometheusServer

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"


@pytest.fixture
def platform(host_env: dict[str, str], tmp_path: Path,
             request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start workers through the entrypoint; whatever is left is killed after the test."""
    started: list[PlatformWorker] = []

    def start(short: str, env: dict[str, str] | None = None, wait: bool = True) -> PlatformWorker:
        worker = PlatformWorker(short, {**host_env, **(env or {})}, tmp_path / f"{short}.log")
        started.append(worker.start())
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.kill()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for worker in started:
            print(f"--- {worker.name} (tail) ---\n{worker.tail()}")


def reported_at(env: dict[str, str], worker: str) -> float:
    """When the checker last stored the worker's report summary (``fleet status``)."""
    proc = celery("fleet", "status", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    found = [w for w in json.loads(proc.stdout)["workers"] if w["worker"] == worker]
    return float(found[0].get("reported_at") or 0.0) if found else 0.0


def state_of(store: RedisHealthStore, worker: str) -> tuple[str, str] | None:
    w = store.get(worker)
    return (w.state.value, w.cause.value) if w else None


class _Monitor:
    """Every command the Redis server runs while it is open (Redis's MONITOR)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client, self.commands = client, []  # type: ignore[var-annotated]
        self.stop = threading.Event()

    def __enter__(self) -> _Monitor:
        ready = threading.Event()

        def run() -> None:
            with self.client.monitor() as m:  # type: ignore[no-untyped-call]
                ready.set()
                for cmd in m.listen():
                    self.commands.append(cmd["command"])
                    if self.stop.is_set():
                        return

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.client.ping()  # one more command wakes the listener up
        self.thread.join(5)


class TestStatusEndpoints:
    def test_ready_flips_on_a_drain_live_stays_and_neither_broadcasts(
            self, platform: Any, start_checker: CheckerFactory, host_env: dict[str, str],
            redis_client: redis.Redis) -> None:
        """/readyz false within one report interval (1 s) of a drain and true again after a
        restore; /healthz true throughout; answering them sends nothing to the broker."""
        worker = platform("st1")
        start_checker("--tick", "0.1")
        store = RedisHealthStore(redis_client)
        wait_until(lambda: store.get(worker.name), 20, "the checker knows the worker")
        status, body = worker.status("/readyz")
        assert (status, body["ready"], body["gate"]) == (200, True, "open")
        assert set(body["consuming"]) == {"tweets", "default", "bulk"}
        # Neither endpoint broadcasts: 40 answers put nothing on the control exchange (pidbox),
        # where one `celery inspect ping`, run afterwards, does.
        with _Monitor(redis_client) as monitor:
            for _ in range(20):
                assert worker.status("/readyz")[0] == 200
                assert worker.status("/healthz")[0] == 200
            time.sleep(0.3)  # what the answers sent, if anything, has reached the MONITOR
            answered = len(monitor.commands)
            probe = celery("inspect", "ping", "-d", worker.name, "--json", env=host_env)
        assert probe.returncode == 0, probe.stderr
        assert answered > 0, "the MONITOR saw nothing at all (the workers' own events)"
        assert [c for c in monitor.commands[:answered] if "pidbox" in c] == []
        assert [c for c in monitor.commands[answered:] if "pidbox" in c], \
            "the MONITOR saw no broadcast even from `celery inspect ping`"
        # A drain: not ready within one report interval of its answer, alive all along
        drain = celery("fleet", "drain", worker.name, "--reason", "test", "--yes", env=host_env)
        assert drain.returncode == 0, drain.stderr
        drained_at = time.monotonic()
        wait_until(lambda: worker.status("/readyz")[0] == 503, 1.0, "not ready after the drain")
        flipped = time.monotonic() - drained_at
        status, body = worker.status("/readyz")
        assert body["gate"] == "closed" and body["consuming"] == [] and "gate closed" in body["reason"]
        for _ in range(5):
            assert worker.status("/healthz") == (200, {"live": True, "worker": worker.name})
            time.sleep(0.2)
        print(f"status: /readyz false {flipped * 1000:.0f} ms after the drain's answer")
        # Restored: through probation, consuming again, ready again
        restore = celery("fleet", "restore", worker.name, env=host_env)
        assert restore.returncode == 0, restore.stderr
        wait_until(lambda: worker.status("/readyz")[0] == 200, 15, "ready after the restore")


class TestStop:
    @pytest.fixture
    def host_env(self, host_env: dict[str, str]) -> dict[str, str]:
        """Workers here send Celery's task events (HOST_TASK_EVENTS): the test watches one."""
        return {**host_env, "HOST_TASK_EVENTS": "true"}

    def test_sigterm_drains_first_then_stops_and_a_restart_rejoins(
            self, app: HostCelery, platform: Any, start_checker: CheckerFactory,
            redis_client: redis.Redis, host_env: dict[str, str]) -> None:
        """SIGTERM to the entrypoint: a stop drain is recorded before the worker exits, what it
        had started finishes, nothing starts on it after the drain; started again under the
        same name, it is HEALTHY and consuming without anyone's restore."""
        store = RedisHealthStore(redis_client)
        busy = platform("sp1", env={"HOST_WEAR_INJECT": "slow=1.5"})
        # (slow too: a fast one took all eight while the busy one ran a probe, once in a while)
        other = platform("sp2", env={"HOST_WEAR_INJECT": "slow=0.3"})
        start_checker("--tick", "0.1")
        wait_until(lambda: store.get(busy.name) and store.get(other.name), 20, "both known")
        with EventTap(app) as tap:
            results = [app.send_task("host.analyse",
                                     args=[envelope(f"sp:{i}", f"fine day {i}")])
                       for i in range(8)]
            ours = {r.id for r in results}
            # One of these, not a probe of the checker's, is running on it when it is stopped
            tap.wait_for("task-started", lambda e: e["uuid"] in ours, hostname=busy.name,
                         timeout=20)
        sent = busy.sigterm()
        assert busy.wait(60) == 0, busy.tail()
        exited = time.time()
        records = [r.get(timeout=60) for r in results]
        history = store.history(busy.name)
        stop = next(r for r in history if r["kind"] == "transition" and r["to"] == "MAINTENANCE")
        confirmed = next(r for r in history if r["kind"] == "drain_confirmed")
        assert stop["cause"] == "stopping" and sent <= stop["at"] <= exited, (stop, sent, exited)
        assert confirmed["at"] <= exited
        assert all(r["status"] == "analysed" for r in records)
        on_busy = [r for r in records if r["worker"] == busy.name]
        assert on_busy, "the busy worker ran nothing: the test proved nothing"
        assert [r for r in on_busy if r["started_at"] > confirmed["verdict_at"]] == []
        log = busy.log_path.read_text()
        assert log.index('"drain_before_stop"') < log.index('"drained"') < log.index(
            "Warm shutdown"), busy.tail()
        # Started again with the same name: back in rotation on its own (worker-online)
        again = PlatformWorker("sp1", host_env, busy.log_path).start()
        try:
            again.wait_ready(60)
            wait_until(lambda: state_of(store, busy.name) == ("HEALTHY", ""), 20, "HEALTHY")
            assert "tweets" in consumed(app, busy.name)
        finally:
            again.kill()



    @pytest.mark.background  # a quarantine by probes, a stop, a restart, a watch
    def test_a_quarantined_worker_stopped_and_started_again_is_still_quarantined(
            self, app: HostCelery, platform: Any, start_checker: CheckerFactory,
            redis_client: redis.Redis, host_env: dict[str, str], tmp_path: Path) -> None:
        """Quarantined for a wrong answer, then stopped by its platform (the entrypoint's
        SIGTERM runs the stop drain, as a preStop hook or ExecStop does) and started again:
        still QUARANTINED for its probe, never HEALTHY unprobed; a restart is no way back in."""
        store = RedisHealthStore(redis_client)
        policy = tmp_path / "policy.toml"
        policy.write_text("[probes]\nevery_s = 1.0\n")
        liar = platform("sq1", env={"HOST_WEAR_INJECT": "wrong_answers=1"})
        platform("sq2")
        start_checker("--policy", str(policy), "--tick", "0.1")
        wait_until(lambda: state_of(store, liar.name) == ("QUARANTINED", "probe"), 30,
                   "quarantined for a wrong answer")
        liar.sigterm()
        assert liar.wait(60) == 0, liar.tail()
        assert state_of(store, liar.name) == ("QUARANTINED", "probe")
        restarted = time.time()
        again = PlatformWorker("sq1", host_env, liar.log_path).start()  # the injection gone
        try:
            # not ready (out of rotation, as it should be): heard by the checker again
            wait_until(lambda: reported_at(host_env, liar.name) > restarted, 60,
                       "its reports heard again")
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                assert state_of(store, liar.name) == ("QUARANTINED", "probe"), \
                    store.history(liar.name)[-3:]
                time.sleep(0.2)
            later = [r for r in store.history(liar.name)
                     if r["kind"] == "transition" and r["at"] >= restarted]
            assert all(r["to"] not in ("HEALTHY", "MAINTENANCE") for r in later), later
            assert "tweets" not in consumed(app, liar.name)
        finally:
            again.kill()


def alert_expr(name: str) -> str:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    return str(next(r["expr"] for r in rules if r.get("alert") == name))


@pytest.mark.background
@pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
class TestRollingRestart:
    def test_three_workers_replaced_one_by_one_under_a_stream(
            self, platform: Any, start_checker: CheckerFactory, host_env: dict[str, str],
            redis_client: redis.Redis, tmp_path: Path) -> None:
        """What a rolling update does, worker after worker (preStop, SIGTERM, a replacement),
        while 4,200 tweets stream in: 0 lost, 0 started on a draining worker, each drain
        confirmed before its SIGTERM, the no-healthy-consumer alert's expression never true."""
        store = RedisHealthStore(redis_client)
        slow = {"HOST_WEAR_INJECT": "slow=0.03"}  # the stream outlasts three replacements
        old = [platform(f"rr{i}", env=slow) for i in (1, 2, 3)]
        checker = start_checker("--tick", "0.1")
        prometheus = PrometheusServer(tmp_path, [f"127.0.0.1:{checker.port}"]).start()
        try:
            wait_until(lambda: prometheus.query('host_queue_healthy_consumers{queue="tweets"} == 3'),
                       30, "Prometheus sees three healthy consumers")
            began = time.time()
            out = tmp_path / "results.jsonl"
            ingest = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "host", "ingest", str(GROUND_TRUTH),
                 "--out", str(out), "--json", "--timeout", "120"], env=host_env, cwd=REPO,
                stdout=subprocess.DEVNULL, stderr=(tmp_path / "ingest.err").open("w"))
            wait_until(lambda: prometheus.query('host_queue_messages{queue="tweets"} > 0'), 30,
                       "messages waiting in the queue")
            stops: dict[str, float] = {}
            for i, worker in enumerate(old, 1):
                pre = worker.pre_stop()
                assert pre.returncode == 0, pre.stderr
                assert "holds no work" in pre.stdout
                stops[worker.name] = worker.sigterm()
                assert worker.wait(60) == 0, worker.tail()
                platform(f"rr{i}b", env=slow)
            assert ingest.poll() is None, "the stream ended before the last restart: no test"
            assert ingest.wait(240) == 0, (tmp_path / "ingest.err").read_text()[-2000:]
            time.sleep(3)  # two more scrapes and evaluations
            window = f"{int(time.time() - began) + 2}s"
            never = prometheus.query(
                f"max_over_time(({alert_expr('HostQueueWithoutHealthyConsumer')})[{window}:1s])")
            fewest = prometheus.query(
                f'min_over_time(host_queue_healthy_consumers{{queue="tweets"}}[{window}:1s])')
            waited = prometheus.query(
                f'max_over_time(host_queue_messages{{queue="tweets"}}[{window}:1s])')
        finally:
            prometheus.stop()
        assert never == [], never
        # The check could have failed: the drains showed (2 consumers left), messages waited
        assert float(fewest[0]["value"][1]) == 2.0, fewest
        assert float(waited[0]["value"][1]) > 0, waited
        # 0 lost: every tweet analysed exactly once
        results = read_jsonl(out)
        assert len(results) == 4200 and len({r["id"] for r in results}) == 4200
        assert all(r["status"] == "analysed" for r in results)
        for name, sigterm_at in stops.items():
            history = store.history(name)
            stop = next(r for r in history if r["kind"] == "transition" and r["to"] == "MAINTENANCE")
            confirmed = next(r for r in history if r["kind"] == "drain_confirmed")
            assert stop["cause"] == "stopping"
            # Each drain confirmed before its SIGTERM; nothing started on it after the drain
            assert confirmed["at"] < sigterm_at, (name, confirmed, sigterm_at)
            assert [r for r in results if r["worker"] == name
                    and r["started_at"] > confirmed["verdict_at"]] == []
            assert any(r["worker"] == name for r in results), f"{name} ran nothing"
        print("rolling restart: " + ", ".join(
            f"{n.split('@')[0]} drained→SIGTERM" for n in stops) +
            f"; {len(results)} results, min healthy consumers {fewest[0]['value'][1]}")
