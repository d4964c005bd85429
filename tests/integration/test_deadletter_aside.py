"""Dead letters are never waited on: against a real redis-server that stops answering (SIGSTOP),
writes return at once with their records set aside, and every record set aside reaches the
store, in order, once it answers again."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from harness.redis_server import RedisServer
from tests.support.polling import wait_until
from workers.deadletter import WRITE_TIMEOUT_S, Aside, RedisDeadLetterStore


@pytest.fixture
def server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    if server.proc is not None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


def pause(server: RedisServer, stopped: bool) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP if stopped else signal.SIGCONT)


def record(n: int) -> dict[str, object]:
    return {"status": "rejected", "ref": f"r{n}", "reason": "too_many_emoji"}


def test_a_paused_store_holds_no_writer_up_and_loses_nothing(server: RedisServer) -> None:
    store = RedisDeadLetterStore.from_url(server.url, timeout=0.3)
    aside = Aside(store)
    aside.record([record(0)])  # the store answers: written at once
    assert store.counts()["total"] == 1 and aside.waiting == 0
    pause(server, True)
    # Each write returns while the store is still paused (the first after its 0.3 s timeout,
    # the rest at once, behind it): a thread that waited for the store would still be waiting
    def write() -> None:
        for n in range(1, 51):
            aside.record([record(n)])

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(10)
    assert not writer.is_alive() and aside.waiting == 50
    pause(server, False)
    wait_until(lambda: aside.waiting == 0, 20, "the records set aside to be written")
    assert store.counts() == {"total": 51, "too_many_emoji": 51}
    assert [r["ref"] for r in store.latest(51)] == [f"r{n}" for n in range(50, -1, -1)]


def test_beyond_its_bound_the_oldest_waiting_go_and_are_counted(server: RedisServer) -> None:
    store = RedisDeadLetterStore.from_url(server.url, timeout=0.3)
    aside = Aside(store, pending_max=5)
    pause(server, True)
    for n in range(8):
        aside.record([record(n)])
    assert (aside.waiting, aside.dropped) == (5, 3)
    pause(server, False)
    assert aside.flush(20) == 0
    assert [r["ref"] for r in store.latest(10)] == ["r7", "r6", "r5", "r4", "r3"]


def test_a_caller_gives_a_stalled_store_the_per_task_timeout_not_a_second(
        server: RedisServer) -> None:
    """The ``Aside`` every worker and ``ingest`` use: a caller that wrote while the store was
    paused waited for it once, within the per-task timeout. A wait of a second here was a
    second in which the whole fleet finished nothing (ingest stopped feeding; a worker's event
    loop stopped dispatching). What is set aside is written late, all of it, in one batch of a
    thousand with the patience the caller could not spare."""
    aside = Aside.from_url(server.url)
    aside.record([record(0)])  # connected, the script loaded
    pause(server, True)
    waits = []
    for n in range(1, 1001):
        began = time.monotonic()
        aside.record([record(n)])
        waits.append(time.monotonic() - began)
    assert aside.waiting == 1000
    assert max(waits) < 0.5 and sum(waits) < 0.5, (max(waits), sum(waits))
    assert max(waits) >= WRITE_TIMEOUT_S  # the first did wait (for the per-task timeout)
    pause(server, False)
    assert aside.flush(20) == 0
    counts = RedisDeadLetterStore.from_url(server.url).counts()
    assert counts == {"total": 1001, "too_many_emoji": 1001}
