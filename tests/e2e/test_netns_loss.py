"""The network faults the nemesis and the partition tests make are real: a cut drops every
packet, a loss of 30 % drops about that share, and ``whole`` drops none again."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

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
