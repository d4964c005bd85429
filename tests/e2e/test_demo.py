"""`celery -A host demo`: runs the whole system and leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import GROUND_TRUTH
from tests.support.cli import REPO

#: Set in the demo's environment, so that its processes (which inherit it) are told apart
#: from every other test's workers and private redis-servers on the machine.
MARK = "DEMO_TEST_RUN"
RUN = uuid.uuid4().hex
#: The demo's TMPDIR: its embedded Redis's files are under it.
TMP = Path(tempfile.mkdtemp(prefix="host-demo-test-"))


def host_processes() -> set[int]:
    """Pids of the demo's worker, checker and API processes (its environment is theirs) and private
    redis-servers (they chdir into a host-redis- dir under the demo's TMPDIR; Redis overwrites
    its environment with its title), wherever they are in the process tree: an orphan counts."""
    found = set()
    for p in psutil.process_iter(["pid", "name", "cmdline", "cwd"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["name"] == "redis-server":
            if (p.info["cwd"] or "").startswith(str(TMP / "host-redis-")):
                found.add(p.info["pid"])
            continue
        if not any(f"-A host {role}" in cmd for role in ("worker", "healthcheck", "api")):
            continue
        try:
            if p.environ().get(MARK) == RUN:
                found.add(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def redis_pids(pids: set[int]) -> set[int]:
    """The redis-servers among ``pids``."""
    return {pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).name() == "redis-server"}


def wait_for_no_new(before: set[int], deadline_s: float = 10.0) -> set[int]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        stray = host_processes() - before
        if not stray:
            return stray
        time.sleep(0.1)
    return host_processes() - before


def stop(proc: subprocess.Popen[bytes], before: set[int]) -> None:
    """Stop a demo as Ctrl-C would, then anything of its own still running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    kill_left(before)


def kill_left(before: set[int]) -> None:
    """SIGKILL whatever of the demo's is still running."""
    for pid in host_processes() - before:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()


@pytest.fixture
def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
    env["HOST_LOG_FORMAT"] = "json"
    env[MARK] = RUN
    env["TMPDIR"] = str(TMP)
    return env


class TestDemo:
    def test_runs_the_sample_end_to_end_and_cleans_up(self, demo_env: dict[str, str]) -> None:
        """No broker configured: embedded Redis, the sample analysed (a quarter of it through
        the HTTP API), one worker worn out and drained midway with nothing started on it
        afterwards, and nothing left running."""
        before = host_processes()
        try:
            proc = subprocess.run([sys.executable, "-m", "celery", "-A", "host", "demo", "--json"],
                                  env=demo_env, cwd=REPO, capture_output=True, text=True,
                                  timeout=240, check=False)
        except subprocess.TimeoutExpired:  # run() killed the demo: its fleet goes too
            kill_left(before)
            raise
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        sample_lines = [ln for ln in (REPO / "cli" / "data" / "sample.txt").read_bytes().split(b"\n")
                        if ln.strip()]
        # a quarter went through the HTTP API, one request each; every line is answered once
        api = summary["api"]
        assert summary["inputs"] + api["sent"] == len(sample_lines)
        assert api["sent"] == len(sample_lines) // 4 and api["complete"], api
        assert api["analysed"] > 0 and api["failed"] == 0
        assert summary["analysed"] + summary["rejected"] == summary["inputs"]
        assert summary["rejected"] + sum(api["rejected"].values()) >= 10  # hostile lines
        assert "HTTP API: http://127.0.0.1:" in proc.stderr
        assert len(summary["by_worker"]) == 3
        assert "embedded Redis" in proc.stderr
        drain = summary["drain"]
        assert drain["drained"] is True, drain
        assert drain["state_now"] in ("DRAINING", "QUARANTINED")
        assert drain["tasks_started_on_it_after_verdict"] == 0
        assert drain["analysed_after_verdict_by_others"] > 0
        assert drain["drained_after_injection_s"] < 10
        assert wait_for_no_new(before) == set()

    @pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
    def test_ctrl_c_stops_everything(self, demo_env: dict[str, str], tmp_path: Path) -> None:
        """Ctrl-C in the middle of a run stops every worker and the embedded Redis."""
        before = host_processes()
        log = (tmp_path / "demo.err").open("w")
        # Far more than the demo gets through before the Ctrl-C (4,200 tweets took 12 s, and
        # once the machine was slow enough for the demo to finish first and exit 0)
        source = tmp_path / "many.tsv"
        source.write_bytes(GROUND_TRUTH.read_bytes() * 20)
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "demo", "--input",
                                 str(source)], env=demo_env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=log)
        try:
            deadline = time.monotonic() + 90
            while "workers ready" not in (tmp_path / "demo.err").read_text():
                assert proc.poll() is None, (tmp_path / "demo.err").read_text()
                assert time.monotonic() < deadline, "demo never became ready"
                time.sleep(0.1)
            started = host_processes() - before
            assert len(redis_pids(started)) == 1  # the embedded Redis
            assert len(started) >= 4  # and the workers
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 130
        except BaseException:
            stop(proc, before)  # a failed run leaves no fleet behind for the next tests
            raise
        finally:
            log.close()
        assert wait_for_no_new(before) == set()
