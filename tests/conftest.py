"""Fixtures shared by every suite: a private redis-server, the app, real worker processes."""

from __future__ import annotations

import itertools
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from broker_config import redis_url
from broker_config.app import HostCelery
from broker_config.redis_url import SentinelOptions
from broker_config.settings import Settings
from harness.processes import WorkerProcess, node_name, terminate
from harness.rabbitmq_server import RabbitServer, RabbitServerNotFound
from harness.redis_server import RedisServer, RedisServerNotFound, free_port
from harness.sentinel import SentinelGroup
from harness.store_faults import FaultyStore
from tests.support.api_server import ApiServer
from workers.app import create_app

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
GROUND_TRUTH = SHARED_DATA / "tweets_groundtruth.tsv"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the session's own on a free port (never the machine's 6379)."""
    try:
        server = RedisServer().start()
    except RedisServerNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the private server, emptied before the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def faulty_store(request: pytest.FixtureRequest) -> Iterator[FaultyStore]:
    """host's store on a Redis of its own that the test can take away (pause, refuse, fail
    over): the fault is the test's indirect parameter. Stopped after the test."""
    store = FaultyStore(request.param)
    yield store
    store.stop()


@pytest.fixture(scope="session")
def sentinel_group() -> Iterator[SentinelGroup]:
    """A Sentinel group of the session's own (a master, two replicas, three sentinels), started
    when the first test needs it; tests that fail it over start their own."""
    try:
        group = SentinelGroup().start()
    except RedisServerNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    yield group
    group.stop()


@pytest.fixture
def sentinel_client(sentinel_group: SentinelGroup) -> Iterator[redis.Redis]:
    """A client of the group's master, reached through the sentinels; emptied before the test."""
    client = redis_url.client(sentinel_group.url, SentinelOptions(sentinel_group.master_name),
                              socket_timeout=5)
    client.flushall()
    yield client
    client.close()


#: The private RabbitMQ node's delivery acknowledgement timeout (RabbitMQ's default is 30
#: minutes): every test on it shows host holds no message that long.
RABBIT_CONSUMER_TIMEOUT_S = 60


@pytest.fixture(scope="session")
def rabbit_server() -> Iterator[RabbitServer]:
    """A RabbitMQ node of the session's own (own name, ports, port mapper and files; never the
    machine's node on 5672), started once, when the first test on RabbitMQ needs it."""
    try:
        server = RabbitServer(consumer_timeout_ms=RABBIT_CONSUMER_TIMEOUT_S * 1000).start()
    except RabbitServerNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """The broker of this test: ``redis``, unless parametrised (tests.support.brokers):
    ``amqp`` (classic queues) or ``amqp-quorum`` (quorum queues, a delivery limit of 2)."""
    return str(getattr(request, "param", "redis"))


@pytest.fixture
def broker_url(broker: str, redis_server: RedisServer,
               request: pytest.FixtureRequest) -> Iterator[str]:
    """The broker URL of this test. On RabbitMQ, a virtual host of the test's own on the
    session's node (removed afterwards), so nothing one test declares meets the next."""
    if broker == "redis":
        yield redis_server.url
        return
    rabbit: RabbitServer = request.getfixturevalue("rabbit_server")
    vhost = f"t{next(_vhosts)}"
    rabbit.ctl("add_vhost", vhost)
    rabbit.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield rabbit.url.rstrip("/") + "/" + vhost
    rabbit.ctl("delete_vhost", vhost)


_vhosts = itertools.count(1)


@pytest.fixture
def host_env(broker: str, broker_url: str, redis_server: RedisServer) -> dict[str, str]:
    """The environment a host process of this test runs with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOST_")}
    env.update(HOST_BROKER_URL=broker_url, HOST_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    if broker.startswith("amqp"):
        # The store and the results stay Redis; tasks fit in half the node's short timeout.
        env.update(HOST_STORE_URL=redis_server.url, HOST_RESULT_BACKEND=redis_server.url,
                   HOST_BROKER_CONSUMER_TIMEOUT=str(RABBIT_CONSUMER_TIMEOUT_S),
                   HOST_TASK_TIME_LIMIT=str(RABBIT_CONSUMER_TIMEOUT_S // 2),
                   HOST_TASK_SOFT_TIME_LIMIT=str(RABBIT_CONSUMER_TIMEOUT_S // 2 - 5))
    if broker == "amqp-quorum":
        # A small limit: a hand-back that counted as a delivery would lose messages here.
        env.update(HOST_QUEUE_TYPE="quorum", HOST_DELIVERY_LIMIT="2")
    return env


@pytest.fixture
def app(host_env: dict[str, str], redis_client: redis.Redis) -> HostCelery:
    """The host app pointed at the private servers, with the settings its processes have."""
    return create_app(Settings.from_env(host_env))


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(app: HostCelery, host_env: dict[str, str], tmp_path: Path,
                 request: pytest.FixtureRequest) -> Iterator[WorkerFactory]:
    """Start real ``celery -A host worker`` processes; every one is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(short: str = "w1", queues: tuple[str, ...] = (), concurrency: int = 1,
              env: dict[str, str] | None = None, wait: bool = True,
              extra_args: tuple[str, ...] = ()) -> WorkerProcess:
        worker = WorkerProcess(node_name(short), {**host_env, **(env or {})}, queues, concurrency,
                               log_path=tmp_path / f"{short}.log", extra_args=extra_args)
        started.append(worker.start())
        if wait:
            worker.wait_ready(app)
        return worker

    yield start
    for worker in started:
        worker.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for worker in started:
            if worker.log_path and worker.log_path.exists():
                print(f"--- {worker.name} log (tail) ---")
                lines = worker.log_path.read_text(errors="replace").splitlines()[-15:]
                print("\n".join(line[:300] for line in lines))


class CheckerProcess:
    """A `celery -A host healthcheck` child process with its metrics port."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path,
                 ca: Path | None = None) -> None:
        self.proc, self.port, self.log_path = proc, port, log_path
        self.tls = None if ca is None else ssl.create_default_context(cafile=str(ca))

    def url(self, path: str) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """Status and body of an HTTP GET on the checker (HTTPS when started with a CA)."""
        request = urllib.request.Request(self.url(path), headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.tls) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> None:
        terminate(self.proc)


CheckerFactory = Callable[..., CheckerProcess]


@pytest.fixture
def start_checker(host_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest,
                  redis_client: redis.Redis) -> Iterator[CheckerFactory]:
    """Start real `celery -A host healthcheck` processes; each is stopped after the test.

    The store is emptied first (``redis_client``): a checker resumes the fleet it finds there,
    and one an earlier test left (workers it expects to hear and never will) makes it not
    ready, whatever test runs first."""
    started: list[CheckerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, name: str = "checker",
              ca: Path | None = None) -> CheckerProcess:
        port = free_port()
        log_path = tmp_path / f"{name}.log"
        log = log_path.open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "healthcheck",
                                 "--metrics-port", str(port), *args],
                                env={**host_env, **(env or {})}, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        checker = CheckerProcess(proc, port, log_path, ca)
        started.append(checker)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"checker exited early:\n{log_path.read_text()[-3000:]}")
            try:
                if checker.get("/readyz")[0] == 200:
                    return checker
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"checker not ready within 30 s:\n{log_path.read_text()[-3000:]}")

    yield start
    for checker in started:
        checker.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for checker in started:
            print(f"--- {checker.log_path.name} (tail) ---")
            lines = checker.log_path.read_text(errors="replace").splitlines()[-25:]
            print("\n".join(line[:400] for line in lines))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Keep each phase's report on the item, so fixtures can print logs on failure."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


ApiFactory = Callable[..., ApiServer]


@pytest.fixture
def start_api(host_env: dict[str, str], tmp_path: Path,
              redis_client: redis.Redis) -> Iterator[ApiFactory]:
    """Start real ``celery -A host api`` processes (no control secret in their environment);
    each is stopped after the test. Their job files go under the test's directory."""
    started: list[ApiServer] = []

    def start(env: dict[str, str] | None = None, wait: bool = True, name: str = "api") -> ApiServer:
        server = ApiServer({**host_env, "HOST_API_JOBS_DIR": str(tmp_path / "api-jobs"),
                            **(env or {})}, tmp_path / f"{name}.log")
        started.append(server.start(wait))
        return server

    yield start
    for server in started:
        server.stop()
