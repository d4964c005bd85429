"""Where the checker keeps worker states, gate keys, operators' requests and its lease.

``ports`` says what each concern needs; ``redis_store`` and ``memory`` implement them all.
"""

from healthcheck.store.codec import from_dict, to_dict
from healthcheck.store.memory import InMemoryGuardBudgets, InMemoryHealthStore
from healthcheck.store.ports import (
    GateKeys,
    GuardBudget,
    HealthStore,
    LeaseStore,
    OperatorRequests,
    StateStore,
)
from healthcheck.store.redis_store import AUDIT_KEEP, RedisGuardBudget, RedisHealthStore

__all__ = ["AUDIT_KEEP", "GateKeys", "GuardBudget", "HealthStore", "InMemoryGuardBudgets",
           "InMemoryHealthStore", "LeaseStore", "OperatorRequests", "RedisGuardBudget",
           "RedisHealthStore", "StateStore", "from_dict", "to_dict"]
