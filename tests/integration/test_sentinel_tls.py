"""A Sentinel group that speaks TLS only (servers, replication and sentinels; a self-signed
certificate for 127.0.0.1): with HOST_SENTINEL_TLS and the CA, the store, the broker and the
result backend reach it; without TLS nothing does."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_config.redis_url import RedisAddress, SentinelOptions
from harness.redis_server import self_signed
from harness.sentinel import SentinelGroup
from healthcheck.errors import StoreUnavailable
from healthcheck.store import RedisHealthStore
from tests.conftest import GROUND_TRUTH, WorkerFactory
from tests.support.cli import ingest_head

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def group(certificate: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tls=certificate).start()
    yield group
    group.stop()


@pytest.fixture
def host_env(host_env: dict[str, str], group: SentinelGroup, certificate: Path) -> dict[str, str]:
    return {**host_env, "HOST_BROKER_URL": group.url, "HOST_RESULT_BACKEND": group.url,
            "HOST_STORE_URL": group.url, "HOST_SENTINEL_MASTER": group.master_name,
            "HOST_SENTINEL_TLS": "true",
            "HOST_SENTINEL_TLS_CA_FILE": str(certificate / "cert.pem")}


def test_the_store_over_tls_and_nothing_without_it(group: SentinelGroup,
                                                   certificate: Path) -> None:
    tls = SentinelOptions(group.master_name, tls=True,
                          tls_ca_file=str(certificate / "cert.pem"))
    store = RedisHealthStore.from_url(RedisAddress(group.url, tls))
    assert (store.lease("a", 30) or "").endswith(":a")
    plain = RedisHealthStore.from_url(RedisAddress(group.url, SentinelOptions(group.master_name)))
    with pytest.raises(StoreUnavailable, match="No master found"):
        plain.get("w1")


@pytest.mark.skipif(not GROUND_TRUTH.exists(), reason=f"{GROUND_TRUTH} is absent")
def test_a_worker_and_ingest_over_tls(start_worker: WorkerFactory, host_env: dict[str, str],
                                      tmp_path: Path) -> None:
    start_worker("st1")
    results = ingest_head(GROUND_TRUTH, 50, host_env, tmp_path)
    assert len(results) == 50 and {r["status"] for r in results} == {"analysed"}
