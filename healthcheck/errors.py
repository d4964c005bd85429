"""Errors of the health checker.

    HealthcheckError
    ├── StoreUnavailable      the Redis that keeps states and the audit log did not answer
    ├── ControlUnavailable    the broker did not carry a control command (no reply is not this)
    └── LeaseLost             another checker holds the lease: this one's write was refused
"""

from __future__ import annotations


class HealthcheckError(Exception):
    """Base of the checker's errors."""


class StoreUnavailable(HealthcheckError):
    """The store did not answer; the checker changes nothing and retries (fail static)."""


class ControlUnavailable(HealthcheckError):
    """A control command could not be sent."""


class LeaseLost(HealthcheckError):
    """A fenced write was refused: this checker no longer leads and must not act."""
