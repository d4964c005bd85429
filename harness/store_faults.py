"""The store on a server of its own, put through a fault: the tests' and benchmarks' store that
pauses, refuses connections or fails over."""

from __future__ import annotations

import os
import signal

from harness.redis_server import (
    RedisServer,
)
from harness.sentinel import SentinelGroup

#: The faults a ``FaultyStore`` can be put through.
STORE_FAULTS = ("pause", "refuse", "failover")


class FaultyStore:
    """The store on a server of its own, and a fault to put it through: ``pause`` (SIGSTOP: a
    hung or overloaded server, a path that drops packets), ``refuse`` (the process gone:
    connections refused) or ``failover`` (a Sentinel group's master SIGKILLed); for the tests
    and benchmarks of a store at fault.

    Args:
        fault: one of ``STORE_FAULTS``.
        durable: for ``refuse``, the server writes each command to disk before answering, so
            that it comes back with its data, as a restarted production Redis would (what it
            lost would be the restart's doing, not the fault's).
    """

    def __init__(self, fault: str, durable: bool = True) -> None:
        self.fault = fault
        self.group = SentinelGroup().start() if fault == "failover" else None
        self.server = (None if self.group else
                       RedisServer(appendonly=True, args=("--appendfsync", "always")).start()
                       if fault == "refuse" and durable else RedisServer().start())

    @property
    def env(self) -> dict[str, str]:
        """The settings that put host's store on it."""
        if self.group is not None:
            return {"HOST_STORE_URL": self.group.url,
                    "HOST_SENTINEL_MASTER": self.group.master_name}
        assert self.server is not None
        return {"HOST_STORE_URL": self.server.url}

    def begin(self) -> None:
        """Start the fault."""
        if self.group is not None:
            self.group.kill_master()
        elif self.fault == "pause":
            assert self.server is not None and self.server.proc is not None
            os.kill(self.server.proc.pid, signal.SIGSTOP)
        else:
            assert self.server is not None
            self.server.kill()

    def end(self) -> None:
        """End it (a failover ends by itself)."""
        if self.group is not None:
            return  # the sentinels promote a replica by themselves
        assert self.server is not None
        if self.fault == "pause":
            assert self.server.proc is not None
            os.kill(self.server.proc.pid, signal.SIGCONT)
        else:
            self.server.start()

    def stop(self) -> None:
        """Stop the servers."""
        if self.group is not None:
            self.group.stop()
            return
        assert self.server is not None
        if self.server.proc is not None and self.server.proc.poll() is None:
            os.kill(self.server.proc.pid, signal.SIGCONT)
        self.server.stop()
