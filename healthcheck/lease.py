"""Which checker leads: a lease in the store with a TTL, and a fencing epoch.

Any number of checkers may run; the one holding the lease acts, the others stand by. The
leader renews every ``ttl_s / 3``; when it dies its lease expires and the first standby to ask
takes it under a new epoch.

A checker trusts its own lease only until ``renewed + ttl_s x TRUST``, measured from when it
*sent* the renewal, so it stops acting before the store lets anyone else in. A checker paused
for longer than that (SIGSTOP, a long GC, a frozen VM) can still wake up believing it leads;
that is what the fence is for: every write it makes checks the token in the same script
(``healthcheck.store``), and every drain/admit it sends carries its epoch, which workers check
against the store's current one (``workers.control``).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from broker_config.logs import get_logger
from healthcheck.errors import HealthcheckError
from healthcheck.store import LeaseStore

log = get_logger(__name__)

#: The share of the TTL a leader trusts its lease for after sending a renewal.
TRUST = 0.8


def candidate_id() -> str:
    """A name for this checker process, unique across hosts and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def epoch_of(token: str) -> int:
    """The epoch a lease token was taken under (0 for no token)."""
    head = token.split(":", 1)[0]
    return int(head) if head.isdigit() else 0


@dataclass
class Leadership:
    """This checker's side of the lease.

    Args:
        store: where the lease lives.
        candidate: this checker's name.
        ttl_s: the lease's time to live.
        clock: monotonic seconds.
    """

    store: LeaseStore
    candidate: str
    ttl_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    token: str = ""
    leader: str | None = None
    _trusted_until: float = 0.0
    _next_try: float = 0.0
    _was_leading: bool = False

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            raise ValueError(f"lease TTL must be positive, got {self.ttl_s}")

    @property
    def epoch(self) -> int:
        """The epoch this checker leads under (0 when it does not lead)."""
        return epoch_of(self.token)

    def leading(self) -> bool:
        """True while this checker holds a lease it may still trust."""
        return bool(self.token) and self.clock() < self._trusted_until

    def step(self) -> bool:
        """Renew or try to take the lease when due; True when ``leading()`` changed since the
        last step (taken, lost, or no longer trusted)."""
        now = self.clock()
        if now >= self._next_try or (self.token and not self.leading()):
            self._ask(now)
        now_leading = self.leading()
        changed, self._was_leading = now_leading != self._was_leading, now_leading
        return changed

    def lost(self) -> None:
        """A fenced write was refused: stop leading at once."""
        if self.token:
            log.warning("lease_lost", token=self.token)
        self.token, self._trusted_until, self._was_leading = "", 0.0, False

    def release(self) -> None:
        """Give the lease up (on a clean stop), so that a standby takes over at once."""
        if self.token:
            try:
                self.store.release(self.token)
            except HealthcheckError as exc:
                log.warning("lease_release_failed", error=str(exc))
        self.token, self._trusted_until, self._was_leading = "", 0.0, False

    def _ask(self, sent: float) -> None:
        try:
            self.leader = self.store.lease(self.candidate, self.ttl_s, self.token)
        except HealthcheckError as exc:
            # Unreachable store: keep trusting what was trusted, until it runs out.
            log.warning("lease_unavailable", error=str(exc))
            self._next_try = sent + min(1.0, self.ttl_s / 5)
            return
        if self.leader is not None and self.leader.split(":", 1)[-1] == self.candidate:
            self.token = self.leader
            self._trusted_until = sent + self.ttl_s * TRUST
            self._next_try = sent + self.ttl_s / 3
        else:
            self.token, self._trusted_until = "", 0.0
            self._next_try = sent + min(0.25, self.ttl_s / 10)


class Lead:
    """This checker's standing, as every part that writes or acts asks for it.

    Args:
        leadership: the lease (None: a checker that runs alone, without one, always leads).
    """

    def __init__(self, leadership: Leadership | None) -> None:
        self.leadership = leadership

    def leading(self) -> bool:
        """True when this checker may act (it holds the lease, or runs without one)."""
        return self.leadership is None or self.leadership.leading()

    @property
    def fence(self) -> str:
        """The lease token every write is fenced with ("" without a lease)."""
        if self.leadership is None:
            return ""
        return self.leadership.token or "none"  # not leading: a token no lease ever matches

    @property
    def epoch(self) -> int | None:
        """The epoch this checker leads under (None without a lease)."""
        return None if self.leadership is None else self.leadership.epoch
