"""Signed control messages: HMAC-SHA256 over the command, its arguments, the destination,
a timestamp and a nonce, with ``HOST_CONTROL_SECRET``.

Used for host's control commands to workers and for operators' requests to the checker.
Verification refuses what is unsigned, forged (a bad signature, or one made for another
destination or other arguments), expired (a timestamp outside the allowed skew) or replayed (a
nonce seen before within that window).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from redis.exceptions import RedisError

from broker_config import keys

SIGNATURE_FIELDS = ("_ts", "_nonce", "_sig")
#: How far a signed message's timestamp may be from the receiver's clock.
MAX_SKEW_S = 30.0


def _digest(secret: str, command: str, arguments: Mapping[str, Any], destination: str,
            ts: float, nonce: str) -> str:
    body = {k: v for k, v in arguments.items() if k not in SIGNATURE_FIELDS}
    message = json.dumps([command, body, destination, ts, nonce], sort_keys=True,
                         separators=(",", ":"), default=str)
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def sign(secret: str, command: str, arguments: Mapping[str, Any], destination: str,
         now: float) -> dict[str, Any]:
    """``arguments`` plus ``_ts``, ``_nonce`` and ``_sig`` (unchanged when there is no secret)."""
    if not secret:
        return dict(arguments)
    nonce = secrets.token_hex(12)
    return {**arguments, "_ts": now, "_nonce": nonce,
            "_sig": _digest(secret, command, arguments, destination, now, nonce)}


class NonceMemory(Protocol):
    """Where used nonces are kept, beyond the life of one process."""

    def first_use(self, nonce: str, ttl_s: float) -> bool | None:
        """True the first time ``nonce`` is offered within ``ttl_s``, False after; None when
        the memory cannot be reached."""
        ...


class RedisNonces:
    """Used nonces in Redis: ``SET host:nonce:<n> NX EX ttl``, one round trip, atomic."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def first_use(self, nonce: str, ttl_s: float) -> bool | None:
        """See NonceMemory."""
        try:
            return bool(self.client.set(keys.nonce(nonce), b"1", nx=True,
                                        ex=max(1, math.ceil(ttl_s))))
        except RedisError:
            return None


class Verifier:
    """Checks signed messages for one receiver, remembering nonces to refuse replays.

    Args:
        secret: the shared secret ("" accepts everything: development without a secret).
        clock: wall-clock seconds.
        max_skew_s: the largest accepted distance between a timestamp and the clock.
        previous: an older secret still accepted (during a rotation).
        nonces: the fleet-wide memory of used nonces (None: this process's memory only).
    """

    def __init__(self, secret: str, clock: Callable[[], float],
                 max_skew_s: float = MAX_SKEW_S, previous: str = "",
                 nonces: NonceMemory | None = None) -> None:
        self.secret = secret
        self.secrets = [s for s in (secret, previous) if s]
        self.clock = clock
        self.max_skew_s = max_skew_s
        self.nonces = nonces
        self._seen: dict[str, float] = {}

    def signed(self, command: str, arguments: Mapping[str, Any], destination: str) -> bool:
        """True when the message carries a valid, fresh signature (never with no secret)."""
        return bool(self.secret) and self.refusal(command, arguments, destination) is None

    def refusal(self, command: str, arguments: Mapping[str, Any], destination: str) -> str | None:
        """None when the message is authentic and fresh; else ``unsigned``, ``forged``,
        ``expired``, ``replayed`` or ``unverifiable`` (the nonce memory is unreachable)."""
        if not self.secret:
            return None
        ts, nonce, sig = (arguments.get(k) for k in SIGNATURE_FIELDS)
        if not isinstance(sig, str) or not isinstance(nonce, str) or not isinstance(
                ts, (int, float)):
            return "unsigned"
        if not any(hmac.compare_digest(_digest(s, command, arguments, destination, float(ts),
                                               nonce), sig) for s in self.secrets):
            return "forged"
        now = self.clock()
        if abs(now - float(ts)) > self.max_skew_s:
            return "expired"
        self._forget_before(now - self.max_skew_s)
        if nonce in self._seen:
            return "replayed"
        # A timestamp stays acceptable for 2 x skew (from ts - skew to ts + skew): so long must
        # the nonce be remembered.
        first = None if self.nonces is None else self.nonces.first_use(nonce, 2 * self.max_skew_s)
        if first is False:
            return "replayed"
        if self.nonces is not None and first is None:
            return "unverifiable"
        self._seen[nonce] = float(ts)
        return None

    def _forget_before(self, cutoff: float) -> None:
        # Nonces older than the skew window cannot come back: their timestamps would expire.
        for nonce in [n for n, ts in self._seen.items() if ts < cutoff]:
            del self._seen[nonce]
