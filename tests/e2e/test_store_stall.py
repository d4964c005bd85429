"""The data plane never waits on host's store: with the store on a Redis of its own, that Redis
stopped (SIGSTOP: a hung or overloaded server, a path that drops packets), gone (connections
refused) or failed over (a Sentinel group's master SIGKILLed) while a stream of real tweets
flows, the workers keep analysing at close to their normal rate; nothing is lost, and a worker
the checker had quarantined before the fault still starts nothing.

The rate figures here are loose: the machine is shared, and the other test session halves the
rate now and then. A data plane that waits on the store shows otherwise: a wait per task of even
the per-task timeout (50 ms) is a rate below a fifth of the normal one, and a wait for the store
is a second with nothing finished: counted from the fault's first instant, since the first
writes and reads to meet it are the ones that wait (ingest waited a second there for its first
dead letter, and the workers, fed nothing, finished nothing). bench/store_stall.py measures the
rates."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from broker_config.app import HostCelery
from broker_config.settings import Settings
from harness.store_faults import STORE_FAULTS, FaultyStore
from healthcheck.store import RedisHealthStore
from tests.conftest import GROUND_TRUTH, CheckerFactory, WorkerFactory
from tests.support.cli import celery, read_jsonl, start_celery, wait_first_result
from tests.support.polling import wait_until
from workers.deadletter import RedisDeadLetterStore

STALL_S = 6.0
#: Inputs a second: under the capacity of the two workers here (450-600 a second; 130 and more
#: with two CPU hogs beside them), so that a producer that stops shows as a gap.
RATE = 200


@pytest.fixture
def host_env(host_env: dict[str, str], faulty_store: FaultyStore) -> dict[str, str]:
    return {**host_env, **faulty_store.env}


def longest_gap(results: list[dict[str, object]], start: float, end: float) -> float:
    """The longest time in [start, end) in which no analysis finished."""
    times = sorted(t for r in results if start <= (t := float(r["finished_at"])) < end)  # type: ignore[arg-type]
    edges = [start, *times, end]
    return max(b - a for a, b in itertools.pairwise(edges))


def rate(results: list[dict[str, object]], start: float, end: float) -> float:
    done = [r for r in results if start <= float(r["finished_at"]) < end]  # type: ignore[arg-type]
    return len(done) / (end - start)


@pytest.mark.background
@pytest.mark.parametrize("faulty_store", STORE_FAULTS, indirect=True)
@pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
def test_a_stalled_store_stalls_no_analysis(
        app: HostCelery, start_worker: WorkerFactory, start_checker: CheckerFactory,
        host_env: dict[str, str], faulty_store: FaultyStore, tmp_path: Path) -> None:
    health = RedisHealthStore.from_url(Settings.from_env(host_env).store)
    workers = [start_worker(f"ss{i}", concurrency=1) for i in (1, 2, 3)]
    start_checker("--tick", "0.1")
    held = workers[2].name
    wait_until(lambda: all(health.get(w.name) for w in workers), 20, "all three known")
    assert celery("fleet", "quarantine", held, "--reason", "held through the stall",
                  env=host_env).returncode == 0
    wait_until(lambda: (w := health.get(held)) is not None and w.state.value == "QUARANTINED",
               20, "the quarantine")
    # The tweets as a steady stream, with inputs to reject all along it: lines that are not
    # UTF-8 (ingest rejects them) and texts of 1,001 emoji (workers do): their dead letters
    # must not hold anything up while the store is away, nor be lost. A stream below the
    # fleet's capacity leaves no backlog to hide a producer that stops: nothing to send is
    # nothing finished.
    lines = GROUND_TRUTH.read_bytes().splitlines(keepends=True)
    for i in range(len(lines) - 150, 0, -150):
        lines.insert(i, b"bad\t0\t\xff\xfe not text\n" if i % 300 else
                     ("many\t0\t" + "\U0001f600" * 1001 + "\n").encode())
    hostile = len(lines) - 4200
    source = tmp_path / "tweets.tsv"
    source.write_bytes(b"".join(lines))
    out = tmp_path / "results.jsonl"
    ingest = start_celery("ingest", str(source), "--out", str(out), "--timeout", "120",
                          "--rate", str(RATE), env=host_env, stderr=tmp_path / "ingest.err")
    # the stream at its normal rate (from its first result: a loaded machine starts it slowly)
    wait_first_result(out, ingest)
    time.sleep(STALL_S)
    stalled_at = time.time()
    faulty_store.begin()
    time.sleep(STALL_S)
    faulty_store.end()
    resumed_at = time.time()
    assert ingest.wait(300) == 0, (tmp_path / "ingest.err").read_text()[-2000:]
    every = read_jsonl(out)
    assert len(every) == len(lines) and len({r["ref"] for r in every}) == len(every)
    results = [r for r in every if r["status"] == "analysed"]
    assert len(results) == 4200
    assert sum(1 for r in every if r["status"] == "rejected") == hostile
    # Every dead letter reached the store once it answered again: none lost, none twice
    dead = RedisDeadLetterStore.from_url(Settings.from_env(host_env).store)
    wait_until(lambda: dead.counts()["total"] == hostile, 30, "the dead letters stored")
    before = rate(results, stalled_at - STALL_S + 2, stalled_at)
    during = rate(results, stalled_at, resumed_at)
    gap = longest_gap(results, stalled_at, resumed_at)
    print(f"store fault {faulty_store.fault!r} for {STALL_S:.0f} s: {before:.0f} tweets/s before, "
          f"{during:.0f} during ({during / before:.2f}), nothing finished for {gap:.2f} s at most")
    assert during >= 0.3 * before, (before, during)
    assert gap < 0.5, gap
    # The quarantined worker started nothing, before, during or after
    assert held not in {r["worker"] for r in results}


@pytest.mark.parametrize("faulty_store", ["pause", "refuse"], indirect=True)
def test_ingest_started_while_the_store_is_away_feeds_the_fleet(
        start_worker: WorkerFactory, host_env: dict[str, str], faulty_store: FaultyStore,
        tmp_path: Path) -> None:
    """A producer started during a store outage feeds the fleet: dead letters are all ingest
    writes to host's store, and it sets them aside until the store answers. It used to wait
    5 s for the store and then exit 3, so an outage longer than that stopped every new inflow."""
    start_worker("sa1")  # it knows its verdict: the store answered when it started
    faulty_store.begin()
    source = tmp_path / "in.txt"
    source.write_bytes(b"".join([f"tweet {i} is lovely\n".encode() for i in range(20)]
                                + [b"\xff\xfe not text\n", b"\xc3 nor this\n"]))
    out, err = tmp_path / "out.jsonl", tmp_path / "ingest.err"
    try:
        ingest = start_celery("ingest", str(source), "--out", str(out), "--timeout", "60",
                              env=host_env, stderr=err)
        # every result is in while the store is still away; its two dead letters wait
        wait_until(lambda: (out.exists() and len(read_jsonl(out)) == 22) or ingest.poll(), 60,
                   "every input accounted for")
        assert ingest.poll() is None, err.read_text()[-2000:]
    finally:
        faulty_store.end()
    assert ingest.wait(60) == 0, err.read_text()[-2000:]
    assert "does not answer" in err.read_text()
    records = read_jsonl(out)
    assert sorted(r["status"] for r in records) == ["analysed"] * 20 + ["rejected"] * 2
    dead = RedisDeadLetterStore.from_url(Settings.from_env(host_env).store)
    assert dead.counts() == {"total": 2, "invalid_utf8": 2}
