"""The API's two stores, the same cases on Redis and in memory: messages by id (expiring on
Redis), and keys with what each sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from api.keys import InMemoryKeyStore, KeyStore, RedisKeyStore, new_key, revoke
from api.messages import InMemoryMessageStore, MessageStore, RedisMessageStore, status_of
from harness.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest) -> Iterator[tuple[MessageStore, KeyStore, Any]]:
    if request.param == "memory":
        yield InMemoryMessageStore(), InMemoryKeyStore(), None
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushall()
    yield RedisMessageStore(client), RedisKeyStore(client), client
    client.close()


class TestMessages:
    def test_pending_then_answered_then_gone(self, stores: tuple[MessageStore, KeyStore, Any]
                                             ) -> None:
        messages, _, client = stores
        entry = {"id": "m1", "ref": "r1", "key": "k", "status": "pending", "task": "t",
                 "index": 0, "accepted_at": 1.0}
        messages.put([entry, {**entry, "id": "m2"}], ttl=60)
        assert messages.get("m1") == entry and messages.get("nope") is None
        record = {"status": "analysed", "compound": 0.5}
        messages.put([{**entry, "status": status_of(record), "result": record}], ttl=60)
        assert messages.get("m1") == {**entry, "status": "analysed", "result": record}
        if client is not None:
            assert 0 < client.ttl("host:api:msg:m1") <= 60
        messages.drop(["m1", "m2"])
        assert messages.get("m1") is None and messages.get("m2") is None

    def test_status_of_a_record(self) -> None:
        assert status_of(None) == "pending"
        assert status_of({"status": "rejected", "reason": "empty_text"}) == "rejected"
        assert status_of({"status": "failed"}) == status_of({}) == "failed"


class TestKeys:
    def test_keys_are_kept_and_revoked_and_counted(
            self, stores: tuple[MessageStore, KeyStore, Any]) -> None:
        _, keys, _ = stores
        a, _ = new_key("a", ("submit",), 5)
        b, _ = new_key("b", ("read", "jobs"))
        keys.put(a)
        keys.put(b)
        assert keys.all() == {a.id: a, b.id: b}
        revoked = revoke(keys, a.id)
        assert keys.all()[a.id].revoked_at == revoked.revoked_at is not None
        keys.count({a.id: {"accepted": 3, "rejected:empty_text": 1}, b.id: {"accepted": 1}})
        keys.count({a.id: {"accepted": 2}})
        assert keys.counts(a.id) == {"accepted": 5, "rejected:empty_text": 1}
        assert keys.counts("nobody") == {}
