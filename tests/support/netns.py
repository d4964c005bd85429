"""A network namespace of the test's own, joined to this one by a veth pair, so that a real
network cut can be made between a worker and Redis (root and iproute2 needed; addresses in the
benchmarking range 198.18.0.0/15, which exist only inside this test)."""

from __future__ import annotations

import os
import shutil
import subprocess


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Link:
    """Namespace ``host-p<pid>``: this side ``198.18.<k>.1``, the other ``198.18.<k>.2``, with
    ``k`` from the process id, moved on past any ``k`` this machine already uses (two test
    sessions run at once: ``make test``)."""

    def __init__(self) -> None:
        pid = os.getpid()
        used = _ip("-o", "-4", "addr", "show", check=False).stdout if shutil.which("ip") else ""
        k = pid % 250 + 1
        for _ in range(250):
            if f" 198.18.{k}." not in used:
                break
            k = k % 250 + 1
        self.ns = f"host-p{pid}"
        self.here, self.there = f"hp{pid}a"[:15], f"hp{pid}b"[:15]
        self.host_ip, self.ns_ip = f"198.18.{k}.1", f"198.18.{k}.2"

    @staticmethod
    def unavailable() -> str | None:
        """Why no namespace can be made here (None when it can)."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "iproute2 (ip) is not installed"
        return None

    def create(self) -> Link:
        self.close()
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.here, "type", "veth", "peer", "name", self.there)
        _ip("link", "set", self.there, "netns", self.ns)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.here)
        _ip("link", "set", self.here, "up")
        for args in (("addr", "add", f"{self.ns_ip}/30", "dev", self.there),
                     ("link", "set", self.there, "up"), ("link", "set", "lo", "up")):
            _ip("netns", "exec", self.ns, "ip", *args)
        return self

    @property
    def prefix(self) -> tuple[str, ...]:
        """Run a command inside the namespace."""
        return ("ip", "netns", "exec", self.ns)

    def cut(self) -> None:
        """Every packet between the namespace and here is dropped (nothing is reset)."""
        _ip("link", "set", self.here, "down")

    def mend(self) -> None:
        _ip("link", "set", self.here, "up")

    def close(self) -> None:
        _ip("netns", "del", self.ns, check=False)
        _ip("link", "del", self.here, check=False)
