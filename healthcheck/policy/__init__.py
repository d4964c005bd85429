"""The health policy: pure (stdlib only, no clock, no I/O). Observations and time in, states out."""

from __future__ import annotations

from healthcheck.policy.config import PolicyConfig, Threshold
from healthcheck.policy.fleet import Decision, Fleet, GuardFigures
from healthcheck.policy.machine import HealthPolicy, Step
from healthcheck.policy.model import Cause, Code, State, Transition, WorkerHealth
from healthcheck.policy.observations import Heartbeat, ProbeResult, Reading, WearReport
from healthcheck.policy.shards import Budget, Peers

__all__ = [
    "Budget", "Cause", "Code", "Decision", "Fleet", "GuardFigures", "HealthPolicy", "Heartbeat",
    "Peers", "PolicyConfig",
    "ProbeResult", "Reading", "State", "Step", "Threshold", "Transition", "WearReport",
    "WorkerHealth",
]
