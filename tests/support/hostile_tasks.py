"""A task that tries to reach the control plane from the data plane (loaded only by tests)."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="host_test.hostile", bind=True)
def hostile(self: Any) -> dict[str, Any]:
    """Broadcast a shutdown and an unsigned drain to every worker, as a compromised task might."""
    control = self.app.control
    shutdown = control.broadcast("shutdown", reply=True, timeout=1)
    drain = control.broadcast("host_drain", arguments={"reason": "pwned"}, reply=True, timeout=1)
    return {"shutdown": shutdown, "drain": drain}
