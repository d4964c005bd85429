"""A real ``celery -A host api`` process on a free port, and a key to call it with."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import redis

import harness.api_server
from api.keys import RedisKeyStore, new_key


class ApiServer(harness.api_server.ApiServer):
    """The harness's API process, with what tests call it with."""

    def key(self, scopes: tuple[str, ...] = ("submit", "read", "jobs"), rate: float = 0.0,
            name: str = "test") -> str:
        """A new key's token, written to the store as `api keys add` writes it."""
        key, token = new_key(name, scopes, rate)
        client = redis.Redis.from_url(self.store_url, decode_responses=True)
        RedisKeyStore(client).put(key)
        client.close()
        return token

    def client(self, token: str, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                            timeout=kwargs.pop("timeout", 30.0), **kwargs)


def poll_messages(client: httpx.Client, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Every message's outcome, read by id until none is pending (or the deadline passes)."""
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(done) < len(ids):
        for message_id in ids:
            if message_id in done:
                continue
            r = client.get(f"/v1/messages/{message_id}")
            assert r.status_code == 200, r.text
            if r.json()["status"] != "pending":
                done[message_id] = r.json()
        if len(done) < len(ids):
            time.sleep(0.2)
    return done


def pieces(data: bytes, size: int = 65_536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]
