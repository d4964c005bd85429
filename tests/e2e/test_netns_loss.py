"""The network faults the nemesis and the partition tests make are real: a cut drops every
packet, a loss of 30 % drops about that share, and ``whole`` drops none again."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.cli import REPO
from tests.support.netns import Link

pytestmark = pytest.mark.skipif(Link.unavailable() is not None, reason=str(Link.unavailable()))

SENT = 3000
RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(1.0)
print("ready", flush=True)
n = 0
try:
    while True:
        s.recv(64)
        n += 1
except TimeoutError:
    pass
print(n, flush=True)
"""


@pytest.fixture
def link() -> Iterator[Link]:
    net = Link(index=7).create()
    yield net
    net.close()


def delivered(link: Link, port: int = 47123) -> int:
    """Datagrams sent into the namespace that arrived there."""
    receiver = subprocess.Popen([*link.prefix, sys.executable, "-c", RECEIVER, link.ns_ip,
                                 str(port)], stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(SENT):
            s.sendto(b"x", (link.ns_ip, port))
            if i % 100 == 99:
                time.sleep(0.002)  # paced: the receiver's buffer never overflows
    out, _ = receiver.communicate(timeout=30)
    return int(out.strip())


def test_loss_drops_about_its_share_and_whole_none(link: Link) -> None:
    assert delivered(link) == SENT
    link.lose(0.3)
    lost = 1 - delivered(link) / SENT
    assert 0.22 < lost < 0.38, lost
    link.whole()
    assert delivered(link) == SENT


def test_a_cut_drops_everything(link: Link) -> None:
    link.cut()
    try:
        assert delivered(link) == 0
    finally:
        link.mend()
    assert delivered(link) == SENT


MAKE_LINKS = """
import sys, time
from tests.support.netns import Link
start = float(sys.argv[1])
while time.time() < start:
    pass
links = [Link(index=i + 1).create() for i in range(3)]
print(" ".join(link.host_ip for link in links), flush=True)
sys.stdin.read()  # held until the test has read every process's addresses
for link in links:
    link.close()
"""


def test_processes_making_links_at_once_each_get_addresses_of_their_own() -> None:
    """Two test sessions (or nemesis runs) start together: each link's address is its own."""
    start = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", MAKE_LINKS, str(start)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        addresses = [a for p in procs for a in (p.stdout.readline() if p.stdout else "").split()]
    finally:
        for p in procs:
            p.communicate("", timeout=30)
    assert len(addresses) == 9 and len(set(addresses)) == 9, addresses
