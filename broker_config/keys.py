"""Every Redis key host writes, built in one place under one prefix."""

from __future__ import annotations

PREFIX = "host:"

#: List of dead-letter records, newest first (JSON strings), trimmed to HOST_DEADLETTER_KEEP.
DEADLETTER = PREFIX + "deadletter"
#: Hash of dead-letter counts by reason code, plus the field ``total``.
DEADLETTER_COUNTS = PREFIX + "deadletter:counts"
#: Hash: worker name -> its health (JSON), as the checker last stored it.
WORKERS = PREFIX + "workers"
#: Stream of audit records: every transition, drain confirmation and operator action.
AUDIT = PREFIX + "audit"


def gate(worker: str) -> str:
    """Set (to the reason) while the checker holds ``worker`` out of rotation; absent otherwise.

    Pool processes check it before starting any work-queue task, so a verdict takes effect
    the moment the checker records it, before the worker has even heard of it.
    """
    return f"{PREFIX}gate:{worker}"
