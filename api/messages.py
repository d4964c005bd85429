"""Messages the API accepted, readable by id: pending (with the task that carries them), then
their outcome. Each is one expiring key (``keys.api_message``), written before its task is
published (so nothing is accepted without a record) and again when its answer arrives."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker_config import keys

#: A message's status as the API shows it.
PENDING, ANALYSED, REJECTED, FAILED = "pending", "analysed", "rejected", "failed"


def status_of(record: dict[str, Any] | None) -> str:
    """The API's status for a worker's record (None: no answer yet)."""
    if record is None:
        return PENDING
    status = record.get("status")
    return status if status in (ANALYSED, REJECTED) else FAILED


class MessageStore(Protocol):
    def put(self, entries: Iterable[dict[str, Any]], ttl: int) -> None:
        """Write (or overwrite) messages, each a dict with its ``id``."""

    def get(self, message_id: str) -> dict[str, Any] | None: ...

    def drop(self, message_ids: Iterable[str]) -> None: ...


class RedisMessageStore:
    def __init__(self, client: Any) -> None:
        self.client = client

    def put(self, entries: Iterable[dict[str, Any]], ttl: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for entry in entries:
            pipe.set(keys.api_message(entry["id"]), json.dumps(entry), ex=ttl)
        pipe.execute()

    def get(self, message_id: str) -> dict[str, Any] | None:
        raw = self.client.get(keys.api_message(message_id))
        return json.loads(raw) if raw else None

    def drop(self, message_ids: Iterable[str]) -> None:
        names = [keys.api_message(m) for m in message_ids]
        if names:
            self.client.delete(*names)


@dataclass
class InMemoryMessageStore:
    entries: dict[str, str] = field(default_factory=dict)

    def put(self, entries: Iterable[dict[str, Any]], ttl: int) -> None:
        for entry in entries:
            self.entries[entry["id"]] = json.dumps(entry)

    def get(self, message_id: str) -> dict[str, Any] | None:
        raw = self.entries.get(message_id)
        return json.loads(raw) if raw else None

    def drop(self, message_ids: Iterable[str]) -> None:
        for m in message_ids:
            self.entries.pop(m, None)
