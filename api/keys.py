"""Who may call the API: keys with scopes and a rate each, stored hashed, changed without a restart.

A key is ``hk_<id>_<secret>``. The store keeps its id, name, scopes, rate and the SHA-256 of its
secret, never the secret: a secret of 32 random bytes needs no slow hash (nothing to guess), and a
digest compared in constant time costs a microsecond per request. Operators add and revoke keys
with ``celery -A host api keys`` (a command on the store, never a route of the API); every API
process re-reads the keys each second, so a revoked key stops working within a second.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from broker_config import keys

PREFIX = "hk_"
SCOPES = ("submit", "read", "jobs")
#: Seconds between two reads of the keys from the store.
REFRESH_S = 1.0


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    digest: str
    scopes: tuple[str, ...]
    #: Requests per second (0: the API's default, HOST_API_RATE).
    rate: float = 0.0
    created_at: float = 0.0
    revoked_at: float | None = None

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "scopes": list(self.scopes)})

    @classmethod
    def from_json(cls, raw: str | bytes) -> ApiKey:
        d = json.loads(raw)
        return cls(d["id"], d["name"], d["digest"], tuple(d["scopes"]), float(d.get("rate", 0)),
                   float(d.get("created_at", 0)), d.get("revoked_at"))

    def public(self) -> dict[str, Any]:
        """What may be shown of a key: everything but its digest."""
        return {"id": self.id, "name": self.name, "scopes": list(self.scopes), "rate": self.rate,
                "created_at": self.created_at, "revoked_at": self.revoked_at}


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(name: str, scopes: tuple[str, ...], rate: float = 0.0) -> tuple[ApiKey, str]:
    """A new key and its token (shown once: the store keeps only its digest).

    Raises:
        ValueError: an unknown scope, no scope, an empty name or a negative rate.
    """
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)} (got {','.join(scopes)})")
    if not name.strip() or rate < 0:
        raise ValueError("a key needs a name and a rate >= 0")
    key_id, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
    key = ApiKey(key_id, name.strip(), digest(secret), tuple(dict.fromkeys(scopes)), rate,
                 time.time())
    return key, f"{PREFIX}{key_id}_{secret}"


def split_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token; None otherwise."""
    if not token.startswith(PREFIX):
        return None
    key_id, _, secret = token[len(PREFIX):].partition("_")
    return (key_id, secret) if key_id and secret else None


class KeyStore(Protocol):
    """The API keys, and what each sent, wherever they are kept."""

    def put(self, key: ApiKey) -> None: ...
    def all(self) -> dict[str, ApiKey]: ...
    def count(self, counts: Mapping[str, Mapping[str, int]]) -> None: ...
    def counts(self, key_id: str) -> dict[str, int]: ...


class RedisKeyStore:
    def __init__(self, client: Any) -> None:
        self.client = client

    def put(self, key: ApiKey) -> None:
        self.client.hset(keys.API_KEYS, key.id, key.to_json())

    def all(self) -> dict[str, ApiKey]:
        raw = self.client.hgetall(keys.API_KEYS)
        out = {}
        for k, v in raw.items():
            key = ApiKey.from_json(v)
            out[k.decode() if isinstance(k, bytes) else k] = key
        return out

    def count(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key_id, by in counts.items():
            for name, n in by.items():
                pipe.hincrby(keys.api_key_counts(key_id), name, n)
        pipe.execute()

    def counts(self, key_id: str) -> dict[str, int]:
        raw = self.client.hgetall(keys.api_key_counts(key_id))
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


@dataclass
class InMemoryKeyStore:
    keys: dict[str, ApiKey] = field(default_factory=dict)
    tallies: dict[str, dict[str, int]] = field(default_factory=dict)

    def put(self, key: ApiKey) -> None:
        self.keys[key.id] = key

    def all(self) -> dict[str, ApiKey]:
        return dict(self.keys)

    def count(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        for key_id, by in counts.items():
            mine = self.tallies.setdefault(key_id, {})
            for name, n in by.items():
                mine[name] = mine.get(name, 0) + n

    def counts(self, key_id: str) -> dict[str, int]:
        return dict(self.tallies.get(key_id, {}))


def revoke(store: KeyStore, key_id: str) -> ApiKey:
    """Revoke a key (kept, marked, so that its counts keep their name).

    Raises:
        LookupError: no such key.
    """
    key = store.all().get(key_id)
    if key is None:
        raise LookupError(f"no API key {key_id}")
    if key.revoked_at is None:
        key = ApiKey(key.id, key.name, key.digest, key.scopes, key.rate, key.created_at,
                     time.time())
        store.put(key)
    return key


class KeyRing:
    """The keys as this process last read them: who a token is, in memory, in microseconds.

    ``refresh`` re-reads the store (a thread calls it every ``REFRESH_S``); while the store does
    not answer, the keys last read stay in force."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._keys: dict[str, ApiKey] = {}
        self._lock = threading.Lock()
        self.loaded_at = 0.0

    def refresh(self) -> None:
        fresh = self.store.all()
        with self._lock:
            self._keys = fresh
            self.loaded_at = time.monotonic()

    def knows(self, token: str) -> bool:
        """True when the token names a key this process has read (live or revoked)."""
        parts = split_token(token)
        return parts is not None and parts[0] in self._keys

    def who(self, token: str) -> ApiKey | None:
        """The live key a token belongs to; None for anything else."""
        parts = split_token(token)
        if parts is None:
            return None
        key = self._keys.get(parts[0])
        if key is None or key.revoked_at is not None:
            return None
        return key if hmac.compare_digest(key.digest, digest(parts[1])) else None


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second on average, bursts of a second's worth."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, key_id: str, rate: float, now: float) -> float:
        """0 when the request may go; else the seconds until it may."""
        burst = max(1.0, rate)
        tokens, at = self._buckets.get(key_id, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1.0 - tokens) / rate
