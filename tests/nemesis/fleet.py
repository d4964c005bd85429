"""The system the nemesis runs against: private servers, workers, checkers and the API, and the
faults it can do to each. Every process writes its log under the run's directory; those logs,
the results and the store's audit log are what the checker reads afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter, deque
from pathlib import Path
from typing import Any

import psutil

from api.keys import RedisKeyStore, new_key
from broker_config import keys
from broker_config.settings import Settings
from harness.api_server import ApiServer, api_env
from harness.processes import WorkerProcess, node_name, terminate
from harness.rabbitmq_server import RabbitServer
from harness.redis_server import RedisServer, free_port
from tests.support.netns import Link
from workers.app import create_app

REPO = Path(__file__).resolve().parents[2]
SECRET = "nemesis-control-secret"
WEAR = "cpu=100,spin=3"
#: The share of a worker's packets a ``net_loss`` fault drops, each way.
NET_LOSS = 0.3


PROFILES = ("redis", "amqp", "shards")


class Checker:
    def __init__(self, index: int, env: dict[str, str], log: Path, shard: int = 0) -> None:
        self.index, self.env, self.log, self.shard = index, env, log, shard
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "host", "healthcheck", "--metrics-port",
                 str(self.port), "--tick", "0.1", "--shard", str(self.shard)], env=self.env,
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)


class Fleet:
    """Two Redis servers (the broker with the results, durable across a restart; the store),
    ``workers`` workers, two checkers and the API. Profiles: ``redis``; ``amqp`` (the broker a
    private RabbitMQ node, the results on the durable Redis); ``shards`` (two shards, a leader
    and a standby checker each).

    Where network namespaces can be made (root, iproute2), each worker runs in one of its own,
    reaching the servers over a veth pair that the network faults cut or make lossy; the
    checkers, the API and the producers stay on this side."""

    def __init__(self, run_dir: Path, workers: int = 4, profile: str = "redis") -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}")
        self.dir, self.profile = run_dir, profile
        self.broker = RedisServer(appendonly=True, args=("--appendfsync", "always"))
        self.rabbit = RabbitServer() if profile == "amqp" else None
        self.store = RedisServer()
        self.shards = 2 if profile == "shards" else 1
        self.n = workers
        self.workers: list[WorkerProcess] = []
        self.checkers: list[Checker] = []
        self.api: ApiServer | None = None
        self.token = ""
        self.lock = threading.Lock()
        self.links: list[Link] = []
        self.network = Link.unavailable() is None
        #: Network faults under way on each worker's link, by kind: two that overlap on one
        #: worker end when the later ends, not the earlier.
        self.net_faults: Counter[tuple[str, int]] = Counter()
        #: The checkers paused as leaders, oldest first (-1: a pause that found none).
        self.paused_leaders: deque[int] = deque()
        #: Why each worker was not back in rotation when recovery gave up.
        self.not_back: dict[str, str] = {}

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
        if self.rabbit is not None:
            env.update(HOST_BROKER_URL=self.rabbit.url, HOST_RESULT_BACKEND=self.broker.url)
        else:
            env.update(HOST_BROKER_URL=self.broker.url)
        env.update(HOST_STORE_URL=self.store.url, HOST_CHECKER_SHARDS=str(self.shards),
                   HOST_CONTROL_SECRET=SECRET, HOST_WEAR_INTERVAL="0.25",
                   HOST_LOG_FORMAT="json", HOST_API_RATE="100000",
                   HOST_API_JOBS_DIR=str(self.dir / "api-jobs"), PYTHONUNBUFFERED="1")
        return env

    def worker_env(self, i: int) -> dict[str, str]:
        """A worker's environment: the servers' addresses as seen from its namespace."""
        env = self.env
        if not self.links:
            return env
        there = self.links[i].host_ip
        return {k: v.replace("127.0.0.1", there) if k in ("HOST_BROKER_URL", "HOST_STORE_URL",
                                                          "HOST_RESULT_BACKEND") else v
                for k, v in env.items()}

    def start(self) -> None:
        if self.network:
            for i in range(self.n):
                self.links.append(Link(index=i + 1).create())  # each made before the next
            bind = ("127.0.0.1", *(link.host_ip for link in self.links))
            self.broker.bind = self.store.bind = bind
            if self.rabbit is not None:
                self.rabbit.listen_also([link.host_ip for link in self.links])
        self.broker.start()
        self.store.start()
        if self.rabbit is not None:
            self.rabbit.start()
        app = create_app(Settings.from_env(self.env))
        self.workers = [self._worker(i) for i in range(self.n)]
        for w in self.workers:
            w.wait_ready(app, timeout=60)
        self.checkers = [Checker(i, self.env, self.dir / f"checker{i}.log", i % self.shards)
                         for i in range(2 * self.shards)]
        for c in self.checkers:
            c.start()
        key, self.token = new_key("nemesis", ("submit", "read"))
        RedisKeyStore(self._store_client()).put(key)
        self.api = ApiServer(api_env(self.env), self.dir / "api.log").start()

    def _worker(self, i: int) -> WorkerProcess:
        return WorkerProcess(node_name(f"nw{i}"), self.worker_env(i), (), 1,
                             log_path=self.dir / f"worker{i}.log",
                             prefix=self.links[i].prefix if self.links else ()).start()

    def _store_client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.store.url, decode_responses=True)

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        for c in self.checkers:
            c.signal(signal.SIGCONT)
            if c.proc is not None:
                terminate(c.proc)
        for w in self.workers:
            w.signal(signal.SIGCONT)
            w.stop()
        for server in (self.broker, self.store):
            if server.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.proc.pid, signal.SIGCONT)
            server.stop()
        if self.rabbit is not None:
            self._rabbit_signal(signal.SIGCONT)
            self.rabbit.stop()
        for link in self.links:
            link.close()

    def _rabbit_signal(self, sig: int) -> None:
        if self.rabbit is not None and self.rabbit.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.rabbit.proc.pid, sig)

    # --- faults: each a begin and an end ------------------------------------------------

    def begin(self, kind: str, target: int) -> str:
        """Start a fault; a word on what it did."""
        return str(getattr(self, f"_begin_{kind}")(target))

    def end(self, kind: str, target: int) -> str:
        fn = getattr(self, f"_end_{kind}", None)
        return str(fn(target)) if fn else ""

    def _begin_worker_kill(self, i: int) -> str:
        with self.lock:
            self.workers[i].signal(signal.SIGKILL)
            return f"killed {self.workers[i].name}"

    def _end_worker_kill(self, i: int) -> str:
        with self.lock:
            old = self.workers[i]
            if old.alive():
                return "still alive"
            old.stop(timeout=1)
            self.workers[i] = self._worker(i)
            return f"restarted {old.name}"

    def _begin_worker_pause(self, i: int) -> str:
        pid = self.workers[i].pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return f"paused {self.workers[i].name}"

    def _end_worker_pause(self, i: int) -> str:
        pid = self.workers[i].pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        return "resumed"

    def _begin_pool_kill(self, i: int) -> str:
        pid = self.workers[i].pid
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(pid).children() if pid else []
            if children:
                children[0].kill()
                return f"killed pool child {children[0].pid} of {self.workers[i].name}"
        return "no pool child"

    def _begin_checker_kill(self, i: int) -> str:
        self.checkers[i].signal(signal.SIGKILL)
        return f"killed checker {i}"

    def _end_checker_kill(self, i: int) -> str:
        c = self.checkers[i]
        if c.proc is not None and c.proc.poll() is None:
            return "still alive"
        c.start()
        return f"restarted checker {i}"

    def _begin_checker_pause(self, i: int) -> str:
        self.checkers[i].signal(signal.SIGSTOP)
        return f"paused checker {i}"

    def _end_checker_pause(self, i: int) -> str:
        self.checkers[i].signal(signal.SIGCONT)
        return "resumed"

    def _pause(self, server: RedisServer, sig: int) -> str:
        if server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.proc.pid, sig)
        return "paused" if sig == signal.SIGSTOP else "resumed"

    def _begin_store_pause(self, _: int) -> str:
        return self._pause(self.store, signal.SIGSTOP)

    def _end_store_pause(self, _: int) -> str:
        return self._pause(self.store, signal.SIGCONT)

    def _begin_broker_pause(self, _: int) -> str:
        if self.rabbit is not None:
            self._rabbit_signal(signal.SIGSTOP)
            return "rabbitmq paused"
        return self._pause(self.broker, signal.SIGSTOP)

    def _end_broker_pause(self, _: int) -> str:
        if self.rabbit is not None:
            self._rabbit_signal(signal.SIGCONT)
            return "rabbitmq resumed"
        return self._pause(self.broker, signal.SIGCONT)

    def _begin_broker_restart(self, _: int) -> str:
        if self.rabbit is not None:
            with self.lock:
                self._rabbit_signal(signal.SIGCONT)
                self.rabbit.kill()
            return "rabbitmq killed"
        with self.lock:
            if self.broker.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.broker.proc.pid, signal.SIGCONT)
            self.broker.kill()
        return "broker killed"

    def _end_broker_restart(self, _: int) -> str:
        if self.rabbit is not None:
            with self.lock:
                if self.rabbit.proc is None:
                    self.rabbit.start(timeout=90)
            return "rabbitmq started"
        with self.lock:
            if self.broker.proc is None:
                self.broker.start(timeout=30)
        return "broker started"

    def _begin_wear(self, i: int) -> str:
        return self.fleet_command("inject", self.workers[i].name, WEAR)

    def _end_wear(self, i: int) -> str:
        cleared = self.fleet_command("inject", self.workers[i].name)
        return f"{cleared}; {self.restore_if_out(i)}"

    def _begin_operator_drain(self, i: int) -> str:
        return self.fleet_command("drain", self.workers[i].name, "--reason", "nemesis", "--yes")

    def _end_operator_drain(self, i: int) -> str:
        return self.restore_if_out(i)

    def _begin_liar(self, i: int) -> str:
        return self.fleet_command("inject", self.workers[i].name, "wrong_answers=1")

    def _end_liar(self, i: int) -> str:
        return self._end_wear(i)

    def _begin_platform_restart(self, i: int) -> str:
        """What a platform does to restart a worker, whatever its state: the stop hook (a
        preStop, ExecStop: `fleet drain --stopping --wait`), SIGTERM, a new process."""
        name = self.workers[i].name
        said = self.fleet_command("drain", name, "--stopping", "--wait", "--timeout", "20",
                                  "--reason", "nemesis: platform restart", timeout=40)
        with self.lock:
            self.workers[i].stop(timeout=30)
            self.workers[i] = self._worker(i)
        return f"{said}; restarted {name}"

    def _link(self, i: int) -> Link:
        if not self.links:
            raise RuntimeError(f"no network namespace here: {Link.unavailable()}")
        return self.links[i]

    def _net_begins(self, kind: str, i: int) -> bool:
        """True when no fault of ``kind`` was under way on worker ``i``'s link."""
        self._link(i)  # there is one (raises otherwise)
        with self.lock:
            self.net_faults[kind, i] += 1
            return self.net_faults[kind, i] == 1

    def _net_ends(self, kind: str, i: int, undo: Any) -> bool:
        """When the last fault of ``kind`` on worker ``i``'s link ends, ``undo`` it: True."""
        with self.lock:
            self.net_faults[kind, i] = max(0, self.net_faults[kind, i] - 1)
            last = self.net_faults[kind, i] == 0
        if last:
            undo(self._link(i))
        return last

    def _begin_net_cut(self, i: int) -> str:
        if self._net_begins("cut", i):
            self._link(i).cut()
        return f"cut {self.workers[i].name} off"

    def _end_net_cut(self, i: int) -> str:
        return "mended" if self._net_ends("cut", i, Link.mend) else "still cut (another goes on)"

    def _begin_net_loss(self, i: int) -> str:
        if self._net_begins("loss", i):
            self._link(i).lose(NET_LOSS)
        return f"{NET_LOSS:.0%} of {self.workers[i].name}'s packets lost each way"

    def _end_net_loss(self, i: int) -> str:
        return "no loss" if self._net_ends("loss", i, Link.whole) else "still lossy (another goes on)"

    def _begin_leader_pause(self, shard: int) -> str:
        """SIGSTOP whichever checker holds shard ``shard``'s lease now."""
        try:
            token = self._store_client().get(keys.leader(shard)) or ""
        except Exception as exc:
            return f"no leader known: {type(exc).__name__}"
        for i, c in enumerate(self.checkers):
            if c.proc is not None and c.proc.poll() is None and f"-{c.proc.pid}-" in token:
                c.signal(signal.SIGSTOP)
                with self.lock:
                    self.paused_leaders.append(i)
                return f"paused checker {i}, the leader ({token})"
        with self.lock:
            self.paused_leaders.append(-1)
        return f"no live checker holds the lease ({token or 'none'})"

    def _end_leader_pause(self, _: int) -> str:
        with self.lock:
            i = self.paused_leaders.popleft() if self.paused_leaders else -1
        if i < 0:
            return "nothing to resume"
        self.checkers[i].signal(signal.SIGCONT)
        return f"resumed checker {i}"

    def _begin_bad_inputs(self, _: int) -> str:
        return "bad inputs"  # the workload sends them (it watches for this fault)

    # --- a person at the command line ------------------------------------------------------

    def fleet_command(self, *args: str, timeout: float = 60) -> str:
        try:
            proc = subprocess.run([sys.executable, "-m", "celery", "-A", "host", "fleet", *args],
                                  env=self.env, cwd=REPO, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"fleet {args[0]}: timed out"
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return f"fleet {args[0]} exit {proc.returncode}: {tail[0][:160]}"

    def states(self) -> dict[str, str]:
        """Each worker's state as the checker last stored it ({} while the store is away)."""
        try:
            raw = self._store_client().hgetall("host:workers")
        except Exception:
            return {}
        return {name: json.loads(v).get("state", "") for name, v in raw.items()}

    def in_rotation(self) -> dict[str, str]:
        """Why each worker is not back in rotation ("" when it is): by the checker's word
        (HEALTHY) and by its own (its last report stored: gate open, consuming its queues)."""
        try:
            reports = {n: json.loads(v) for n, v in
                       self._store_client().hgetall("host:reports").items()}
        except Exception:
            reports = {}
        states = self.states()
        why = {}
        for w in self.workers:
            state, said = states.get(w.name, ""), reports.get(w.name) or {}
            consuming, queues = said.get("consuming") or [], said.get("queues") or []
            if state != "HEALTHY":
                why[w.name] = f"{state or 'unknown'} by the checker's word"
            elif said.get("gate") != "open" or not queues or set(consuming) != set(queues):
                why[w.name] = (f"HEALTHY, but it says: gate {said.get('gate')}, consuming "
                               f"{consuming} of {queues}")
            else:
                why[w.name] = ""
        return why

    def restore_if_out(self, i: int) -> str:
        name = self.workers[i].name
        state = self.states().get(name, "")
        if state in ("QUARANTINED", "MAINTENANCE", "DRAINING"):
            return self.fleet_command("restore", name, "--force", "--reason", "nemesis heals")
        return f"{name} is {state or 'unknown'}: nothing to restore"

    def heal(self) -> list[str]:
        """Every fault ended: processes resumed or restarted, injections cleared."""
        said = []
        self.net_faults.clear()
        self.paused_leaders.clear()
        for link in self.links:
            link.mend()
            link.whole()
        for server in (self.broker, self.store):
            self._pause(server, signal.SIGCONT)
        if self.rabbit is not None:
            self._rabbit_signal(signal.SIGCONT)
            if self.rabbit.proc is None:
                self.rabbit.start(timeout=90)
                said.append("rabbitmq started")
        if self.broker.proc is None:
            self.broker.start(timeout=30)
            said.append("broker started")
        for i, w in enumerate(self.workers):
            self._end_worker_pause(i)
            if not w.alive():
                said.append(self._end_worker_kill(i))
        for i, c in enumerate(self.checkers):
            c.signal(signal.SIGCONT)
            if c.proc is None or c.proc.poll() is not None:
                said.append(self._end_checker_kill(i))
        for i in range(self.n):
            said.append(self.fleet_command("inject", self.workers[i].name))
        return said
