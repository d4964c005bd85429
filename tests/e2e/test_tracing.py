"""OpenTelemetry traces (HOST_TRACING) from real processes to a real OTLP/HTTP endpoint: each
message's trace runs from its producer (``ingest``, a job, the API) through the worker that ran
it, parent to child across processes, with what host adds: the batch, the gate, a refusal and
its hand-back, a dead letter and its reason."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import redis

from broker_config import keys
from harness.otlp_receiver import OtlpReceiver, Span
from tests.conftest import ApiFactory, WorkerFactory
from tests.support.cli import REPO, celery, read_jsonl
from tests.support.polling import wait_until


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    yield r
    r.stop()


@pytest.fixture
def traced(host_env: dict[str, str], receiver: OtlpReceiver) -> dict[str, str]:
    """The environment of a traced process: HOST_TRACING on, spans to the receiver quickly."""
    return {**host_env, "HOST_TRACING": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100", "HOST_WEAR_INTERVAL": "0.5"}


def chain(spans: list[Span], leaf: Span) -> list[Span]:
    """``leaf`` and its ancestors, root first (as far as the spans received go)."""
    by_id = {s.span_id: s for s in spans}
    out = [leaf]
    while out[-1].parent and out[-1].parent in by_id:
        out.append(by_id[out[-1].parent])
    return out[::-1]


def names(spans: list[Span]) -> list[tuple[str, str]]:
    return [(s.service, s.name) for s in spans]


def traces_from(receiver: OtlpReceiver, service: str, task: str) -> list[list[Span]]:
    """Every whole chain of spans from a root in ``service`` down to a worker's run of ``task``.

    A chain whose top span still has a parent is not whole yet: a parent ends after its
    children (an HTTP request's span after the answer is sent), so it is exported later."""
    spans = receiver.spans()
    return [c for r in runs(receiver, task)
            if (c := chain(spans, r))[0].service == service and not c[0].parent]


def runs(receiver: OtlpReceiver, task: str, where: Callable[[Span], bool] = lambda s: True,
         ) -> list[Span]:
    """The workers' run spans of ``task`` (a prefix: ``host.analyse`` is either analyse task)."""
    return [s for s in receiver.spans()
            if s.name.startswith(f"run/{task}") and s.service == "host-worker" and where(s)]


@pytest.mark.background  # real processes exporting spans, waited for
class TestTraces:
    def test_from_ingest_through_the_worker_with_the_batch_and_a_dead_letter(
            self, start_worker: WorkerFactory, traced: dict[str, str], receiver: OtlpReceiver,
            tmp_path: Path) -> None:
        worker = start_worker("tr1", env=traced).name
        src = tmp_path / "in.txt"
        src.write_text("what a lovely day\n{not json\nthis is awful\n")
        done = celery("ingest", str(src), "--out", str(tmp_path / "out.jsonl"), "--batch", "3",
                      env=traced)
        assert len(read_jsonl(tmp_path / "out.jsonl")) == 3, done.stderr[-2000:]

        [path] = wait_until(partial(traces_from, receiver, "host-ingest", "host.analyse"), 30,
                            "a trace from ingest to the worker (one batch of 3)")
        assert names(path) == [("host-ingest", "host.send"),
                               ("host-ingest", "apply_async/host.analyse_batch"),
                               ("host-worker", "run/host.analyse_batch")]
        send, publish, run = path
        assert len({s.trace_id for s in path}) == 1
        assert (publish.kind, run.kind) == ("PRODUCER", "CONSUMER")
        assert send.attributes["host.batch.size"] == 3
        assert send.attributes["host.batch.ref_first"] == f"{src}:1"
        assert send.attributes["host.batch.ref_last"] == f"{src}:3"
        assert run.attributes["host.gate"] == "open" and run.attributes["host.worker"] == worker

        [(_, attrs)] = [e for e in run.events if e[0] == "host.dead_letter"]
        assert attrs["host.ref"] == f"{src}:2" and attrs["host.reason"] and \
            attrs["host.stage"] == "worker"

    def test_a_refusal_by_a_closed_gate_and_the_healthy_run_in_one_trace(
            self, start_worker: WorkerFactory, traced: dict[str, str], receiver: OtlpReceiver,
            tmp_path: Path, redis_client: redis.Redis) -> None:
        gated = start_worker("tr2", env=traced, concurrency=2)
        redis_client.set(keys.gate(gated.name), "closed by the test")  # its checker never told
        src = tmp_path / "in.txt"
        src.write_text("".join(f"tweet number {i} is fine\n" for i in range(40)))
        ingest = subprocess.Popen([sys.executable, "-m", "celery", "-A", "host", "ingest",
                                   str(src), "--out", str(tmp_path / "out.jsonl"), "--batch", "1"],
                                  env=traced, cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_until(lambda: runs(receiver, "host.analyse",
                                lambda s: s.attributes.get("host.gate") == "closed"),
                   30, "a refusal traced")
        start_worker("tr3", env=traced)
        assert ingest.wait(120) in (0, 1)
        assert len(read_jsonl(tmp_path / "out.jsonl")) == 40

        def refused_then_run() -> list[tuple[Span, Span]]:
            found = []
            for refused in runs(receiver, "host.analyse",
                                lambda s: s.attributes.get("host.gate") == "closed"):
                for ran in runs(receiver, "host.analyse",
                                lambda s: s.attributes.get("host.gate") == "open"):
                    if ran.trace_id == refused.trace_id:
                        found.append((refused, ran))
            return found

        refused, ran = wait_until(refused_then_run, 30, "a refused message's run, same trace")[0]
        [(_, attrs)] = [e for e in refused.events if e[0] == "host.gate.refused"]
        assert attrs["host.handed_back"] is True and gated.name in attrs["host.gate.reason"]
        assert refused.parent == ran.parent  # both runs of the one message its producer sent

    def test_from_an_http_request_through_the_dispatcher_to_the_worker(
            self, start_worker: WorkerFactory, start_api: ApiFactory, traced: dict[str, str],
            receiver: OtlpReceiver) -> None:
        start_worker("tr4", env=traced)
        server = start_api(env=traced)
        with server.client(server.key()) as c:
            r = c.post("/v1/messages", params={"wait": 10}, json=[{"text": "so good"},
                                                                   {"text": "so bad"}])
            assert r.status_code == 200, r.text

        [path] = wait_until(partial(traces_from, receiver, "host-api", "host.analyse_batch"), 30,
                            "a trace from the API to the worker")
        assert names(path) == [("host-api", "POST /v1/messages"),
                               ("host-api", "host.api.batch"),
                               ("host-api", "host.send"),
                               ("host-api", "apply_async/host.analyse_batch"),
                               ("host-worker", "run/host.analyse_batch")]
        assert path[0].kind == "SERVER" and len({s.trace_id for s in path}) == 1
        assert path[1].attributes["host.batch.size"] == 2

    def test_from_a_job_through_its_chunks(
            self, start_worker: WorkerFactory, traced: dict[str, str], receiver: OtlpReceiver,
            tmp_path: Path) -> None:
        start_worker("tr5", env=traced)
        src = tmp_path / "job.txt"
        src.write_text("".join(f"line {i} is good\n" for i in range(30)))
        done = celery("job", "run", str(src), "--out", str(tmp_path / "out.jsonl"), env=traced,
                      timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]

        def every_item() -> list[list[Span]]:  # spans arrive in export batches, not at once
            paths = traces_from(receiver, "host-job", "host.job_chunk")
            return paths if sum(p[0].attributes["host.batch.size"] for p in paths) >= 30 else []

        paths = wait_until(every_item, 30, "traces from the job to the worker, every item's")
        for path in paths:
            assert names(path) == [("host-job", "host.send"),
                                   ("host-job", "apply_async/host.job_chunk"),
                                   ("host-worker", "run/host.job_chunk")]
        assert sum(p[0].attributes["host.batch.size"] for p in paths) == 30


def test_tracing_without_its_extra_is_a_configuration_error(
        host_env: dict[str, str], tmp_path: Path) -> None:
    """HOST_TRACING on where OpenTelemetry cannot be imported: one line, exit 78, nothing sent."""
    shadow = tmp_path / "shadow" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed here')\n")
    env = {**host_env, "HOST_TRACING": "true", "PYTHONPATH": str(shadow.parent)}
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    done = celery("ingest", str(src), "--out", str(tmp_path / "out.jsonl"), env=env)
    assert done.returncode == 78, done.stderr
    assert "HOST_TRACING" in done.stderr and "host[tracing]" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()
