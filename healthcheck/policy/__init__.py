"""The health policy: pure (stdlib only, no clock, no I/O). Observations and time in, states out."""

from __future__ import annotations

from healthcheck.policy.config import PolicyConfig, Threshold
from healthcheck.policy.fleet import Decision, Fleet, GuardFigures
from healthcheck.policy.machine import HealthPolicy, Step
from healthcheck.policy.model import (
    Cause,
    Code,
    Heartbeat,
    ProbeResult,
    Reading,
    State,
    Transition,
    WearReport,
    WorkerHealth,
)

__all__ = [
    "Cause", "Code", "Decision", "Fleet", "GuardFigures", "HealthPolicy", "Heartbeat", "PolicyConfig",
    "ProbeResult", "Reading", "State", "Step", "Threshold", "Transition", "WearReport",
    "WorkerHealth",
]
