"""A network namespace of the test's own, joined to this one by a veth pair, so that a real
network cut, or a loss of packets, can be made between a worker and Redis (root and iproute2
needed; addresses in the benchmarking range 198.18.0.0/15, which exist only inside this test).

Loss is a classic BPF program on the veth's clsact hooks, in both directions: this kernel has
no netem and no tc actions, but cls_bpf in direct-action mode runs, and classic BPF can read a
random number (the ancillary load ``SKF_AD_RANDOM``)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

#: Classic BPF's ancillary load of a random 32-bit number: SKF_AD_OFF (-0x1000) + SKF_AD_RANDOM.
_LOAD_RANDOM = 0xFFFFF000 + 56
#: What a direct-action tc program returns: let the packet through, or drop it.
_TC_ACT_OK, _TC_ACT_SHOT = 0, 2


def loss_program(fraction: float) -> str:
    """tc's bytecode for a program that drops ``fraction`` of the packets, each at random:
    load a random number; at or above the threshold, let it through; below, drop it."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a fraction of packets is between 0 and 1, not {fraction}")
    threshold = min(int(fraction * 2**32), 2**32 - 1)
    code = [(0x20, 0, 0, _LOAD_RANDOM),       # ld [random]
            (0x35, 1, 0, threshold),          # jge #threshold, +1 (pass), +0 (drop)
            (0x06, 0, 0, _TC_ACT_SHOT),       # ret #shot
            (0x06, 0, 0, _TC_ACT_OK)]         # ret #ok
    return f"{len(code)}," + ",".join(" ".join(map(str, op)) for op in code) + ","


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Link:
    """Namespace ``host-p<pid>`` (``host-p<pid>-<index>`` for a process's second and later):
    this side ``198.18.<k>.1``, the other ``198.18.<k>.2``, ``k`` the first from the process id
    on that no address of this machine uses yet. Processes choose under one lock, each until
    its link holds its address: two test sessions, or two nemesis runs, start at once and would
    otherwise both see a ``k`` free and both take it (seen: two runs started together, each
    with a worker that never reached its server)."""

    #: The lock every process on this machine takes to choose and claim an address.
    LOCK = Path(tempfile.gettempdir()) / "host-netns.lock"

    def __init__(self, index: int = 0) -> None:
        self.index = index
        tag = f"{os.getpid()}" if index == 0 else f"{os.getpid()}-{index}"
        self.ns = f"host-p{tag}"
        self.here, self.there = f"hp{tag}a"[:15], f"hp{tag}b"[:15]
        self.host_ip = self.ns_ip = ""  # chosen when it is created

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
        with self.LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            k = self._free_k()
            self.host_ip, self.ns_ip = f"198.18.{k}.1", f"198.18.{k}.2"
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.here)
        _ip("link", "set", self.here, "up")
        for args in (("addr", "add", f"{self.ns_ip}/30", "dev", self.there),
                     ("link", "set", self.there, "up"), ("link", "set", "lo", "up")):
            _ip("netns", "exec", self.ns, "ip", *args)
        return self

    def _free_k(self) -> int:
        used = _ip("-o", "-4", "addr", "show").stdout
        k = (os.getpid() + self.index) % 250 + 1
        for _ in range(250):
            if f" 198.18.{k}." not in used:
                return k
            k = k % 250 + 1
        raise RuntimeError("every 198.18.<k>.0/30 for k in 1..250 is in use on this machine")

    @property
    def prefix(self) -> tuple[str, ...]:
        """Run a command inside the namespace."""
        return ("ip", "netns", "exec", self.ns)

    def cut(self) -> None:
        """Every packet between the namespace and here is dropped (nothing is reset)."""
        _ip("link", "set", self.here, "down")

    def mend(self) -> None:
        _ip("link", "set", self.here, "up")

    def lose(self, fraction: float) -> None:
        """Drop ``fraction`` of the packets each way, at random, until ``whole``."""
        self.whole()
        program = loss_program(fraction)
        _ip_tc = ("tc", "filter", "add", "dev", self.here)
        for hook in ("ingress", "egress"):
            subprocess.run([*_ip_tc, hook, "bpf", "da", "bytecode", program],
                           capture_output=True, text=True, check=True)

    def whole(self) -> None:
        """No packet dropped any more (``lose`` undone)."""
        subprocess.run(["tc", "qdisc", "del", "dev", self.here, "clsact"],
                       capture_output=True, check=False)
        subprocess.run(["tc", "qdisc", "add", "dev", self.here, "clsact"],
                       capture_output=True, check=True)

    def close(self) -> None:
        _ip("netns", "del", self.ns, check=False)
        _ip("link", "del", self.here, check=False)
