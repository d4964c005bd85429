"""A checker's fleet rebuilt from the store: on start, on taking the lease, on a standby."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from healthcheck.audit import Kind, parse_all
from healthcheck.policy import Fleet, HealthPolicy, PolicyConfig, State
from healthcheck.store import StateStore


def resumed_fleet(store: StateStore, config: PolicyConfig, now: float,
                  seed: int | None, recall: bool = True,
                  keep: Callable[[str], bool] | None = None) -> Fleet:
    """The fleet as stored, each worker given ``offline_after_s`` from ``now`` to be heard from,
    and (``recall``) the guard reminded of the ejections of its current window (from the audit
    log; a standby, which never ejects, skips reading it). ``keep``: only the workers it keeps
    (one shard's)."""
    workers = {name: dataclasses.replace(w, last_seen=max(w.last_seen, now))
               for name, w in store.load(keep).items()}
    fleet = Fleet(HealthPolicy(config), seed=seed if seed is not None else random.getrandbits(32),
                  workers=workers)
    if not recall:
        return fleet
    window = config.guard.window_s
    fleet.recall_ejections(
        r.at for r in parse_all(store.history(since=now - window, limit=10_000))
        if r.kind is Kind.TRANSITION and r.cause == "wear" and r.to_state == State.DRAINING.value
        and (keep is None or keep(str(r.worker))))
    return fleet
