"""The dead-letter store port, the same cases on Redis and in memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from workers.deadletter import DeadLetterStore, InMemoryDeadLetterStore, RedisDeadLetterStore


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[DeadLetterStore]:
    if request.param == "memory":
        yield InMemoryDeadLetterStore(keep=3)
        return
    client: redis.Redis = request.getfixturevalue("redis_client")
    yield RedisDeadLetterStore(client, keep=3)


class TestDeadLetters:
    def test_nothing_recorded_yet(self, store: DeadLetterStore) -> None:
        assert store.counts() == {"total": 0} and store.latest() == []

    def test_counted_by_reason_kept_newest_first_and_trimmed(self, store: DeadLetterStore) -> None:
        store.record([{"ref": f"r{i}", "reason": "not_json" if i % 2 else "too_long"}
                      for i in range(5)])
        store.record([{"ref": "r5"}])  # no reason: counted as unknown
        store.record([])
        assert store.counts() == {"not_json": 2, "too_long": 3, "unknown": 1, "total": 6}
        assert [r["ref"] for r in store.latest()] == ["r5", "r4", "r3"]  # kept: 3
        assert [r["ref"] for r in store.latest(1)] == ["r5"]

    def test_a_record_that_is_not_plain_json_is_still_kept(self, store: DeadLetterStore) -> None:
        store.record([{"ref": "r1", "reason": "bad_bytes", "raw": b"\xff\x00"}])
        [kept] = store.latest()
        assert kept["ref"] == "r1" and isinstance(kept["raw"], str)
        assert store.counts()["bad_bytes"] == 1

    def test_a_record_written_again_under_its_id_is_kept_once(self, store: DeadLetterStore) -> None:
        """A write that timed out may have happened: writing it again by the same id keeps it
        once; other ids in the same batch are kept."""
        store.record([{"ref": "a", "reason": "x"}], ["id-a"])
        store.record([{"ref": "a", "reason": "x"}, {"ref": "b", "reason": "y"}], ["id-a", "id-b"])
        assert store.counts() == {"total": 2, "x": 1, "y": 1}
        assert [r["ref"] for r in store.latest(5)] == ["b", "a"]
